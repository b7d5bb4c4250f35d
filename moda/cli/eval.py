"""`moda eval`: caption a catalog split with a model, score the descriptions against the item metadata, report.

    moda eval --model ./moda-demo --data ../shared/data/fashion-images --split test --output_dir eval

`--split` defaults to test, else to the catalog's only split (a CSV/JSONL file is one split: all its rows are scored,
and the summary and report say so). It writes eval/report.json (every number and every item), eval/report.md,
eval/metrics.png (the write-up's five scores) and eval/confusion_colour.png, eval/confusion_product_type.png, and
prints a summary with the majority-class baseline. The scores are those of moda.evaluate.description_scores (the
MODA write-up's rubric, computed from metadata); `--judge MODEL` adds an LLM judge's scores (moda.evaluate.judge) for
the first `--judge_limit` items.

`moda.train.callbacks.AttributeMetricsCallback` computes the same scores during training, at every evaluation,
against tokens seen.
"""

import argparse

from moda.data.catalog import MODA_CAPTION_TEMPLATE
from moda.evaluate.evaluation import DEFAULT_SPLIT, evaluate
from moda.io.errors import run_command


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(prog="moda eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a MODA model folder or Hub id (or a BLIP baseline folder)")
    parser.add_argument("--data", required=True,
                        help="an imagefolder directory (<split>/metadata.csv), a CSV/JSONL file or a Hub dataset")
    parser.add_argument("--split", default=None,
                        help=f"the split to score (default: {DEFAULT_SPLIT!r}, else the catalog's only split, e.g. "
                             "all rows of a CSV/JSONL file)")
    parser.add_argument("--output_dir", default="eval")
    parser.add_argument("--limit", type=int, default=None,
                        help="score N items of the split, drawn at random (seed 0) in the split's order: a catalog "
                             "file is often grouped, so its first N would be a skewed sample")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--image_column", default="image", help="the image column of a CSV/JSONL or Hub dataset")
    parser.add_argument("--columns", default=None, choices=["myntra", "small"],
                        help="the catalog's attribute columns (default: found by name)")
    parser.add_argument("--caption_template", default=MODA_CAPTION_TEMPLATE,
                        help="reference captions for BLEU/ROUGE-L/CIDEr, filled from each item's metadata")
    parser.add_argument("--caption_column", default=None,
                        help="take reference captions from this column instead (e.g. ProductTitle)")
    parser.add_argument("--on_bad_row", default="skip", choices=["skip", "fail"],
                        help="items without a readable image: skip them (listed in the report) or stop")
    parser.add_argument("--judge", default=None, help="also score with an LLM judge (a text-generation model)")
    parser.add_argument("--judge_limit", type=int, default=20, help="how many items the judge scores")
    parser.add_argument("--revision", default=None, help="a Hub revision of --model to pin")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    args = parser.parse_args(argv)
    # Checked here, not after the catalog's images are read and the model is loaded.
    for name in ("limit", "batch_size", "max_new_tokens", "judge_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    return args


def main(argv=None) -> int:
    args = parse_arguments(argv)
    return run_command("moda eval", evaluate, args)
