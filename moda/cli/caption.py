"""`moda caption`: describe a whole catalog, batched, resumable and sharded over processes.

    moda caption --model ./moda-demo --images catalog/ --output captions.jsonl       # or .csv / .parquet
    torchrun --nproc_per_node 4 -m moda.cli caption --model ... --images ... --output captions.jsonl

The options; the work (parts, resuming, sharding, the merge) is moda.catalog.caption's.
"""

import argparse
import sys
from pathlib import Path

from moda.catalog.caption import OUTPUT_FORMATS, caption_catalog
from moda.cli import add_trust_remote_code_argument
from moda.io.errors import run_command


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="moda caption", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a MODA model folder or Hub id")
    parser.add_argument("--images", required=True,
                        help="a directory of images, an imagefolder (metadata.csv), a CSV/JSONL file, or a dataset")
    parser.add_argument("--output", required=True, help="captions file: .jsonl, .csv or .parquet")
    parser.add_argument("--prompt", action="append", dest="prompts", default=None,
                        help='a prompt; repeat for several (descriptions are kept per prompt). Default: no prompt ("")')
    parser.add_argument("--batch_size", "--batch-size", type=int, default=32)
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=32)
    parser.add_argument("--image_column", "--image-column", default="image", help="image column of a CSV/JSONL/dataset")
    parser.add_argument("--vocabulary", default=None,
                        help="a catalog whose attribute columns give the attribute vocabulary (default: --images)")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when CUDA is there, else cpu")
    parser.add_argument("--revision", default=None, help="a Hub revision (commit) to pin")
    parser.add_argument("--overwrite", action="store_true", help="discard earlier output and unfinished parts")
    parser.add_argument("--streaming", action="store_true",
                        help="read the catalog as its rows arrive (for one that does not fit in memory): batches are "
                             "captioned as they fill")
    add_trust_remote_code_argument(parser)
    args = parser.parse_args(argv)
    args.prompts = args.prompts or [""]
    if len(set(args.prompts)) != len(args.prompts):
        parser.error(f"--prompt given twice with the same text: {args.prompts}")
    if Path(args.output).suffix.lower() not in OUTPUT_FORMATS:
        parser.error(f"--output {args.output!r}: the name must end in {', '.join(OUTPUT_FORMATS)}")
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    return run_command("moda caption", caption_catalog, args)
