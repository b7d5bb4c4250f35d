"""Benchmark: the tiny from-scratch MODA on a real catalog, with train_hf.py's defaults, on this CPU.

    python benchmarks/tiny_real_catalog.py                       # fashion-images, the issue's exact command
    python benchmarks/tiny_real_catalog.py --dataset ../shared/data/fashion-product-images-small \
        --caption_template "{baseColour} {usage} {articleType} for {gender} - {masterCategory} {subCategory}"

Runs `python train_hf.py --model_size tiny --dataset DATASET --output_dir OUT` as a user would (nothing else on the
command line for the default catalog), then reports, on the test split, how often each attribute appears correctly in
the generated descriptions next to the majority-class rate, as a markdown table (for BENCHMARKS.md) and, with
`--output`, as JSON.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from moda.data.catalog import load_catalog  # noqa: E402
from moda.evaluate.description_scores import majority_baseline  # noqa: E402
from benchmarks.results import print_and_save  # noqa: E402

AIMS = {"gender": 0.75, "colour": 0.8, "product_type": 0.7}
ATTRIBUTES = ("colour", "product_type", "gender", "usage")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="../shared/data/fashion-images")
    parser.add_argument("--output_dir", default="out")
    parser.add_argument("--caption_template", default=None)
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()

    command = [sys.executable, "train_hf.py", "--model_size", "tiny", "--dataset", args.dataset,
               "--output_dir", args.output_dir]
    if args.caption_template:
        command += ["--caption_template", args.caption_template]
    started = time.time()
    subprocess.run(command, cwd=REPO, check=True)
    minutes = (time.time() - started) / 60

    summary = json.loads((REPO / args.output_dir / "training_summary.json").read_text())
    dataset = Path(args.dataset) if Path(args.dataset).is_absolute() else REPO / args.dataset
    majority = majority_baseline(load_catalog(str(dataset))[summary["eval_split"]])
    accuracy = summary["attribute_accuracy"]
    lines = [
        f"\n### Tiny MODA from scratch on `{args.dataset}`\n",
        f"Command: `{' '.join(['python'] + command[1:])}` — {minutes:.1f} min wall time on this machine "
        f"(2 CPU cores), {summary['num_eval_items']} {summary['eval_split']} items.\n",
        "| attribute | appears correctly | majority class | aim |",
        "| --- | --- | --- | --- |",
    ]
    for attribute in ATTRIBUTES:
        aim = AIMS.get(attribute)
        lines.append(f"| {attribute} | {accuracy.get(attribute, float('nan')):.3f} | "
                     f"{majority[attribute]['rate']:.3f} | {'>= %.2f' % aim if aim else '-'} |")
    print("\n".join(lines) + "\n")
    print_and_save({"command": command[1:], "minutes": minutes, "eval_split": summary["eval_split"],
                    "num_eval_items": summary["num_eval_items"], "attribute_accuracy": accuracy,
                    "majority_class_rate": {a: majority[a]["rate"] for a in ATTRIBUTES}, "aims": AIMS}, args.output)


if __name__ == "__main__":
    main()
