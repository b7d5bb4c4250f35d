"""The `moda` command: thin subcommands, each handing its arguments to the module that does the work."""

import importlib
import sys

# subcommand -> (module, function, one-line help). Each function takes the remaining argv.
COMMANDS = {
    "caption-image": ("moda.describe", "main", "describe one image with a MODA model"),
    "train": ("train_hf", "command_line", "train MODA (same as python train_hf.py)"),
    "eval": ("moda.evaluate.evaluation", "main", "evaluate a model's descriptions on a catalog"),
    "build-dataset": ("moda.catalog.build_dataset", "main", "build training descriptions with teacher models"),
    "caption": ("moda.catalog.caption", "main", "caption a whole catalog (batched, resumable, sharded)"),
    "index": ("moda.catalog.search", "index_main", "build or extend a search index over captions (and image embeddings)"),
    "search": ("moda.catalog.search", "search_main", "search a catalog index by text or by a photo"),
    "push": ("hub_card.push", "main", "push a model folder to the Hub with its card"),
}


def add_trust_remote_code_argument(parser) -> None:
    """--trust_remote_code (or --trust-remote-code), off by default, for a command that loads a user-given model."""
    parser.add_argument(
        "--trust_remote_code", "--trust-remote-code", action="store_true",
        help="allow a model that needs its own Python code (a model_type transformers does not know, or an auto_map in "
             "its config.json) to run that code; only for a model whose code you trust. Without it such a model is "
             "refused before any of its code is read. A MODA model always loads with the installed MODA code.",
    )


def usage() -> str:
    lines = ["usage: moda <command> [options]", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`moda <command> --help` shows a command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"moda: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = COMMANDS[name]
    function = getattr(importlib.import_module(module_name), function_name)
    status = function(rest)
    # A command's main may return what it made (train_hf.main: its summary) for callers in Python: only an int is an
    # exit status.
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
