"""MODA on a Hugging Face Space: describe a fashion product photo with a MODA model from the Hub.

`moda space MODEL SPACE_ID` (hub_card/space.py) writes this file into a Space folder as app.py, next to
    space.json          {"model": MODEL, "revision": the commit hash of MODEL it runs}
    image_io_moda.py    MODA's image policy (the copy of the MODA that wrote the Space)
    examples/*.png      product photos to click
    requirements.txt    torch, transformers, pillow (the Space's SDK brings gradio)
and nothing else: no moda package (it is not on PyPI). The model loads with its own code (trust_remote_code) from its
repo at that commit, so a later push to the model repo changes nothing here until the Space is written again.

Gradio decodes an upload with plain Pillow before describe() sees it, so Pillow itself keeps to MODA's formats and
pixel limit in this process (restrict_pillow) and Gradio refuses an upload over MAX_IMAGE_BYTES; the model's processor
checks the image again (its own image_io_moda.py). Nothing else reaches the network: no analytics, system fonts.
"""

import json
import sys
from pathlib import Path

SPACE_FOLDER = Path(__file__).resolve().parent
SETTINGS_NAME = "space.json"
EXAMPLES_NAME = "examples"


def offline_theme():
    """Gradio's default look with system fonts, so that the page never asks Google Fonts for anything."""
    import gradio as gr

    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def read_settings(path: Path) -> tuple:
    """(model, revision) from space.json; a missing file or value is named."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} cannot be read as the Space's settings ({err}): write the Space again with "
                         "`moda space`.") from err
    values = [settings.get(key) if isinstance(settings, dict) else None for key in ("model", "revision")]
    if not all(isinstance(value, str) and value for value in values):
        raise ValueError(f"{path} must hold a JSON object with the \"model\" id and its pinned \"revision\"; got "
                         f"{settings!r}.")
    return tuple(values)


def describe(captioner, image) -> str:
    """The model's description of a PIL image; a photo the model's image policy refuses is shown as an error."""
    import gradio as gr

    if image is None:
        return "Upload a product photo first."
    try:
        return captioner(image)[0]["generated_text"]
    except ValueError as err:  # image_io_moda's ImageInputError: the message names the image and the problem
        raise gr.Error(str(err)) from err


def build_demo(captioner, model: str, revision: str, examples=()):
    """The Gradio app: a photo (uploaded, pasted or one of `examples`, paths) -> its description."""
    import gradio as gr

    def on_describe(picture):
        return describe(captioner, picture)

    with gr.Blocks(title="MODA: fashion product descriptions", analytics_enabled=False) as demo:
        gr.Markdown(f"# MODA\nDescribe a fashion product photo with `{model}` (commit `{revision[:12]}`).")
        with gr.Row():
            image = gr.Image(type="pil", label="Product photo", sources=["upload", "clipboard"], elem_id="photo")
            description = gr.Textbox(label="Description", interactive=False, elem_id="description")
        describe_button = gr.Button("Describe", variant="primary", elem_id="describe")
        if examples:
            gr.Examples([[str(path)] for path in examples], inputs=image, outputs=description, fn=on_describe,
                        run_on_click=True, cache_examples=False, label="Example photos", elem_id="examples")
        describe_button.click(on_describe, inputs=image, outputs=description)
        image.upload(on_describe, inputs=image, outputs=description)
    return demo


def main() -> int:
    from transformers import pipeline

    # `python app.py` puts this folder first on sys.path; a runner that executes the file by its path may not.
    sys.path.insert(0, str(SPACE_FOLDER))
    from image_io_moda import MAX_IMAGE_BYTES, restrict_pillow

    try:
        model, revision = read_settings(SPACE_FOLDER / SETTINGS_NAME)
        captioner = pipeline("image-to-text", model=model, revision=revision, trust_remote_code=True)
    except (OSError, ValueError) as err:
        sys.exit(f"app.py: error: {err}")
    examples = sorted((SPACE_FOLDER / EXAMPLES_NAME).glob("*.png"))
    demo = build_demo(captioner, model, revision, examples)
    restrict_pillow()
    demo.launch(max_file_size=MAX_IMAGE_BYTES, theme=offline_theme())
    return 0


if __name__ == "__main__":
    sys.exit(main())
