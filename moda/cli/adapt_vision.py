"""`moda adapt-vision`: adapt a CLIP vision tower to catalogs, contrastively, against a locked text side.

    moda adapt-vision --dataset ../shared/data/fashion-images --dataset ../shared/data/fashion-product-images-small \
        --output_dir tower --eval_dataset ../shared/data/fashion-images
    python train_hf.py --model_size tiny --vision_model tower --dataset ../shared/data/fashion-images --output_dir out

Only the train split of each --dataset is read. The tower starts from --model_name_or_path (a CLIP checkpoint) or
from scratch (--tower_size); its folder is a CLIPVisionModelWithProjection with its image processor, which
`train_hf.py --vision_model` and MODAForConditionalGeneration.from_backbones take. --eval_dataset measures it on
that catalog's test split (zero-shot attribute accuracy, retrieval); the numbers go to adaptation_summary.json.
"""

import json

from moda.io.errors import run_command
from moda.io.options import add_option, command_parser, true_or_false
from moda.model.build import SIZES
from moda.vision.adapt import adapt_vision
from moda.vision.pairs import TEXT_ENCODERS
from moda.vision.tower import DEFAULT_NEGATIVES, NEGATIVES


def parse_arguments(argv=None):
    parser = command_parser("adapt-vision", __doc__)
    add_option(parser, "dataset", "dataset_name", action="append", required=True,
               help="a catalog whose train split the tower learns (give it again for more catalogs)")
    add_option(parser, "output_dir", required=True, help="the tower folder")
    add_option(parser, "model_name_or_path", "model", default=None,
               help="a CLIP checkpoint to start from (default: a new tower of --tower_size)")
    add_option(parser, "text_encoder", default="minilm", choices=TEXT_ENCODERS,
               help="the locked text side: all-MiniLM-L6-v2, or the text tower of --model_name_or_path")
    add_option(parser, "tower_size", default="tiny", choices=sorted(SIZES),
               help="the from-scratch tower's shape (moda.model.build.SIZES)")
    add_option(parser, "image_size", type=int, default=None, help="from scratch: input pixels")
    add_option(parser, "patch_size", type=int, default=None, help="from scratch: patch pixels")
    add_option(parser, "caption_template", default=None,
               help="one template for every catalog (default: MODA's, in each catalog's column names)")
    add_option(parser, "max_train_samples", type=int, default=None,
               help="at most N train rows of each catalog, drawn at random (seed: --seed)")
    add_option(parser, "negatives", default=DEFAULT_NEGATIVES, choices=NEGATIVES,
               help="batch: CLIP's in-batch loss (the measured winner, BENCHMARKS.md); catalog: every caption of the "
                    "catalogs")
    add_option(parser, "augment_images", type=true_or_false, default=True,
               help="random flips and shifts (true/false)")
    add_option(parser, "num_train_epochs", type=float, default=10, help="passes over the pairs")
    add_option(parser, "per_device_train_batch_size", type=int, default=128,
               help="pairs per step (with --negatives batch: the in-batch negatives)")
    add_option(parser, "learning_rate", type=float, default=1e-3, help="AdamW's rate (StepLR halves it each quarter)")
    add_option(parser, "weight_decay", type=float, default=0.05, help="AdamW's weight decay")
    add_option(parser, "seed", type=int, default=42, help="the random seed (sampling, augmentation, init)")
    add_option(parser, "feature_cache_dir", default=".cache/moda-features",
               help="where decoded images and text embeddings are cached")
    add_option(parser, "eval_dataset", default=None,
               help="measure the tower on this catalog's test split at the end")
    add_option(parser, "logging_steps", type=int, default=50, help="log the loss every N steps")
    add_option(parser, "eval_every_epochs", type=int, default=0,
               help="with --eval_dataset: score the tower on its validation split every N epochs (0: off)")
    args = parser.parse_args(argv)
    for name in ("max_train_samples", "per_device_train_batch_size", "image_size", "patch_size", "logging_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    if args.eval_every_epochs < 0:
        parser.error(f"--eval_every_epochs must be 0 (off) or more, got {args.eval_every_epochs}")
    if args.num_train_epochs <= 0 or args.learning_rate <= 0:
        parser.error("--num_train_epochs and --learning_rate must be positive")
    if args.text_encoder == "clip" and not args.model_name_or_path:
        parser.error("--text_encoder clip needs --model_name_or_path (a CLIP checkpoint with its text tower)")
    return args


def adapt(args) -> int:
    summary = adapt_vision(
        args.dataset, args.output_dir, model_name_or_path=args.model_name_or_path,
        text_encoder_kind=args.text_encoder, tower_size=args.tower_size, image_size=args.image_size,
        patch_size=args.patch_size, caption_template=args.caption_template,
        max_train_samples=args.max_train_samples, negatives=args.negatives, augment_images=args.augment_images,
        num_train_epochs=args.num_train_epochs, batch_size=args.per_device_train_batch_size,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay, seed=args.seed,
        feature_cache_dir=args.feature_cache_dir, eval_dataset=args.eval_dataset, logging_steps=args.logging_steps,
        eval_every_epochs=args.eval_every_epochs)
    print(json.dumps(summary, indent=2))
    print(f"saved the tower to {args.output_dir}/")
    return 0


def main(argv=None) -> int:
    return run_command("moda adapt-vision", adapt, parse_arguments(argv))
