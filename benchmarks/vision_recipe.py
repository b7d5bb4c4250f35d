"""Benchmark: the two-stage offline recipe of issue 23 on this CPU, each stage timed.

    python benchmarks/vision_recipe.py --output_dir runs/recipe \
        --dataset ../shared/data/fashion-images --dataset ../shared/data/fashion-product-images-small \
        --adapt_epochs 8 --caption_epochs 80 --tune_vision_tower

Stage 1: `moda adapt-vision` on the train splits of every --dataset (the tower is measured on --eval_dataset's test
split: zero-shot attributes, retrieval). Stage 2: `train_hf.py --model_size tiny --vision_model TOWER` on
--eval_dataset (frozen tower and cached features, or --tune_vision_tower). --tower DIR skips stage 1 and uses DIR.
Prints one markdown row per stage (for BENCHMARKS.md) and, with --output, the JSON of both.
"""

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results import print_and_save  # noqa: E402

ATTRIBUTES = ("colour", "product_type", "gender", "usage")


def timed(command: list) -> float:
    started = time.time()
    subprocess.run(command, cwd=REPO, check=True)
    return (time.time() - started) / 60


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", help="a catalog the tower adapts to (repeat for more)")
    parser.add_argument("--eval_dataset", default="../shared/data/fashion-images")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--tower", default=None, help="an adapted tower folder: skip stage 1")
    parser.add_argument("--adapt_epochs", type=float, default=8)
    parser.add_argument("--adapt_args", default="", help="more moda adapt-vision options, as one string")
    parser.add_argument("--caption_epochs", type=float, default=80)
    parser.add_argument("--tune_vision_tower", action="store_true")
    parser.add_argument("--train_args", default="", help="more train_hf.py options, as one string")
    parser.add_argument("--feature_cache_dir", default=".cache/moda-features")
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()

    output = Path(args.output_dir)
    result = {"adapt_minutes": 0.0}
    tower = args.tower
    if tower is None:
        tower = str(output / "tower")
        datasets = [option for dataset in args.dataset or [args.eval_dataset] for option in ("--dataset", dataset)]
        command = [sys.executable, "-m", "moda.cli", "adapt-vision", *datasets, "--output_dir", tower,
                   "--num_train_epochs", str(args.adapt_epochs), "--eval_dataset", args.eval_dataset,
                   "--feature_cache_dir", args.feature_cache_dir, *shlex.split(args.adapt_args)]
        result["adapt_minutes"] = timed(command)
        result["adapt_command"] = command[1:]
    result["tower"] = json.loads((Path(tower) / "adaptation_summary.json").read_text())

    command = [sys.executable, "train_hf.py", "--model_size", "tiny", "--vision_model", tower, "--dataset",
               args.eval_dataset, "--output_dir", str(output / "moda"), "--num_train_epochs", str(args.caption_epochs),
               "--feature_cache_dir", args.feature_cache_dir, "--disable_tqdm", "true", *shlex.split(args.train_args)]
    if args.tune_vision_tower:
        command += ["--tune_vision_tower", "true"]
    result["caption_minutes"] = timed(command)
    result["caption_command"] = command[1:]
    summary = json.loads((output / "moda" / "training_summary.json").read_text())
    result["moda_attribute_accuracy"] = summary["attribute_accuracy"]

    evaluation = result["tower"].get("evaluation", {})
    zero_shot = evaluation.get("zero_shot_marginal", {})
    moda = summary["attribute_accuracy"]
    print(f"| tower zero-shot (marginal) | {result['adapt_minutes']:.1f} min | "
          + " | ".join(f"{zero_shot.get(a, float('nan')):.3f}" for a in ATTRIBUTES)
          + f" | P@10 {evaluation.get('attribute_query_precision@10', float('nan')):.3f} |")
    print(f"| + MODA ({'tuned' if args.tune_vision_tower else 'frozen'} tower, {args.caption_epochs:g} epochs) | "
          f"{result['adapt_minutes'] + result['caption_minutes']:.1f} min | "
          + " | ".join(f"{moda.get(a, float('nan')):.3f}" for a in ATTRIBUTES) + " | |")
    print_and_save(result, args.output)


if __name__ == "__main__":
    main()
