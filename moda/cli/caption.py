"""`moda caption`: describe a whole catalog, batched, resumable and sharded over processes.

    moda caption --model_name_or_path ./moda-demo --dataset catalog/ --output_file captions.jsonl   # or .csv, .parquet
    torchrun --nproc_per_node 4 -m moda.cli caption --model_name_or_path ... --dataset ... --output_file captions.jsonl

The options; the work (parts, resuming, sharding, the merge) is moda.catalog.caption's.
"""

import sys
from pathlib import Path

from moda.catalog.caption import OUTPUT_FORMATS, caption_catalog
from moda.cli import add_trust_remote_code_argument
from moda.io.errors import run_command
from moda.io.options import (add_dataset_option, add_model_option, add_option, add_precision_option,
                             add_revision_option, command_parser, require_at_least_one)


def parse_arguments(argv):
    parser = command_parser("caption", __doc__.split("\n\n")[0])
    # dest: the names moda.catalog.caption reads (and its resumable runs' settings files hold)
    add_model_option(parser, help="a MODA model folder or Hub id", dest="model")
    add_revision_option(parser)
    add_dataset_option(parser, "images", dest="images",
                       help="a directory of images, an imagefolder (metadata.csv), a CSV/JSONL file, or a dataset")
    add_option(parser, "output_file", "output", required=True, dest="output", metavar="FILE",
               help="captions file: .jsonl, .csv or .parquet")
    add_option(parser, "prompt", action="append", dest="prompts", default=None, metavar="PROMPT",
               help='a prompt; repeat for several (descriptions are kept per prompt). Default: no prompt ("")')
    add_option(parser, "batch_size", type=int, default=32, help="images described at once")
    add_option(parser, "max_new_tokens", type=int, default=32, help="the longest description, in tokens")
    add_option(parser, "image_column", default="image", help="image column of a CSV/JSONL/dataset")
    add_option(parser, "vocabulary", default=None,
               help="a catalog whose attribute columns give the attribute vocabulary (default: --dataset)")
    add_option(parser, "device", default=None, help="default: cuda:LOCAL_RANK when CUDA is there, else cpu")
    add_precision_option(parser)
    add_option(parser, "overwrite", action="store_true", help="discard earlier output and unfinished parts")
    add_option(parser, "streaming", action="store_true",
               help="read the catalog as its rows arrive (for one that does not fit in memory): batches are "
                    "captioned as they fill")
    add_trust_remote_code_argument(parser)
    args = parser.parse_args(argv)
    args.prompts = args.prompts or [""]
    if len(set(args.prompts)) != len(args.prompts):
        parser.error(f"--prompt given twice with the same text: {args.prompts}")
    if Path(args.output).suffix.lower() not in OUTPUT_FORMATS:
        parser.error(f"--output_file {args.output!r}: the name must end in {', '.join(OUTPUT_FORMATS)}")
    require_at_least_one(parser, args, "batch_size", "max_new_tokens")
    return args


def main(argv=None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    return run_command("moda caption", caption_catalog, args)
