"""`moda caption-image MODEL IMAGE...`: describe images (PIL-readable paths or http(s) URLs).

Prints one `IMAGE<TAB>description` line per image. An image that cannot be read prints a `moda caption-image: error:`
line instead (the others are still described) and the command exits with 1.
"""

import argparse
import sys

from moda.cli import add_trust_remote_code_argument
from moda.io.errors import INPUT_ERRORS, run_command
from moda.model.loading import load_captioner


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
