"""`moda search`: the items of a catalog index closest to a text query, or to a photo (an index with image
embeddings). A photo index (moda index --vision_model) is searched by text the same way: the query is embedded by the
text side its meta.json records, and the hits are photos (no description).

    moda search index/ "red sports shoes for women" -k 5
    moda search index/ --image photo.jpg --model_name_or_path ./moda-demo
"""

from moda.catalog.search import CatalogIndex, image_embeddings_for
from moda.cli import add_trust_remote_code_argument
from moda.io.options import add_model_option, add_option, add_revision_option, command_parser


def main(argv=None) -> int:
    parser = command_parser("search", "Search a catalog index by text or image.")
    parser.add_argument("index", help="an index folder from moda index")
    parser.add_argument("query", nargs="?", help='e.g. "red sports shoes for women"')
    parser.add_argument("-k", type=int, default=5, help="how many hits")
    add_option(parser, "image", default=None,
               help="search by this image instead (an index built with moda index --model_name_or_path)")
    add_model_option(parser, "image_model", required=False,
                     help="the MODA model for --image (the one that embedded the catalog)")
    add_revision_option(parser)
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
        if not args.model_name_or_path:
            parser.error("--image needs --model_name_or_path (the MODA model that embedded the catalog)")
        if index.images is None:  # checked before the model is loaded and the image embedded
            parser.error(f"{args.index} holds no image embeddings: build it with moda index --model_name_or_path")
        try:
            embedding = image_embeddings_for([args.image], args.model_name_or_path, revision=args.revision,
                                             trust_remote_code=args.trust_remote_code)
        except ValueError as err:
            parser.error(str(err))
        hits = index.search_by_image_embedding(embedding, args.k)
    else:
        hits = index.search(args.query, args.k)
    for rank, hit in enumerate(hits, 1):
        described = f"  {hit['description']}" if hit["description"] is not None else ""  # a photo index has none
        print(f"{rank:>3}  {hit['score']:.3f}  {hit['id']}{described}  ({hit['file']})")
    return 0
