"""`moda caption-image MODEL IMAGE`: describe one image (a PIL-readable path or an http(s) URL)."""

import argparse

from transformers import pipeline

from pipeline_moda import MODAImageToTextPipeline


def load_captioner(model: str, revision: str = None, device: str = None):
    """
    The image-to-text pipeline for a MODA folder or Hub id (the same code path users get from transformers), run
    by this package's model code: under transformers 5.x a registered model type wins over the folder's own copy
    of the model files, which may be older (or, from the Hub, someone else's).
    """
    import moda.auto_classes  # noqa: F401  (the registration; imported here so that `moda --help` stays light)

    return pipeline(
        "image-to-text", model=model, revision=revision, device=device, trust_remote_code=True,
        pipeline_class=MODAImageToTextPipeline,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="moda caption-image", description=__doc__)
    parser.add_argument("model", help="a MODA model folder or Hub id")
    parser.add_argument("images", nargs="+", help="image paths or http(s) URLs")
    parser.add_argument("--prompt", default=None, help='an optional question, e.g. "What colour is this item?"')
    parser.add_argument("--max_new_tokens", type=int, default=None)
    parser.add_argument("--revision", default=None, help="a Hub revision (commit, branch or tag) to pin")
    args = parser.parse_args(argv)
    captioner = load_captioner(args.model, revision=args.revision)
    for image in args.images:
        result = captioner(image, prompt=args.prompt, max_new_tokens=args.max_new_tokens)
        print(f"{image}\t{result[0]['generated_text']}")
    return 0
