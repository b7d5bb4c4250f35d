"""`moda index`: build a search index over a captions file, or add the new ids of one to an existing index.

    moda index --captions captions.jsonl --output_dir index/    # again with more captions: adds the new ids
    moda index --captions captions.jsonl --output_dir index/ --model_name_or_path ./moda-demo   # and image embeddings
"""

from moda.catalog.search import DEFAULT_EMBEDDER, EXACT_UP_TO, update_index
from moda.cli import add_trust_remote_code_argument
from moda.io.options import add_dataset_option, add_model_option, add_option, add_revision_option, command_parser


def main(argv=None) -> int:
    parser = command_parser("index", "Build or update a search index over captions.")
    add_option(parser, "captions", required=True, help="captions file from moda caption (.jsonl, .csv, .parquet)")
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
                            "needed where its images are bytes (e.g. a Hub dataset), not files")
    add_option(parser, "image_column", default=None,
               help="with --dataset: the catalog's image column (default: image), as for moda caption")
    add_option(parser, "rebuild", action="store_true", help="start a new index even if one exists")
    add_trust_remote_code_argument(parser)
    args = parser.parse_args(argv)
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
