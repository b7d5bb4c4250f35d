"""The `moda` command: one module per subcommand, named as the command (moda.cli.caption_image is `moda
caption-image`), each parsing and checking its arguments and handing them to the library that does the work.

A subcommand's module is imported only when that command runs, so `moda --help` imports neither torch nor
transformers. An input error is one "<command>: error: <message>" line and exit status 1 (moda.io.errors.run_command),
but for `moda index` and `moda search`, which report it through argparse (the usage line, then the error; exit 2).
"""

import importlib
import sys

from moda import __version__
from moda.io.options import add_option

# subcommand -> (module, function, one-line help). Each function takes the remaining argv.
COMMANDS = {
    "caption-image": ("moda.cli.caption_image", "main", "describe one image with a MODA model"),
    "train": ("moda.cli.train", "main", "train MODA (same as python train_hf.py)"),
    "eval": ("moda.cli.eval", "main", "evaluate a model's descriptions on a catalog"),
    "build-dataset": ("moda.cli.build_dataset", "main", "build training descriptions with teacher models"),
    "caption": ("moda.cli.caption", "main", "caption a whole catalog (batched, resumable, sharded)"),
    "index": ("moda.cli.index", "main", "build or extend a search index over captions (and image embeddings)"),
    "search": ("moda.cli.search", "main", "search a catalog index by text or by a photo"),
    "push": ("moda.cli.push", "main", "push a model folder to the Hub with its card"),
    "space": ("moda.cli.space", "main", "write a Gradio Space for a MODA model on the Hub, and push it"),
    "adapt-vision": ("moda.cli.adapt_vision", "main", "adapt a CLIP vision tower to catalogs (contrastive)"),
    "eval-vision": ("moda.cli.eval_vision", "main", "measure a vision tower: zero-shot attributes, retrieval"),
    "recipe": ("moda.cli.recipe", "main", "the offline recipe: adapt a tower, train MODA on it, score both"),
}


def add_trust_remote_code_argument(parser) -> None:
    """--trust_remote_code (or --trust-remote-code), off by default, for a command that loads a user-given model."""
    add_option(
        parser, "trust_remote_code", action="store_true",
        help="allow a model that needs its own Python code (a model_type transformers does not know, or an auto_map in "
             "its config.json) to run that code; only for a model whose code you trust. Without it such a model is "
             "refused before any of its code is read. A MODA model always loads with the installed MODA code.",
    )


def usage() -> str:
    lines = ["usage: moda <command> [options]", "       moda --version", "", "commands:"]
    lines += [f"  {name:<14} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`moda <command> --help` shows a command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"moda {__version__}")
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

