"""Inference Endpoints handler for a MODA model (the custom-handler convention: `EndpointHandler(path)`).

    handler = EndpointHandler("path/to/model")
    handler({"inputs": open("shirt.jpg", "rb").read()})                 # raw image bytes
    handler({"inputs": base64_string, "parameters": {"max_new_tokens": 16}})
    handler({"inputs": "https://example.com/shirt.jpg", "parameters": {"prompt": "What colour is this item?"}})
    # -> [{"generated_text": "White Casual Shirts for Boys - Apparel Topwear"}]
    handler({"inputs": [raw_bytes, base64_string], "parameters": {"generation_parameters": {"num_beams": 3}}})
    # -> [[{"generated_text": ...}], [{"generated_text": ...}]]

"parameters" takes the pipeline's `prompt` and the generation options of an allow-list (GENERATION_OPTIONS:
max_new_tokens, min_new_tokens, num_beams, num_return_sequences, early_stopping, length_penalty, do_sample,
temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size, each with a type and bounds; max_new_tokens
up to the decoder's room), these at its top level, in `generate_kwargs` (the pipeline's name for a dict of them) or
in `generation_parameters` (the Inference API image-to-text task's). Anything else (e.g. custom_generate with
trust_remote_code, streamer, logits_processor) is refused with a ValueError: a request must never choose code to
run. Base64 may be line-wrapped (as `base64 shirt.jpg` writes it) or URL-safe.

A request holds at most MAX_IMAGES_PER_REQUEST images, and at most MAX_REQUEST_TOKENS of generation work (images x
sequences per image x new tokens); min_new_tokens is at most MAX_MIN_NEW_TOKENS. Images are read through
image_io_moda.py, next to this file in the model folder (save_pretrained copies it with processing_moda.py): URLs are
fetched only from public addresses, redirects checked hop by hop, with a byte cap and a deadline; bytes are decoded
only as JPEG, PNG, WEBP, GIF, BMP or TIFF, their pixel count checked before decoding. A string is never read as a local
path (an endpoint must not open files named by its callers).

The serving toolkit decodes an `image/*` request body itself, with Pillow (`Image.open(...).convert("RGB")`), before
this handler sees it. This process is the endpoint's, so importing this file sets Pillow's own limits for the whole
process (image_io_moda.restrict_pillow): only the allowed formats have openers, and Pillow refuses more than
MAX_IMAGE_PIXELS when it opens an image.

The model runs in the precision the deployer sets with the MODA_PRECISION environment variable (an endpoint's
environment): "auto" (the default) is bf16 on a CPU that computes bf16 natively (AMX or AVX512-BF16) and fp32
elsewhere (other CPUs, GPUs); "fp32" or "bf16" as named; any other value stops the handler from starting, naming it.
A request cannot choose it ("precision" is no parameter): the deployer chooses the endpoint's speed and captions.

This file travels in the model folder. It imports only torch, transformers, PIL, image_io_moda,
fast_generation_moda (the precision policy) and the standard library's os and sys.
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
    from fast_generation_moda import configured_precision, inference_dtype
    from image_io_moda import (MAX_IMAGES_PER_REQUEST, ImageInputError, base64_image_bytes, check_base64_length,
                               decode_image, is_url, load_url_image, restrict_pillow, to_rgb)
finally:
    sys.path.remove(HANDLER_FOLDER)


# This process is the endpoint's: Pillow's own limits (allowed formats, MAX_IMAGE_PIXELS) for the toolkit's decode.
restrict_pillow()

# What "parameters" may hold: an allow-list, because the pipeline passes generation options on to `model.generate`,
# where transformers 5 runs code a caller names (custom_generate with trust_remote_code) and takes objects no request
# should choose (streamer, logits_processor, assistant_model, generation_config, ...). The prompt goes to the
# pipeline; generation options may be given at the top level, in "generate_kwargs" (the pipeline's name for a dict of
# them) or in "generation_parameters" (the Inference API image-to-text spec's).
PIPELINE_PARAMETERS = ("prompt",)
GENERATION_DICTS = ("generate_kwargs", "generation_parameters")
# A question about a product image is short; tokenizing a huge string would hold the worker (and a prompt longer
# than the decoder's room is refused by the model anyway).
PROMPT_MAX_CHARACTERS = 1000
# min_new_tokens forbids EOS until then, so every image's every beam runs that long: a caption is about 32 tokens.
MAX_MIN_NEW_TOKENS = 64
# The generation work one request may ask for: images x sequences per image (the larger of num_beams and
# num_return_sequences) x new tokens (max_new_tokens, else the model's default). 32 images x 8 beams x 64 tokens;
# 32 greedy captions of 32 tokens take 1,024.
MAX_REQUEST_TOKENS = 16_384
# name -> (type, low, high, low_is_open): each option's type and bounds. The bounds keep a request's cost (beams,
# sequences, tokens) and its decoding sane; None as max_new_tokens' high stands for the decoder's room, read from the
# loaded model, which also caps min_new_tokens. Decoding modes transformers 5 moved to Hub code (contrastive search,
# group beams, DoLa, constraints) are left out.
GENERATION_OPTIONS = {
    "max_new_tokens": (int, 1, None, False),
    "min_new_tokens": (int, 0, MAX_MIN_NEW_TOKENS, False),  # and at most the decoder's room
    "num_beams": (int, 1, 8, False),
    "num_return_sequences": (int, 1, 8, False),  # the pipeline returns every sequence: one dict each
    "early_stopping": (bool, None, None, False),
    "length_penalty": (float, -2.0, 2.0, False),
    "do_sample": (bool, None, None, False),
    "temperature": (float, 0.0, 2.0, True),
    "top_k": (int, 0, 1000, False),
    "top_p": (float, 0.0, 1.0, True),
    "repetition_penalty": (float, 1.0, 2.0, False),
    "no_repeat_ngram_size": (int, 0, 10, False),
}


class EndpointHandler:
    def __init__(self, path: str = ""):
        precision = configured_precision()  # MODA_PRECISION, checked before the model loads
        device = 0 if torch.cuda.is_available() else -1
        self.captioner = pipeline("image-to-text", model=path or ".", trust_remote_code=True, device=device)
        self.captioner.model.to(inference_dtype(precision, self.captioner.device))
        config = self.captioner.model.config
        # The image prefix and BOS take decoder positions; the last new token is never fed back, so it needs none
        # (as MODA's generate counts its room). A prompt takes more: generate caps the length there.
        self.max_new_tokens = config.text_config.max_position_embeddings - (config.num_image_tokens + 1) + 1
        # What a request that names no length or beams gets: the model's generation defaults.
        defaults = self.captioner.model.generation_config
        # Without max_new_tokens, MODA's generate writes up to max_length (transformers' 20 where unset) less the
        # image prefix and BOS, as its own count does.
        prefix = config.num_image_tokens + 1
        length = defaults.max_new_tokens if defaults.max_new_tokens is not None else (defaults.max_length or 20) - prefix
        self.default_new_tokens = max(1, min(length, self.max_new_tokens))
        self.default_sequences = max(defaults.num_beams or 1, defaults.num_return_sequences or 1)

    def __call__(self, data: dict) -> list:
        """`{"inputs": image, "parameters": {...}}` -> `[{"generated_text": ...}]` (a list of those for a list)."""
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError(f'The request must be a dict with an "inputs" key; got {_describe(data)}.')
        arguments = pipeline_arguments(data.get("parameters"), self.max_new_tokens)
        inputs = data["inputs"]
        if isinstance(inputs, list):
            if not inputs:
                raise ValueError('"inputs" is an empty list: give at least one image.')
            if len(inputs) > MAX_IMAGES_PER_REQUEST:  # each is fetched or decoded before the model runs
                raise ValueError(f'"inputs" holds {len(inputs)} images, more than the {MAX_IMAGES_PER_REQUEST} one '
                                 f'request may hold: send them in several requests.')
        # Before any image is fetched or decoded: the work the request asks for.
        check_request_work(len(inputs) if isinstance(inputs, list) else 1, arguments.get("generate_kwargs", {}),
                           self.default_new_tokens, self.default_sequences)
        if isinstance(inputs, list):
            images = []
            for index, item in enumerate(inputs):
                try:
                    images.append(to_image(item))
                except ValueError as err:
                    raise ValueError(f'"inputs" item {index}: {err}') from err
        else:
            images = to_image(inputs)
        return self.captioner(images, **arguments)


def check_request_work(count: int, generation: dict, default_new_tokens: int, default_sequences: int = 1) -> int:
    """The request's generation work (images x sequences per image x new tokens), or a ValueError naming
    MAX_REQUEST_TOKENS when it is over it. Options not given count at the model's defaults."""
    sequences = max(generation.get("num_beams") or default_sequences, generation.get("num_return_sequences") or 1)
    new_tokens = generation.get("max_new_tokens") or default_new_tokens
    work = count * sequences * new_tokens
    if work > MAX_REQUEST_TOKENS:
        raise ValueError(
            f"The request asks for {count} image(s) x {sequences} sequence(s) (num_beams, num_return_sequences) x "
            f"{new_tokens} new tokens (max_new_tokens) = {work} tokens of generation, over the {MAX_REQUEST_TOKENS} "
            f"one request may take (MAX_REQUEST_TOKENS): send fewer images, beams or tokens per request."
        )
    return work


def pipeline_arguments(parameters, max_new_tokens: int) -> dict:
    """
    The request's "parameters" -> the pipeline's keyword arguments (`prompt`, `generate_kwargs`), each checked
    against the allow-list (PIPELINE_PARAMETERS, GENERATION_OPTIONS and their types and bounds); `max_new_tokens`:
    the most new tokens the model has room for. Anything else is refused with one ValueError naming it. A None value
    counts as not given.
    """
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise ValueError(f'"parameters" must be a dict; got {_describe(parameters)}.')
    places = {"parameters": {name: value for name, value in parameters.items() if name not in GENERATION_DICTS}}
    for place in GENERATION_DICTS:
        options = parameters.get(place)
        if options is None:
            continue
        if not isinstance(options, dict):
            raise ValueError(f'"parameters"["{place}"] must be a dict of generation options; got {_describe(options)}.')
        places[place] = options
    refused = [name if place == "parameters" else f'{place}["{name}"]' for place, options in places.items()
               for name in options if not _allowed(place, name)]
    if refused:
        raise ValueError(
            f"Parameter(s) {refused} not allowed. \"parameters\" takes {list(PIPELINE_PARAMETERS)} and the generation "
            f"options {list(GENERATION_OPTIONS)}, these at its top level, in \"generate_kwargs\" or in "
            f"\"generation_parameters\"."
        )
    arguments, generation, given_in = {}, {}, {}
    for place, options in places.items():
        for name, value in options.items():
            if value is None:
                continue
            if name in PIPELINE_PARAMETERS:
                arguments[name] = check_prompt(value)
            elif name in generation:
                raise ValueError(f"Generation option(s) ['{name}'] given twice, in {given_in[name]} and {place}.")
            else:
                generation[name], given_in[name] = check_generation_option(name, value, max_new_tokens), place
    if generation:
        arguments["generate_kwargs"] = generation
    return arguments


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise ValueError(f'"prompt" must be a string; got {_describe(prompt)}.')
    if len(prompt) > PROMPT_MAX_CHARACTERS:
        raise ValueError(f'"prompt" has {len(prompt)} characters; at most {PROMPT_MAX_CHARACTERS} are allowed.')
    return prompt


def check_generation_option(name: str, value, max_new_tokens: int):
    """`value` if it has the option's type and lies within its bounds (GENERATION_OPTIONS); else a ValueError naming
    the option, the value and the bounds. `max_new_tokens`: the high bound of the options whose high is None."""
    kind, low, high, low_is_open = GENERATION_OPTIONS[name]
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f'"{name}" must be true or false; got {_describe(value)}.')
        return value
    high = max_new_tokens if high is None else high
    if name.endswith("_new_tokens"):
        high = min(high, max_new_tokens)  # never past the decoder's room
    # bool is an int to Python, and generate takes no float (e.g. 8.0) for a count; NaN fails every comparison.
    right_type = not isinstance(value, bool) and isinstance(value, int if kind is int else (int, float))
    if not right_type or not (low < value if low_is_open else low <= value) or not value <= high:
        what = "an integer" if kind is int else "a number"
        bounds = f"above {low} and at most {high}" if low_is_open else f"from {low} to {high}"
        raise ValueError(f'"{name}" must be {what} {bounds}; got {_describe(value)}.')
    return value


def _allowed(place: str, name: str) -> bool:
    """Generation options are allowed anywhere; the pipeline's own parameters at the top level only."""
    return name in GENERATION_OPTIONS or (place == "parameters" and name in PIPELINE_PARAMETERS)


def to_image(item) -> Image.Image:
    """Raw bytes, a base64 string (optionally a data: URL), an http(s) URL or a PIL image -> an RGB PIL image."""
    if isinstance(item, Image.Image):  # e.g. the toolkit's decode of an image/* body: checked before it is read
        return to_rgb(item, f"Could not read the {item.mode} image of {item.size[0]}x{item.size[1]} pixels")
    if isinstance(item, (bytes, bytearray)):
        return _decode_image_bytes(bytes(item), "the image bytes")
    if isinstance(item, str):
        # By its length first: strip() and base64's clean-up copy the string, a request's 1 GB one included.
        check_base64_length(item, f"The string input {item[:40]!r}...")
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
