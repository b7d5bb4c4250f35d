"""Inference Endpoints handler for a MODA model (the custom-handler convention: `EndpointHandler(path)`).

    handler = EndpointHandler("path/to/model")
    handler({"inputs": open("shirt.jpg", "rb").read()})                 # raw image bytes
    handler({"inputs": base64_string, "parameters": {"max_new_tokens": 16}})
    handler({"inputs": "https://example.com/shirt.jpg", "parameters": {"prompt": "What colour is this item?"}})
    # -> [{"generated_text": "White Casual Shirts for Boys - Apparel Topwear"}]
    handler({"inputs": [raw_bytes, base64_string], "parameters": {"generation_parameters": {"num_beams": 3}}})
    # -> [[{"generated_text": ...}], [{"generated_text": ...}]]

"parameters" takes the pipeline's `prompt`, `max_new_tokens` and `generate_kwargs`, the Inference API's
`generation_parameters` (the image-to-text task's name for generation options), and any other generation option by
name. Base64 may be line-wrapped (as `base64 shirt.jpg` writes it) or URL-safe.

This file travels in the model folder. It imports only torch, transformers, PIL and the standard library's base64
and io: URLs are fetched by transformers' own `load_image`, and a string is never read as a local path (an
endpoint must not open files named by its callers).
"""

import base64
import io

import torch
from PIL import Image
from transformers import pipeline
from transformers.image_utils import load_image

# Parameters the MODA pipeline takes by name; dicts of generation options (the pipeline's name for one, and the
# Inference API image-to-text spec's); any other parameter is a generation option (e.g. num_beams).
PIPELINE_PARAMETERS = ("prompt", "max_new_tokens")
GENERATION_DICTS = ("generate_kwargs", "generation_parameters")
URL_TIMEOUT_S = 20  # a URL that never answers must not hold an endpoint worker forever


class EndpointHandler:
    def __init__(self, path: str = ""):
        device = 0 if torch.cuda.is_available() else -1
        self.captioner = pipeline("image-to-text", model=path or ".", trust_remote_code=True, device=device)

    def __call__(self, data: dict) -> list:
        """`{"inputs": image, "parameters": {...}}` -> `[{"generated_text": ...}]` (a list of those for a list)."""
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError(f'The request must be a dict with an "inputs" key; got {_describe(data)}.')
        arguments = pipeline_arguments(data.get("parameters"))
        inputs = data["inputs"]
        if isinstance(inputs, list):
            if not inputs:
                raise ValueError('"inputs" is an empty list: give at least one image.')
            images = []
            for index, item in enumerate(inputs):
                try:
                    images.append(to_image(item))
                except ValueError as err:
                    raise ValueError(f'"inputs" item {index}: {err}') from err
        else:
            images = to_image(inputs)
        return self.captioner(images, **arguments)


def pipeline_arguments(parameters) -> dict:
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise ValueError(f'"parameters" must be a dict; got {_describe(parameters)}.')
    arguments = {key: value for key, value in parameters.items() if key in PIPELINE_PARAMETERS}
    generation = {}
    for name in GENERATION_DICTS:
        options = parameters.get(name)
        if options is None:
            continue
        if not isinstance(options, dict):
            raise ValueError(f'"parameters"["{name}"] must be a dict of generation options; got {_describe(options)}.')
        twice = sorted(set(generation) & set(options))
        if twice:
            raise ValueError(f"Generation option(s) {twice} given twice, in generate_kwargs and generation_parameters.")
        generation.update(options)
    generation.update({key: value for key, value in parameters.items()
                       if key not in PIPELINE_PARAMETERS and key not in GENERATION_DICTS})
    if generation:
        arguments["generate_kwargs"] = generation
    return arguments


def to_image(item) -> Image.Image:
    """Raw bytes, a base64 string (optionally a data: URL), an http(s) URL or a PIL image -> an RGB PIL image."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, (bytes, bytearray)):
        return _decode_image_bytes(bytes(item), "the image bytes")
    if isinstance(item, str):
        text = item.strip()
        if text.startswith(("http://", "https://")):
            try:
                return load_image(text, timeout=URL_TIMEOUT_S).convert("RGB")
            except Exception as err:  # load_image raises several types; name the URL either way
                raise ValueError(f"Could not load the image at {text[:200]!r}: {err}") from err
        if text.startswith("data:"):
            text = text.partition(",")[2]
        text = "".join(text.split())  # line-wrapped base64 (76 characters a line, as MIME and `base64` write it)
        if "-" in text or "_" in text:  # the URL-safe alphabet, whose padding is often left out
            text = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError as err:  # binascii.Error is a ValueError
            raise ValueError(
                f"A string input must be an http(s) URL or base64-encoded image bytes; {text[:40]!r}... is neither "
                f"({err})."
            ) from err
        return _decode_image_bytes(raw, "the base64 input")
    raise ValueError(f"An input must be image bytes, a base64 string or an http(s) URL; got {_describe(item)}.")


def _decode_image_bytes(raw: bytes, name: str) -> Image.Image:
    if not raw:
        raise ValueError(f"{name} is empty (0 bytes).")
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()  # truncated or corrupt data surfaces only when the pixels are decoded
    except Exception as err:
        raise ValueError(f"Could not read {name} ({len(raw)} bytes) as an image: {type(err).__name__}: {err}") from err
    return image.convert("RGB")


def _describe(value) -> str:
    return f"{type(value).__name__} {str(value)[:60]!r}"
