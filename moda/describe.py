"""`moda caption-image MODEL IMAGE...`: describe images (PIL-readable paths or http(s) URLs).

Prints one `IMAGE<TAB>description` line per image. An image that cannot be read prints a `moda caption-image: error:`
line instead (the others are still described) and the command exits with 1.
"""

import argparse
import sys

from transformers import pipeline

from moda.cli import add_trust_remote_code_argument
from moda.io.errors import INPUT_ERRORS, run_command
from pipeline_moda import MODAImageToTextPipeline


def load_captioner(model: str, revision: str = None, device: str = None, trust_remote_code: bool = False):
    """
    The image-to-text pipeline for a MODA folder or Hub id (the same code path users get from transformers), run
    by this package's model code: under transformers 5.x a registered model type wins over the folder's own copy
    of the model files, which may be older (or, from the Hub, someone else's).

    A model's own code never runs unless `trust_remote_code` allows it, and a MODA model's never
    (moda.evaluation.check_model_code decides, from config.json, before anything of the model is imported).

    A missing folder, a folder without config.json, or a name that is neither a loadable folder nor a Hub model raises
    FileNotFoundError naming `model` (ValueError for a folder that cannot be read as a model, or one that needs its
    own code).
    """
    import moda.auto_classes  # noqa: F401  (the registration; imported here so that `moda --help` stays light)
    from moda.evaluation import check_model_code, model_load_error

    run_own_code = check_model_code(model, revision, trust_remote_code, label="model")
    try:
        return pipeline(
            "image-to-text", model=model, revision=revision, device=device, trust_remote_code=run_own_code,
            pipeline_class=MODAImageToTextPipeline,
        )
    except OSError as err:  # e.g. a folder without weights, or a config.json that is not JSON
        raise model_load_error(model, err, "the folder cannot be loaded as a model", label="model") from err


def describe(args) -> int:
    captioner = load_captioner(args.model, revision=args.revision, trust_remote_code=args.trust_remote_code)
    failed = 0
    for image in args.images:
        try:
            result = captioner(image, prompt=args.prompt, max_new_tokens=args.max_new_tokens)
        except INPUT_ERRORS as err:  # an unreadable image: say which, and describe the others
            print(f"moda caption-image: error: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{image}\t{result[0]['generated_text']}", flush=True)
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="moda caption-image", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a MODA model folder or Hub id")
    parser.add_argument("images", nargs="+", help="image paths or http(s) URLs")
    parser.add_argument("--prompt", default=None, help='an optional question, e.g. "What colour is this item?"')
    parser.add_argument("--max_new_tokens", type=int, default=None)
    parser.add_argument("--revision", default=None, help="a Hub revision (commit, branch or tag) to pin")
    add_trust_remote_code_argument(parser)
    args = parser.parse_args(argv)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error(f"--max_new_tokens must be at least 1; got {args.max_new_tokens}")
    return run_command("moda caption-image", describe, args)
