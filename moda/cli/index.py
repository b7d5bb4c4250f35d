"""`moda index`: build a search index over a captions file, or add the new ids of one to an existing index; or,
with --vision_model, over a catalog's photos with no captions at all.

    moda index --captions captions.jsonl --output_dir index/    # again with more captions: adds the new ids
    moda index --captions captions.jsonl --output_dir index/ --model_name_or_path ./moda-demo   # and image embeddings
    moda index --vision_model tower --dataset ../shared/data/fashion-images --split test --output_dir photos/
"""

from moda.catalog.search import DEFAULT_EMBEDDER, EXACT_UP_TO, update_index
from moda.cli import add_trust_remote_code_argument
from moda.io.options import add_dataset_option, add_model_option, add_option, add_revision_option, command_parser


def main(argv=None) -> int:
    parser = command_parser("index", "Build or update a search index over captions, or over a catalog's photos.")
    add_option(parser, "captions", default=None,
               help="captions file from moda caption (.jsonl, .csv, .parquet); or give --vision_model")
    add_option(parser, "vision_model", default=None,
               help="instead of captions: index the photos of --dataset as this tower from moda adapt-vision "
                    "embeds them (it meets all-MiniLM-L6-v2's space, which then embeds the queries)")
    add_option(parser, "split", default=None, help="with --vision_model: only this split of --dataset (e.g. test)")
    add_option(parser, "output_dir", "output", required=True,
               help="index folder; an existing index gets the new ids added")
    # No defaults for --embedder and --exact_up_to: a value the user gives must match an existing index's, which only
    # None tells apart from the default.
    add_option(parser, "embedder", default=None,
               help=f"a sentence-transformers model name or folder (default: {DEFAULT_EMBEDDER}); fixed when the index "
                    f"is built")
    add_option(parser, "exact_up_to", type=int, default=None,
               help=f"past this many items the index is HNSW (approximate) instead of exact (default: {EXACT_UP_TO}); "
                    f"fixed when the index is built: changing it needs --rebuild")
    add_model_option(parser, "image_model", required=False,
                     help="a MODA model: also index its image embeddings (for search by image)")
    add_revision_option(parser)
    add_dataset_option(parser, "catalog", required=False,
                       help="with --model_name_or_path: read the images from this catalog (the one captioned), by id; "
                            "needed where its images are bytes (e.g. a Hub dataset), not files; with --vision_model: "
                            "the catalog whose photos are indexed")
    add_option(parser, "image_column", default=None,
               help="with --dataset: the catalog's image column (default: image), as for moda caption")
    add_option(parser, "rebuild", action="store_true", help="start a new index even if one exists")
    add_trust_remote_code_argument(parser)
    args = parser.parse_args(argv)
    if (args.captions is None) == (args.vision_model is None):
        parser.error("give --captions (an index of descriptions) or --vision_model (an index of photos), one of them")
    if args.vision_model:
        return index_photos(parser, args)
    if args.split:
        parser.error("--split chooses the photos of --dataset for --vision_model; a captions index takes the captions "
                     "file whole")
    try:
        counts = update_index(args.captions, args.output_dir, embedder=args.embedder, exact_up_to=args.exact_up_to,
                              image_model=args.model_name_or_path, catalog=args.dataset, image_column=args.image_column,
                              rebuild=args.rebuild, trust_remote_code=args.trust_remote_code, revision=args.revision)
    except ValueError as err:  # an input update_index refuses: the usage line and exit status 2, as argparse gives
        parser.error(str(err))
    print(f"{args.output_dir}: added {counts['added']} item(s), {counts['already']} already indexed, "
          f"{counts['unreadable']} unreadable and {counts['undescribed']} undescribed item(s) left out; "
          f"{counts['total']} in all ({counts['kind']} index, embedder {counts['embedder']})")
    return 0


def index_photos(parser, args) -> int:
    """moda index --vision_model: the photos of --dataset, embedded by the tower; unreadable ones listed by id."""
    from moda.vision.photo_index import update_photo_index

    unused = [f"--{name}" for name in ("embedder", "model_name_or_path", "revision", "trust_remote_code")
              if getattr(args, name)]
    if unused:  # the text side is the tower's, and the photos' embeddings are the tower's, not a MODA model's
        parser.error(f"{', '.join(unused)} do(es) not apply with --vision_model: the tower records its text side")
    if not args.dataset:
        parser.error("--vision_model indexes the photos of a catalog: give --dataset")
    try:
        counts = update_photo_index(args.vision_model, args.dataset, args.output_dir, split=args.split,
                                    image_column=args.image_column, exact_up_to=args.exact_up_to,
                                    rebuild=args.rebuild)
    except (OSError, ValueError) as err:  # a missing catalog or tower, an input refused: the usage line, status 2
        parser.error(str(err))
    for item_id, reason in counts["unreadable"]:
        print(f"left out item {item_id!r}: {reason}")
    print(f"{args.output_dir}: added {counts['added']} photo(s), {counts['already']} already indexed, "
          f"{len(counts['unreadable'])} unreadable photo(s) left out; {counts['total']} in all ({counts['kind']} "
          f"index of photos by tower {counts['tower']['fingerprint']}, queries embedded by {counts['embedder']})")
    return 0
