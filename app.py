"""MODA web demo: describe a product photo, search a catalog by text.

    python app.py --model ./moda-demo --index index/      # a model folder or Hub id, an index from `moda index`
    python app.py --model your-name/moda --revision <commit hash>    # from the Hub, pinned to one commit
    python app.py                                         # the offline demo: ./moda-demo + a small synthetic catalog

MODA_MODEL, MODA_INDEX, MODA_REVISION and MODA_PRECISION set what --model, --index, --revision and --precision leave
unset (e.g. a Space's variables). The model runs in bf16 where the CPU computes bf16 natively (AMX or AVX512-BF16),
else in fp32; `--precision fp32` (or MODA_PRECISION=fp32) keeps it in fp32 everywhere. A model folder works offline; a Hub id is loaded from the Hub (HF_ENDPOINT), or only from the local cache
under HF_HUB_OFFLINE=1. With no --index, a small synthetic catalog (moda/data/synthetic.py) is captioned with the model
and indexed once, under .cache/, where a few example photos, drawn the same way, are written too. Nothing else reaches
the network: no analytics, no share link, system fonts. A Space that needs no moda package: `moda space` (hub_card/space.py).
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO_ROOT))

DEMO_MODEL = "moda-demo"
DEMO_CACHE = Path(".cache/moda-app")
DEMO_CATALOG_ITEMS = 120
DEMO_EXAMPLES = 4
GALLERY_SIZE = 8
# option -> the environment variable that sets it when the command line does not
ENVIRONMENT = {"model": "MODA_MODEL", "index": "MODA_INDEX", "revision": "MODA_REVISION"}


def describe(captioner, image, vocabulary=None) -> tuple:
    """(description, attributes) of a PIL image; attributes are {} without a vocabulary."""
    from moda.evaluate.describe import describe_images

    if image is None:
        return "Upload a product photo first.", {}
    description = describe_images(captioner.model, captioner.processor, [image.convert("RGB")], max_new_tokens=None)[0]
    if vocabulary is None:
        return description, {}
    from moda.data.attributes import extract_attributes

    found = extract_attributes(description, vocabulary)
    return description, {attribute: values for attribute, values in found.items() if values}


def gallery_items(index, query: str, k: int = GALLERY_SIZE) -> list:
    """(image, caption) pairs of the query's top hits; an image that cannot be read shows as a grey tile."""
    from PIL import Image

    from moda.io.images import load_image

    if not query or not query.strip():
        return []
    pairs = []
    for hit in index.search(query, k):
        try:
            image = load_image(hit["file"], hit["file"])
        except (OSError, ValueError):
            image = Image.new("RGB", (64, 64), (200, 200, 200))
        # A photo index (moda index --vision_model) holds no descriptions: its items are named by id.
        label = hit["description"] if hit["description"] is not None else hit["id"]
        pairs.append((image, f"{hit['score']:.2f}  {label}"))
    return pairs


def build_demo(captioner, index, vocabulary=None, k: int = GALLERY_SIZE, examples=()):
    """The Gradio app: a describe tab (image -> description, attributes; `examples`: photo paths to click) and a
    search tab (query -> gallery)."""
    import gradio as gr

    def on_describe(picture):
        return describe(captioner, picture, vocabulary)

    def on_search(text):
        return gallery_items(index, text, k)

    with gr.Blocks(title="MODA: fashion product descriptions", analytics_enabled=False) as demo:
        gr.Markdown("# MODA\nDescribe a fashion product photo, or search the catalog by text.")
        with gr.Tab("Describe"):
            with gr.Row():
                image = gr.Image(type="pil", label="Product photo", sources=["upload", "clipboard"], elem_id="photo")
                with gr.Column():
                    description = gr.Textbox(label="Description", interactive=False, elem_id="description")
                    attributes = gr.JSON(label="Attributes", elem_id="attributes")
            describe_button = gr.Button("Describe", variant="primary", elem_id="describe")
            if examples:
                gr.Examples([[str(path)] for path in examples], inputs=image, outputs=[description, attributes],
                            fn=on_describe, run_on_click=True, cache_examples=False, label="Example photos",
                            elem_id="examples")
        with gr.Tab("Search"):
            query = gr.Textbox(label="Search the catalog", placeholder="red sports shoes for women", elem_id="query")
            search_button = gr.Button("Search", variant="primary", elem_id="search")
            gallery = gr.Gallery(label="Matching items", columns=4, elem_id="gallery")

        describe_button.click(on_describe, inputs=image, outputs=[description, attributes])
        image.upload(on_describe, inputs=image, outputs=[description, attributes])
        search_button.click(on_search, inputs=query, outputs=gallery)
        query.submit(on_search, inputs=query, outputs=gallery)
    return demo


def build_demo_index(model: str, revision: str = None, cache: Path = DEMO_CACHE, trust_remote_code: bool = False,
                     precision: str = "fp32"):
    """The no-argument demo's catalog: synthetic items captioned by the model, in `precision` ("fp32" or "bf16"),
    and indexed (once; then reused)."""
    from moda.cli.caption import main as caption_main
    from moda.cli.index import main as index_main
    from moda.data.synthetic import make_catalog

    catalog = Path(make_catalog(str(cache / "catalog"), num_items=DEMO_CATALOG_ITEMS, image_size=64, seed=0))
    # each model's captions and index apart, and each precision's: never another's captions
    described = cache / model_key(model, revision) / precision
    captions = described / "captions.jsonl"
    status = caption_main(["--model", model, "--images", str(catalog.resolve()), "--output", str(captions),
                           "--precision", precision]
                          + (["--revision", revision] if revision else [])
                          + (["--trust_remote_code"] if trust_remote_code else []))
    if status != 0:
        raise ValueError(f"the demo catalog could not be captioned with {model!r} (moda caption's error above says "
                         "why): give --index (from moda index).")
    index_main(["--captions", str(captions), "--output", str(described / "index")])
    return described / "index", str(catalog)


def model_key(model: str, revision: str = None) -> str:
    """A folder name for a model: its resolved path (or Hub id and revision) and, for a local folder, when its weights
    changed."""
    import hashlib

    path = Path(model)
    weights = path / "model.safetensors"
    identity = f"{path.resolve()}@{weights.stat().st_mtime_ns}" if weights.is_file() else f"{model}@{revision}"
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]


def parse_arguments(argv):
    from fast_generation_moda import PRECISION_VARIABLE
    from moda.cli import add_trust_remote_code_argument
    from moda.io.options import add_precision_option

    variables = {**ENVIRONMENT, "precision": PRECISION_VARIABLE}
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="environment (when the option is not given; an empty value counts as unset):\n"
        + "\n".join(f"  {variable} sets --{option}" for option, variable in variables.items()))
    parser.add_argument("--model_name_or_path", "--model-name-or-path", "--model", dest="model",
                        default=os.environ.get(ENVIRONMENT["model"]) or DEMO_MODEL,
                        help="a MODA model folder or Hub id (default ./moda-demo)")
    parser.add_argument("--index", default=os.environ.get(ENVIRONMENT["index"]) or None,
                        help="an index folder from moda index (default: a demo catalog)")
    parser.add_argument("--revision", default=os.environ.get(ENVIRONMENT["revision"]) or None,
                        help="the model's Hub revision: a branch, tag or commit hash (default: main)")
    parser.add_argument("--vocabulary", default=None, help="a catalog whose attribute columns name the attributes")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    add_precision_option(parser)
    add_trust_remote_code_argument(parser)
    return parser.parse_args(argv)


def load_app(args) -> tuple:
    """(captioner, index, vocabulary) for the parsed arguments. A missing or unloadable model, index or vocabulary
    raises an input error (OSError or ValueError) naming it; the index and vocabulary are checked before the model
    loads, and a model that needs its own code is refused before the demo catalog is captioned with it."""
    if Path(args.model) == Path(DEMO_MODEL) and not Path(DEMO_MODEL).is_dir():  # also "./moda-demo", as in README
        raise FileNotFoundError("./moda-demo does not exist. Run `python train_hf.py` first (it trains the offline demo "
                                f"model), or pass --model <folder or Hub id> (or set {ENVIRONMENT['model']}).")
    import torch

    from fast_generation_moda import inference_dtype, precision_name
    from moda.catalog.caption import catalog_vocabulary
    from moda.catalog.search import CatalogIndex
    from moda.model.loading import check_model_code, load_captioner

    check_model_code(args.model, args.revision, trust_remote_code=args.trust_remote_code)
    # What --precision means where both the captioner and the demo catalog's captioning run (CUDA when it is there).
    precision = precision_name(inference_dtype(args.precision, "cuda" if torch.cuda.is_available() else "cpu"))
    index_dir, vocabulary_source = ((args.index, args.vocabulary) if args.index
                                    else build_demo_index(args.model, args.revision,
                                                          trust_remote_code=args.trust_remote_code,
                                                          precision=precision))
    index = CatalogIndex.load(index_dir)
    vocabulary_source = args.vocabulary or vocabulary_source
    vocabulary = catalog_vocabulary(vocabulary_source) if vocabulary_source else None
    captioner = load_captioner(args.model, args.revision, trust_remote_code=args.trust_remote_code,
                               precision=precision)
    return captioner, index, vocabulary


def main(argv=None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    try:
        captioner, index, vocabulary = load_app(args)
    except (OSError, ValueError) as err:
        sys.exit(f"app.py: error: {err}")
    from hub_card.space_app import offline_theme  # the Space's look: system fonts
    from image_io_moda import restrict_pillow
    from moda.data.synthetic import draw_examples

    examples = draw_examples(DEMO_CACHE / "examples", num_items=DEMO_EXAMPLES)
    demo = build_demo(captioner, index, vocabulary, examples=examples)
    # This process is the demo's own: Gradio decodes an upload with plain Pillow before describe() sees it, so Pillow
    # itself keeps to MODA's formats and pixel limit here.
    restrict_pillow()
    demo.launch(server_name=args.host, server_port=args.port, share=False, theme=offline_theme())
    return 0


if __name__ == "__main__":
    sys.exit(main())
