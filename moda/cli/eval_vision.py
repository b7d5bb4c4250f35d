"""`moda eval-vision`: measure a vision tower on a catalog's test split, with no decoder.

    moda eval-vision --model_name_or_path tower --dataset ../shared/data/fashion-images

Zero-shot attribute accuracy (the test photos read out against the captions of the catalog's train split, by the
nearest caption and by each attribute's summed caption probability) and text-to-image retrieval over the test photos
(precision@10 of attribute queries such as "black sports shoes for men", recall@10 of product titles). The text side
is the one the tower was adapted to (its vision_adaptation.json), or --text_encoder.
"""

import json

from moda.io.errors import run_command
from moda.io.options import add_option, command_parser
from moda.vision.evaluate import evaluate_tower
from moda.vision.pairs import TEXT_ENCODERS, text_encoder
from moda.vision.tower import load_tower


def parse_arguments(argv=None):
    parser = command_parser("eval-vision", __doc__)
    add_option(parser, "model_name_or_path", "model", required=True,
               help="a tower folder from moda adapt-vision, or a CLIP checkpoint")
    add_option(parser, "dataset", "dataset_name", required=True, help="a catalog with train and test splits")
    add_option(parser, "text_encoder", default=None, choices=TEXT_ENCODERS,
               help="the text side (default: the one in the tower's vision_adaptation.json)")
    add_option(parser, "text_model", default=None,
               help="with --text_encoder clip: the CLIP checkpoint whose text tower embeds (default: the tower)")
    add_option(parser, "feature_cache_dir", default=".cache/moda-features",
               help="where decoded images and text embeddings are cached")
    return parser.parse_args(argv)


def evaluate(args) -> int:
    tower, image_processor, adaptation = load_tower(args.model_name_or_path)
    kind = args.text_encoder or adaptation.get("text_encoder")
    if kind is None:
        raise ValueError(f"{args.model_name_or_path!r} has no vision_adaptation.json naming its text side: give "
                         "--text_encoder")
    text_model = args.text_model or adaptation.get("text_model") if kind == "clip" else None
    encoder = text_encoder(kind, text_model or args.model_name_or_path)
    result = evaluate_tower(tower, image_processor, adaptation, args.dataset, encoder, args.feature_cache_dir)
    print(json.dumps(result, indent=2))
    return 0


def main(argv=None) -> int:
    return run_command("moda eval-vision", evaluate, parse_arguments(argv))
