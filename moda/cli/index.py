"""`moda index`: build a search index over a captions file, or add the new ids of one to an existing index.

    moda index --captions captions.jsonl --output index/        # again with more captions: adds the new ids
    moda index --captions captions.jsonl --output index/ --image_model ./moda-demo   # and image embeddings
"""

import argparse
from pathlib import Path

from moda.catalog.caption import read_output
from moda.catalog.search import (DEFAULT_EMBEDDER, EXACT_UP_TO, CatalogIndex, has_description, image_embeddings_for,
                                 images_of, repeated_ids)
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
    if args.catalog and not args.image_model:
        parser.error("--catalog is read for image embeddings only: give --image_model too")
    if args.image_column and not args.catalog:
        parser.error(f"--image_column {args.image_column!r} names a column of --catalog: give --catalog too")

    try:
        rows = read_output(args.captions)
    except (OSError, ValueError) as err:  # a missing file, another format, a broken line
        parser.error(f"--captions {args.captions!r} cannot be read: {err}")
    without_id = [i for i, row in enumerate(rows) if row.get("id") in (None, "")]
    if without_id:
        parser.error(f"--captions {args.captions!r}: row {without_id[0] + 1} has no id ({len(without_id)} row(s) "
                     "like it); a captions file from moda caption has one per row")
    repeated = repeated_ids(rows)
    if repeated:
        parser.error(f"--captions {args.captions!r} has id {repeated[0]!r} more than once ({len(repeated)} id(s) "
                     "like it); ids must be unique")
    unreadable = [row for row in rows if "error" in row]
    # A model may write nothing for an item: there is nothing to search by, as for an unreadable one.
    undescribed = [row for row in rows if "error" not in row and not has_description(row)]
    rows = [row for row in rows if "error" not in row and has_description(row)]
    output = Path(args.output)
    if (output / "meta.json").exists() and not args.rebuild:
        try:
            index = CatalogIndex.load(output)
        except (OSError, ValueError) as err:  # a missing file, another format, files out of step
            parser.error(f"{err} (use --rebuild to build it again)")
        if args.embedder is not None and args.embedder != index.embedder_name:
            parser.error(f"{args.output} was built with {index.embedder_name!r}, not {args.embedder!r} (use --rebuild)")
        if args.exact_up_to is not None and args.exact_up_to != index.exact_up_to:
            parser.error(f"{args.output} was built with --exact_up_to {index.exact_up_to}, not {args.exact_up_to}: "
                         "an index keeps the value it was built with; use --rebuild to build it again with the new one")
        if args.image_model and len(index) and index.images is None:
            parser.error(f"{args.output} was built without --image_model, so its items have no image embeddings: "
                         "use --rebuild to index them with image embeddings")
    else:
        index = CatalogIndex(args.embedder or DEFAULT_EMBEDDER,
                             EXACT_UP_TO if args.exact_up_to is None else args.exact_up_to)
    # Items are only ever added: an item captioned again (another model or prompts) would keep its old description.
    changed = [row for row in rows if str(row["id"]) in index.positions
               and index.items[index.positions[str(row["id"])]]["description"] != row["description"]]
    if changed:
        parser.error(f"{len(changed)} item(s) of {args.output} have another description in {args.captions!r} "
                     f"(e.g. {changed[0]['id']!r}): they were captioned again; use --rebuild to index them anew")
    new_rows = [row for row in rows if str(row["id"]) not in index.positions]
    images = None
    if args.image_model and new_rows:
        try:
            names = [f"item {row['id']!r}" for row in new_rows]
            images = image_embeddings_for(images_of(new_rows, args.catalog, args.image_column or "image"),
                                          args.image_model, names, trust_remote_code=args.trust_remote_code)
        except (OSError, ValueError) as err:  # a missing catalog or image file, an unreadable image
            parser.error(str(err))
    if images is None and index.images is not None and new_rows:
        parser.error(f"{args.output} holds image embeddings: give --image_model to add items to it")
    added = index.add(new_rows, images)
    if len(index):
        index.save(output)
    print(f"{args.output}: added {added} item(s), {len(rows) - added} already indexed, {len(unreadable)} unreadable "
          f"and {len(undescribed)} undescribed item(s) left out; {len(index)} in all "
          f"({index.text.kind if index.text else 'empty'} index, embedder {index.embedder_name})")
    return 0
