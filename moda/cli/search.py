"""`moda search`: the items of a catalog index closest to a text query, or to a photo (an index with image
embeddings).

    moda search index/ "red sports shoes for women" -k 5
    moda search index/ --image photo.jpg --image_model ./moda-demo
"""

import argparse

from moda.catalog.search import CatalogIndex, image_embeddings_for
from moda.cli import add_trust_remote_code_argument


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="moda search", description="Search a catalog index by text or image.")
    parser.add_argument("index", help="an index folder from moda index")
    parser.add_argument("query", nargs="?", help='e.g. "red sports shoes for women"')
    parser.add_argument("-k", type=int, default=5, help="how many hits")
    parser.add_argument("--image", default=None, help="search by this image instead (index built with --image_model)")
    parser.add_argument("--image_model", "--image-model", default=None, help="the MODA model for --image")
    add_trust_remote_code_argument(parser)
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"-k must be at least 1, got {args.k}")
    if (args.query is None) == (args.image is None):
        parser.error("give a text query or --image (one of them)")
    if args.query is not None and not args.query.strip():
        parser.error("the search query is empty")
    try:
        index = CatalogIndex.load(args.index)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    if args.image:
        if not args.image_model:
            parser.error("--image needs --image_model (the MODA model that embedded the catalog)")
        if index.images is None:  # checked before the model is loaded and the image embedded
            parser.error(f"{args.index} holds no image embeddings: build it with moda index --image_model")
        try:
            embedding = image_embeddings_for([args.image], args.image_model, trust_remote_code=args.trust_remote_code)
        except ValueError as err:
            parser.error(str(err))
        hits = index.search_by_image_embedding(embedding, args.k)
    else:
        hits = index.search(args.query, args.k)
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>3}  {hit['score']:.3f}  {hit['id']}  {hit['description']}  ({hit['file']})")
    return 0
