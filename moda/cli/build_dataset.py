"""`moda build-dataset`: training descriptions written by teacher models (the MODA write-up's data pipeline).

    moda build-dataset --images ../shared/data/fashion-images/train --output_dir described          # offline

The options; the work (teachers, refiner, resuming, the imagefolder written) is moda.catalog.build_dataset's.
"""

import argparse
import sys

from moda.catalog.build_dataset import build_dataset
from moda.io.errors import run_command


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="moda build-dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True,
                        help="a folder of images (with --metadata), or an imagefolder split folder with metadata.csv")
    parser.add_argument("--metadata", default=None, help="a CSV with a file_name column (relative to --images)")
    parser.add_argument("--output_dir", "--output-dir", required=True, help="the imagefolder to write")
    parser.add_argument("--teacher_model", "--teacher-model", default=None,
                        help="an image-text-to-text model (e.g. microsoft/Phi-3-vision-128k-instruct); "
                             "default: none, descriptions from metadata alone")
    parser.add_argument("--refiner_model", "--refiner-model", default=None,
                        help="a text-generation model (e.g. microsoft/Phi-3-mini-4k-instruct); needs --teacher_model")
    parser.add_argument("--limit", type=int, default=None, help="only the first N items")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=8)
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=96)
    parser.add_argument("--on_bad_row", "--on-bad-row", choices=("skip", "fail"), default="skip")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--trust_remote_code", "--trust-remote-code", action="store_true",
                        help="run the models' own code (Phi-3-vision needs it)")
    parser.add_argument("--overwrite", action="store_true", help="forget an earlier run's progress in --output_dir")
    args = parser.parse_args(argv)
    if args.refiner_model and not args.teacher_model:
        parser.error("--refiner_model refines a teacher's description: give --teacher_model too")
    if args.batch_size < 1 or args.max_new_tokens < 1 or (args.limit is not None and args.limit < 0):
        parser.error("--batch_size and --max_new_tokens must be at least 1, --limit at least 0")
    return args


def main(argv=None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    return run_command("moda build-dataset", build_dataset, args)
