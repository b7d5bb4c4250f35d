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

A request holds at most MAX_IMAGES_PER_REQUEST images. Images are read through image_io_moda.py, next to this file
in the model folder (save_pretrained copies it with processing_moda.py): URLs are fetched only from public addresses,
redirects checked hop by hop, with a byte cap and a deadline; bytes are decoded only as JPEG, PNG, WEBP, GIF, BMP or
TIFF, their pixel count checked before decoding. A string is never read as a local path (an endpoint must not open
files named by its callers).

This file travels in the model folder. It imports only torch, transformers, PIL, image_io_moda and the standard
library's os and sys.
"""

import os
import sys

import torch
from PIL import Image
from transformers import pipeline

# Inference Endpoints imports this file by its path, so its folder (the model's, which holds image_io_moda.py) is on
# sys.path only for this import; taken off again, it leaves the process's imports as they were.
HANDLER_FOLDER = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HANDLER_FOLDER)
try:
    from image_io_moda import (MAX_IMAGES_PER_REQUEST, ImageInputError, base64_image_bytes, decode_image, is_url,
                               load_url_image, to_rgb)
finally:
    sys.path.remove(HANDLER_FOLDER)

# Parameters the MODA pipeline takes by name; dicts of generation options (the pipeline's name for one, and the
# Inference API image-to-text spec's); any other parameter is a generation option (e.g. num_beams).
PIPELINE_PARAMETERS = ("prompt", "max_new_tokens")
GENERATION_DICTS = ("generate_kwargs", "generation_parameters")


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
            if len(inputs) > MAX_IMAGES_PER_REQUEST:  # each is fetched or decoded before the model runs
                raise ValueError(f'"inputs" holds {len(inputs)} images, more than the {MAX_IMAGES_PER_REQUEST} one '
                                 f'request may hold: send them in several requests.')
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
        return to_rgb(item)
    if isinstance(item, (bytes, bytearray)):
        return _decode_image_bytes(bytes(item), "the image bytes")
    if isinstance(item, str):
        text = item.strip()
        if is_url(text):
            return load_url_image(text)  # public addresses only, a byte cap and a deadline; errors name the URL
        try:
            raw = base64_image_bytes(text)
        except ImageInputError as err:
            raise ValueError(
                f"A string input must be an http(s) URL or base64-encoded image bytes; {text[:40]!r}... cannot be "
                f"used: {err}."
            ) from err
        return _decode_image_bytes(raw, "the base64 input")
    raise ValueError(f"An input must be image bytes, a base64 string or an http(s) URL; got {_describe(item)}.")


def _decode_image_bytes(raw: bytes, name: str) -> Image.Image:
    if not raw:
        raise ValueError(f"{name} is empty (0 bytes).")
    return decode_image(raw, f"Could not read {name} ({len(raw)} bytes)")


def _describe(value) -> str:
    return f"{type(value).__name__} {str(value)[:60]!r}"
