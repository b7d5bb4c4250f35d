"""`moda recipe`: MODA's offline recipe in one command, on the catalogs at hand, with no downloads.

    moda recipe --output_dir moda-recipe
    moda recipe --output_dir out --dataset CATALOG --caption_dataset CATALOG --adapt_epochs 12 --overwrite

1. the vision tower: a CLIP vision tower adapted contrastively (as `moda adapt-vision` does: in-batch negatives,
   locked all-MiniLM-L6-v2 caption embeddings) on the train split of each --dataset -> DIR/vision;
2. MODA: a new decoder trained on that tower (frozen unless --tune_vision_tower) on --caption_dataset, through
   train_hf.py -> DIR, a model folder that AutoModel, the pipeline and `moda caption` load;
3. both scored on --caption_dataset's test split: the tower as `moda eval-vision` scores it (zero-shot attributes,
   P@10, R@10), the descriptions as `moda eval` does (its report in DIR/eval).
A table goes to the screen and each stage's minutes, settings and scores to DIR/recipe_summary.json. No test split
is trained on: the tower reads train splits only, and train_hf.py trains on the train split.
"""

import json
import time
from pathlib import Path

from moda.cli import main as moda_command
from moda.io.errors import run_command
from moda.io.locks import exclusive_lock
from moda.io.options import add_option, command_parser, true_or_false
from moda.io.paths import write_atomically
from moda.model.build import SIZES
from moda.vision.adapt import adapt_vision
from moda.vision.evaluate import evaluate_tower
from moda.vision.pairs import SCORED_ATTRIBUTES, split_rows, text_encoder
from moda.vision.tower import DEFAULT_NEGATIVES, load_tower

# Every default of the recipe, here and nowhere else: BENCHMARKS.md's growth table ("The recipe in one command"), a
# tower on both catalogs' train splits for 32 epochs (12 min in all on 2 cores: 4 epochs lose colour and product
# type, 64 take 23 min for no clear gain), then tiny MODA for 40 epochs on it, frozen.
RECIPE_DEFAULTS = {
    "dataset": ("../shared/data/fashion-images", "../shared/data/fashion-product-images-small"),
    "caption_dataset": "../shared/data/fashion-images",
    "adapt_epochs": 32,
    "caption_epochs": 40,
    "tune_vision_tower": False,
    "tower_size": "tiny",
    "model_size": "tiny",
    "seed": 42,
    "feature_cache_dir": ".cache/moda-features",
}
TOWER_FOLDER = "vision"
EVAL_FOLDER = "eval"
SUMMARY_FILE = "recipe_summary.json"
TEXT_SIDE = "minilm"


def parse_arguments(argv=None):
    parser = command_parser("recipe", __doc__)
    defaults = RECIPE_DEFAULTS
    add_option(parser, "dataset", "dataset_name", action="append", default=None,
               help="a catalog whose train split the tower learns; give it again for more (default: "
                    f"{' and '.join(defaults['dataset'])})")
    add_option(parser, "caption_dataset", default=defaults["caption_dataset"],
               help="the catalog MODA learns to describe (train split) and both stages are scored on (test split)")
    add_option(parser, "output_dir", required=True, help="the MODA model folder (the tower goes to its vision/)")
    add_option(parser, "adapt_epochs", type=float, default=defaults["adapt_epochs"],
               help="passes of the tower stage over the pairs")
    add_option(parser, "caption_epochs", type=float, default=defaults["caption_epochs"],
               help="passes of the MODA stage over the caption dataset's train split")
    add_option(parser, "tune_vision_tower", type=true_or_false, default=defaults["tune_vision_tower"],
               help="train the tower through captioning too, true or false (default: false, frozen)")
    add_option(parser, "tower_size", default=defaults["tower_size"], choices=sorted(SIZES),
               help="the from-scratch tower's shape (moda.model.build.SIZES)")
    add_option(parser, "model_size", default=defaults["model_size"], choices=sorted(SIZES),
               help="the decoder's size (moda.model.build.SIZES)")
    add_option(parser, "max_train_samples", type=int, default=None,
               help="at most N train rows of each catalog in each stage, drawn at random (default: every row)")
    add_option(parser, "seed", type=int, default=defaults["seed"], help="the random seed of both stages")
    add_option(parser, "feature_cache_dir", default=defaults["feature_cache_dir"],
               help="where decoded images, text embeddings and image features are cached")
    add_option(parser, "overwrite", action="store_true",
               help="write into a non-empty --output_dir (the files the recipe writes are replaced, others stay)")
    args = parser.parse_args(argv)
    args.dataset = args.dataset or list(defaults["dataset"])
    if args.max_train_samples is not None and args.max_train_samples < 1:
        parser.error(f"--max_train_samples must be at least 1, got {args.max_train_samples}")
    if args.adapt_epochs <= 0 or args.caption_epochs <= 0:
        parser.error("--adapt_epochs and --caption_epochs must be positive")
    return args


def require_free_output(output_dir: Path, overwrite: bool) -> None:
    """An --output_dir the recipe may write: new, empty, or non-empty with --overwrite."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {str(output_dir)!r} is a file, not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ValueError(f"--output_dir {str(output_dir)!r} is not empty: give --overwrite to write the recipe into "
                         "it, or name a new folder")


def require_catalog_splits(args) -> None:
    """Each catalog has the splits the recipe reads, checked before minutes of training rather than after."""
    for dataset in args.dataset:
        split_rows(dataset, "train")
    for split in ("train", "test"):
        split_rows(args.caption_dataset, split)


def minutes_since(started: float) -> float:
    return round((time.time() - started) / 60, 2)


def train_tower(args, tower_dir: Path, encoder) -> dict:
    """Stage 1: the tower folder, and its settings and minutes (wall clock, the first decoding of images included)."""
    started = time.time()
    adapted = adapt_vision(args.dataset, tower_dir, text_encoder_kind=TEXT_SIDE, tower_size=args.tower_size,
                           max_train_samples=args.max_train_samples, negatives=DEFAULT_NEGATIVES,
                           num_train_epochs=args.adapt_epochs, seed=args.seed,
                           feature_cache_dir=args.feature_cache_dir, encoder=encoder)
    settings = {name: adapted[name] for name in ("datasets", "text_model", "negatives", "train_pairs", "epochs",
                                                 "batch_size", "learning_rate", "image_size", "patch_size",
                                                 "tower_parameters")}
    return {"folder": TOWER_FOLDER, "minutes": minutes_since(started), "settings": {
        **settings, "tower_size": args.tower_size, "seed": args.seed, "max_train_samples": args.max_train_samples}}


def train_moda(args, output_dir: Path, tower_dir: Path) -> dict:
    """Stage 2: MODA on the tower, through train_hf.py's own code path (as `moda train`); no checkpoints, so that
    the output folder is the model folder alone."""
    from train_hf import main as train_hf_main  # imported when the recipe runs: `moda --help` stays light

    argv = ["--model_size", args.model_size, "--vision_model", str(tower_dir), "--dataset", args.caption_dataset,
            "--output_dir", str(output_dir), "--num_train_epochs", str(args.caption_epochs),
            "--tune_vision_tower", str(args.tune_vision_tower).lower(), "--seed", str(args.seed),
            "--feature_cache_dir", str(args.feature_cache_dir), "--save_strategy", "no"]
    if args.max_train_samples:
        argv += ["--max_train_samples", str(args.max_train_samples)]
    started = time.time()
    trained = train_hf_main(argv, prog="moda recipe")
    return {"minutes": minutes_since(started), "settings": {
        "caption_dataset": args.caption_dataset, "model_size": args.model_size, "epochs": args.caption_epochs,
        "tune_vision_tower": args.tune_vision_tower, "seed": args.seed, "max_train_samples": args.max_train_samples,
        "global_step": trained["global_step"], "train_hf_arguments": argv}}


def score_tower(args, tower_dir: Path, encoder) -> dict:
    """Stage 3a: the saved tower on the caption dataset's test split, as `moda eval-vision` scores it."""
    tower, image_processor, adaptation = load_tower(tower_dir)
    return evaluate_tower(tower, image_processor, adaptation, args.caption_dataset, encoder, args.feature_cache_dir)


def score_descriptions(args, output_dir: Path) -> dict:
    """Stage 3b: the saved MODA folder described and scored on the test split by `moda eval` itself."""
    eval_dir = output_dir / EVAL_FOLDER
    status = moda_command(["eval", "--model_name_or_path", str(output_dir), "--dataset", args.caption_dataset,
                           "--split", "test", "--output_dir", str(eval_dir)])
    if status != 0:
        raise ValueError(f"moda eval could not score {str(output_dir)!r}: see its error above")
    report = json.loads((eval_dir / "report.json").read_text())
    return {"report": f"{EVAL_FOLDER}/report.json", "items": report["num_items"], "hit_rates": report["hit_rates"],
            "scores": report["scores"], "majority_baseline": report["majority_baseline"]}


def score_text(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def table_row(name: str, minutes: float, values: dict) -> str:
    return f"{name:<28} {minutes:>7.2f} " + " ".join(f"{score_text(values.get(a)):>12}" for a in SCORED_ATTRIBUTES)


def summary_table(summary: dict) -> str:
    """One line per stage: minutes and the four attributes (the tower read out zero-shot, by summed caption
    probability; MODA's descriptions: the attribute named correctly), then the tower's retrieval."""
    tower, moda = summary["vision_tower"], summary["moda"]
    retrieval = tower["scores"]
    return "\n".join([
        f"{'stage (test split)':<28} {'minutes':>7} " + " ".join(f"{a:>12}" for a in SCORED_ATTRIBUTES),
        table_row("vision tower (zero-shot)", tower["minutes"], retrieval["zero_shot_marginal"]),
        table_row("MODA (attribute named)", moda["minutes"], moda["scores"]["hit_rates"]),
        f"tower retrieval: attribute-query P@10 {score_text(retrieval.get('attribute_query_precision@10'))}, title "
        f"R@10 {score_text(retrieval.get('title_recall@10'))}; scoring {summary['scoring_minutes']:.2f} min, total "
        f"{summary['total_minutes']:.2f} min",
    ])


def run_recipe(args, encoder=None) -> dict:
    """
    The three stages into args.output_dir; returns the summary it writes to recipe_summary.json. `encoder`
    (encode, key) stands in for the locked text side, all-MiniLM-L6-v2 (tests).
    """
    output_dir = Path(args.output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)  # where the lock file goes
    with exclusive_lock(output_dir, f"--output_dir {output_dir}"):
        require_free_output(output_dir, args.overwrite)
        require_catalog_splits(args)
        started = time.time()
        encoder = encoder or text_encoder(TEXT_SIDE)
        tower_dir = output_dir / TOWER_FOLDER
        tower = train_tower(args, tower_dir, encoder)
        moda = train_moda(args, output_dir, tower_dir)
        scoring = time.time()
        tower["scores"] = score_tower(args, tower_dir, encoder)
        moda["scores"] = score_descriptions(args, output_dir)
        summary = {"output_dir": str(output_dir), "caption_dataset": args.caption_dataset, "vision_tower": tower,
                   "moda": moda, "scoring_minutes": minutes_since(scoring), "total_minutes": minutes_since(started)}
        write_atomically(output_dir / SUMMARY_FILE,
                         lambda handle: handle.write(json.dumps(summary, indent=2).encode("utf-8")))
    return summary


def recipe(args) -> int:
    summary = run_recipe(args)
    print(summary_table(summary))
    print(f"saved MODA to {args.output_dir}/ (its tower in {TOWER_FOLDER}/), the summary to {SUMMARY_FILE}")
    return 0


def main(argv=None) -> int:
    return run_command("moda recipe", recipe, parse_arguments(argv))
