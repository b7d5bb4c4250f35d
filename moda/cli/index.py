"""`moda index`: build a search index over a captions file, or add the new ids of one to an existing index.

    moda index --captions captions.jsonl --output index/        # again with more captions: adds the new ids
    moda index --captions captions.jsonl --output index/ --image_model ./moda-demo   # and image embeddings
"""

import argparse

from moda.catalog.search import DEFAULT_EMBEDDER, EXACT_UP_TO, update_index
from moda.cli import add_trust_remote_code_argument


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="moda index", description="Build or update a search index over captions.")
    parser.add_argument("--captions", required=True, help="captions file from moda caption (.jsonl, .csv, .parquet)")
    parser.add_argument("--output", required=True, help="index folder; an existing index gets the new ids added")
    # No defaults for --embedder and --exact_up_to: a value the user gives must match an existing index's, which only
    # None tells apart from the default.
    parser.add_argument("--embedder", default=None,
                        help=f"a sentence-transformers model name or folder (default: {DEFAULT_EMBEDDER}); fixed when "
                             f"the index is built")
    parser.add_argument("--exact_up_to", "--exact-up-to", type=int, default=None,
                        help=f"past this many items the index is HNSW (approximate) instead of exact (default: "
                             f"{EXACT_UP_TO}); fixed when the index is built: changing it needs --rebuild")
    parser.add_argument("--image_model", "--image-model", default=None,
                        help="a MODA model: also index its image embeddings (for search by image)")
    parser.add_argument("--catalog", default=None,
                        help="with --image_model: read the images from this catalog (the one captioned), by id; "
                             "needed where its images are bytes (e.g. a Hub dataset), not files")
    parser.add_argument("--image_column", "--image-column", default=None,
                        help="with --catalog: the catalog's image column (default: image), as for moda caption")
    parser.add_argument("--rebuild", action="store_true", help="start a new index even if one exists")
    add_trust_remote_code_argument(parser)
    args = parser.parse_args(argv)
    try:
        counts = update_index(args.captions, args.output, embedder=args.embedder, exact_up_to=args.exact_up_to,
                              image_model=args.image_model, catalog=args.catalog, image_column=args.image_column,
                              rebuild=args.rebuild, trust_remote_code=args.trust_remote_code)
    except ValueError as err:  # an input update_index refuses: the usage line and exit status 2, as argparse gives
        parser.error(str(err))
    print(f"{args.output}: added {counts['added']} item(s), {counts['already']} already indexed, "
          f"{counts['unreadable']} unreadable and {counts['undescribed']} undescribed item(s) left out; "
          f"{counts['total']} in all ({counts['kind']} index, embedder {counts['embedder']})")
    return 0
