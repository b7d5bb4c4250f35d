"""`moda caption-image --model_name_or_path MODEL IMAGE...`: describe images (PIL-readable paths or http(s) URLs).

Prints one `IMAGE<TAB>description` line per image. An image that cannot be read prints a `moda caption-image: error:`
line instead (the others are still described) and the command exits with 1. The older form `moda caption-image MODEL
IMAGE...` still works: without --model_name_or_path (or --model), the first positional argument is the model.
"""

import sys

from moda.cli import add_trust_remote_code_argument
from moda.io.errors import INPUT_ERRORS, run_command
from moda.io.options import (add_model_option, add_option, add_precision_option, add_revision_option, command_parser,
                             require_at_least_one)
from moda.model.loading import load_captioner


def describe(args) -> int:
    captioner = load_captioner(args.model_name_or_path, revision=args.revision,
                               trust_remote_code=args.trust_remote_code, precision=args.precision)
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
    parser = command_parser("caption-image", __doc__)
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image paths or http(s) URLs (without --model_name_or_path: MODEL IMAGE...)")
    add_model_option(parser, required=False, help="a MODA model folder or Hub id")
    add_revision_option(parser)
    add_option(parser, "prompt", default=None, help='an optional question, e.g. "What colour is this item?"')
    add_option(parser, "max_new_tokens", type=int, default=None,
               help="the longest description, in tokens (default: the model's generation config)")
    add_precision_option(parser)
    add_trust_remote_code_argument(parser)
    args = parser.parse_intermixed_args(argv)  # options may come between images
    if args.model_name_or_path is None:
        if len(args.images) < 2:
            parser.error("no model given: moda caption-image --model_name_or_path MODEL IMAGE... (or MODEL IMAGE...)")
        args.model_name_or_path, *args.images = args.images
    require_at_least_one(parser, args, "max_new_tokens")
    return run_command("moda caption-image", describe, args)
