"""`moda build-dataset`: training descriptions written by teacher models (the MODA write-up's data pipeline).

    moda build-dataset --dataset ../shared/data/fashion-images/train --output_dir described          # offline

The options; the work (teachers, refiner, resuming, the imagefolder written) is moda.catalog.build_dataset's.
"""

import sys

from moda.catalog.build_dataset import build_dataset
from moda.io.errors import run_command
from moda.io.options import add_dataset_option, add_option, add_sample_options, command_parser, require_at_least_one


def parse_arguments(argv):
    parser = command_parser("build-dataset", __doc__.split("\n\n")[0])
    add_dataset_option(parser, "images",
                       help="a folder of images (with --metadata), or an imagefolder split folder with metadata.csv")
    add_option(parser, "metadata", default=None, help="a CSV with a file_name column (relative to --dataset)")
    add_option(parser, "output_dir", required=True, help="the imagefolder to write")
    add_option(parser, "teacher_model", default=None,
               help="an image-text-to-text model (e.g. microsoft/Phi-3-vision-128k-instruct); "
                    "default: none, descriptions from metadata alone")
    add_option(parser, "refiner_model", default=None,
               help="a text-generation model (e.g. microsoft/Phi-3-mini-4k-instruct); needs --teacher_model")
    add_sample_options(parser)
    add_option(parser, "batch_size", type=int, default=8, help="items described at once")
    add_option(parser, "max_new_tokens", type=int, default=96, help="the longest model answer, in tokens")
    add_option(parser, "on_bad_row", choices=("skip", "fail"), default="skip",
               help="unusable items: list them in bad_rows.csv, or stop")
    add_option(parser, "device", default=None, help="default: cuda when available, else cpu")
    add_option(parser, "trust_remote_code", action="store_true",
               help="run the models' own code (Phi-3-vision needs it)")
    add_option(parser, "overwrite", action="store_true", help="forget an earlier run's progress in --output_dir")
    args = parser.parse_args(argv)
    if args.refiner_model and not args.teacher_model:
        parser.error("--refiner_model refines a teacher's description: give --teacher_model too")
    require_at_least_one(parser, args, "max_samples", "batch_size", "max_new_tokens")
    return args


def main(argv=None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    return run_command("moda build-dataset", build_dataset, args)
