"""`moda eval`: caption a catalog split with a model, score the descriptions against the item metadata, report.

    moda eval --model_name_or_path ./moda-demo --dataset ../shared/data/fashion-images --output_dir eval

`--split` defaults to test, else to the catalog's only split (a CSV/JSONL file is one split: all its rows are scored,
and the summary and report say so). It writes eval/report.json (every number and every item), eval/report.md,
eval/metrics.png (the write-up's five scores) and eval/confusion_colour.png, eval/confusion_product_type.png, and
prints a summary with the majority-class baseline. The scores are those of moda.evaluate.description_scores (the
MODA write-up's rubric, computed from metadata); `--judge MODEL` adds an LLM judge's scores (moda.evaluate.judge) for
the first `--judge_limit` items.

`moda.train.callbacks.AttributeMetricsCallback` computes the same scores during training, at every evaluation,
against tokens seen.
"""

from moda.data.catalog import MODA_CAPTION_TEMPLATE
from moda.evaluate.evaluation import DEFAULT_SPLIT, evaluate
from moda.io.errors import run_command
from moda.io.options import (add_dataset_option, add_model_option, add_option, add_revision_option, add_sample_options,
                             command_parser, require_at_least_one)


def parse_arguments(argv=None):
    parser = command_parser("eval", __doc__)
    add_model_option(parser, help="a MODA model folder or Hub id (or a BLIP baseline folder)")
    add_revision_option(parser)
    add_dataset_option(parser, "data",
                       help="an imagefolder directory (<split>/metadata.csv), a CSV/JSONL file or a Hub dataset")
    add_option(parser, "split", default=None,
               help=f"the split to score (default: {DEFAULT_SPLIT!r}, else the catalog's only split, e.g. all rows of "
                    "a CSV/JSONL file)")
    add_option(parser, "output_dir", default="eval", help="the folder the report is written to")
    add_sample_options(parser)
    add_option(parser, "batch_size", type=int, default=16, help="images described at once")
    add_option(parser, "max_new_tokens", type=int, default=32, help="the longest description, in tokens")
    add_option(parser, "image_column", default="image", help="the image column of a CSV/JSONL or Hub dataset")
    add_option(parser, "columns", default=None, choices=["myntra", "small"],
               help="the catalog's attribute columns (default: found by name)")
    add_option(parser, "caption_template", default=MODA_CAPTION_TEMPLATE,
               help="reference captions for BLEU/ROUGE-L/CIDEr, filled from each item's metadata")
    add_option(parser, "caption_column", default=None,
               help="take reference captions from this column instead (e.g. ProductTitle)")
    add_option(parser, "on_bad_row", default="skip", choices=["skip", "fail"],
               help="items without a readable image: skip them (listed in the report) or stop")
    add_option(parser, "judge", default=None, help="also score with an LLM judge (a text-generation model)")
    add_option(parser, "judge_limit", type=int, default=20, help="how many items the judge scores (the first)")
    add_option(parser, "device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    args = parser.parse_args(argv)
    # Checked here, not after the catalog's images are read and the model is loaded.
    require_at_least_one(parser, args, "max_samples", "batch_size", "max_new_tokens", "judge_limit")
    return args


def main(argv=None) -> int:
    args = parse_arguments(argv)
    return run_command("moda eval", evaluate, args)
