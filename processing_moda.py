"""MODAProcessor: CLIP image processor + OPT's GPT-2 byte-level BPE tokenizer.

It turns images into `pixel_values` and prompts into `[BOS] + prompt` token ids (what `generate` continues from),
and, for training, `[BOS] + prompt + description + [EOS]` with `labels` that are -100 everywhere but the
description and its EOS. Images are read (URLs fetched, bytes decoded) only through image_io_moda.py, which holds
MODA's URL and decoding policies. This file travels to the Hub with the weights: it imports only transformers, numpy
and its sibling image_io_moda.py (which the relative import makes save_pretrained copy along).
"""

import os

import numpy as np
import transformers
from transformers import AutoImageProcessor, AutoTokenizer, PretrainedConfig
from transformers.processing_utils import ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

try:
    from .image_io_moda import (FETCH_DEADLINE_S, ImageInputError, base64_image_bytes, check_opened_image,
                                decode_image, describe_input, is_url, load_image_file, load_url_image, to_rgb)
except ImportError:
    from image_io_moda import (FETCH_DEADLINE_S, ImageInputError, base64_image_bytes, check_opened_image,
                               decode_image, describe_input, is_url, load_image_file, load_url_image, to_rgb)

IGNORE_INDEX = -100


def _as_rgb_image(image, timeout=None):
    """A PIL image, path, http(s) URL, base64 string or array -> an RGB PIL image (EXIF orientation applied, first
    frame). `timeout`: the seconds a URL's whole fetch may take (default image_io_moda.FETCH_DEADLINE_S). PIL images
    and arrays pass image_io_moda's checks (format, pixels, shape) before their pixels are read or copied."""
    from PIL import Image

    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        return _open_image_source(image, timeout)
    if isinstance(image, np.ndarray):
        name = f"array of shape {image.shape}"
        check_opened_image(image, f"Could not read image {name!r}")  # before the array is converted (copied)
        image = _array_to_image(image)
    elif isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or f"{image.mode} image of size {image.size}"
    else:
        raise TypeError(
            f"Expected a PIL image, a path, an http(s) URL or a numpy array; got {type(image).__name__}."
        )
    try:
        return to_rgb(image, f"Could not read image {name!r}")
    except ImageInputError:
        raise
    except Exception as err:  # truncated or corrupt data surfaces only when the pixels are decoded
        raise ValueError(f"Could not read image {name!r}: {type(err).__name__}: {err}") from err


def _open_image_source(source: str, timeout=None):
    """A URL, base64 text (optionally a data: URL) or a local path -> an RGB PIL image, under image_io_moda's
    policies."""
    if is_url(source):
        return load_url_image(source.strip(), deadline=timeout or FETCH_DEADLINE_S)
    if source.startswith("data:image/") or (len(source) > 256 and os.sep not in source):
        try:
            data = base64_image_bytes(source)
        except ImageInputError as err:
            raise ImageInputError(f"Could not load image {describe_input(source)}: {err}") from err
        return decode_image(data, f"Could not read image {describe_input(source, 60)}")
    return load_image_file(source)


def _array_to_image(array):
    from PIL import Image

    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # channels-first -> channels-last
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)) or 0 in array.shape:
        raise ValueError(
            f"An image array must be (height, width), (height, width, 1|3|4) or (1|3, height, width); got shape "
            f"{array.shape}."
        )
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"An image array must be uint8 (0-255) or floats (0-1); got dtype {array.dtype}.")
        if not np.isfinite(array).all():
            raise ValueError("An image array contains NaN or infinite values.")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:  # e.g. 0-255 values as floats: clipping would make them a white image
            raise ValueError(
                f"A float image array must hold values in [0, 1]; got values from {low:g} to {high:g} (for 0-255 "
                f"values pass a uint8 array, e.g. array.astype(np.uint8))."
            )
        array = (array * 255).round().astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)


class MODAProcessor(ProcessorMixin):
    r"""
    Constructs a MODA processor from a CLIP image processor and a GPT-2 byte-level BPE tokenizer (OPT's).

    `processor(images=..., text=prompts)` gives `pixel_values`, `input_ids` and `attention_mask` for `generate`;
    add `descriptions=...` to get training inputs with `labels`.
    """

    attributes = ["image_processor", "tokenizer"]
    if int(transformers.__version__.split(".")[0]) < 5:
        # transformers 4.x looks its sub-processors up by these names; 5.x reads them from processor_config.json
        # and warns at every load that the names are deprecated.
        image_processor_class = "CLIPImageProcessor"
        tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # A chat template saved with the processor (chat_template.jinja) comes back on load.
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        # ProcessorMixin loads the tokenizer through AutoTokenizer, which first reads the folder's config.json to look
        # for a tokenizer class. MODA's config.json names remote code, so a direct `MODAProcessor.from_pretrained`
        # would ask whether to run it, though tokenizer_config.json already names the tokenizer. A plain config
        # skips that look-up; AutoProcessor, which has the trust_remote_code answer, passes it on instead.
        if not kwargs.get("trust_remote_code"):
            kwargs.setdefault("config", PretrainedConfig())
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_backbones(
        cls, vision_model: str = "patrickjohncyh/fashion-clip", text_model: str = "facebook/opt-125m", **kwargs
    ) -> "MODAProcessor":
        """The processor matching `MODAForConditionalGeneration.from_backbones` (Hub ids or local folders)."""
        image_processor = AutoImageProcessor.from_pretrained(vision_model, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(text_model, **kwargs)
        return cls(image_processor=image_processor, tokenizer=tokenizer)

    # --- images -------------------------------------------------------------------------------------------------

    def process_images(self, images, timeout=None, return_tensors="pt"):
        """One image or a list of them (PIL, path, URL, array) -> pixel_values."""
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise ValueError("images is an empty list.")
            images = [_as_rgb_image(image, timeout) for image in images]
        else:
            images = [_as_rgb_image(images, timeout)]
        return self.image_processor(images=images, return_tensors=return_tensors)["pixel_values"]

    # --- text ---------------------------------------------------------------------------------------------------

    def _prompt_ids(self, prompt, add_special_tokens=True):
        """[BOS] + the prompt's ids. With add_special_tokens=False the prompt's own text carries its special tokens
        (e.g. a chat template's), and BOS is added only where the prompt does not start with it."""
        if prompt is not None and not isinstance(prompt, str):
            raise TypeError(f"A prompt must be a string or None, got {type(prompt).__name__}.")
        ids = self.tokenizer(prompt or "", add_special_tokens=add_special_tokens)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids  # tokenizers without a BOS template still start every sequence with BOS
        return ids

    def _description_ids(self, description, after_prompt):
        if not isinstance(description, str):
            raise TypeError(f"A description must be a string, got {type(description).__name__}.")
        if not description.strip():
            raise ValueError("A description is empty: there is nothing to learn from it.")
        text = (" " + description.strip()) if after_prompt else description.strip()
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]

    def encode_examples(self, prompts, descriptions=None, max_length=None, add_special_tokens=True):
        """
        Token ids (and labels, with descriptions) per example, unpadded: [BOS] + prompt (+ description + EOS).
        Labels are -100 for BOS and the prompt, so the loss covers only the description and EOS.
        """
        examples = []
        for i, prompt in enumerate(prompts):
            ids = self._prompt_ids(prompt, add_special_tokens)
            labels = [IGNORE_INDEX] * len(ids)
            if descriptions is not None:
                target = self._description_ids(descriptions[i], after_prompt=bool(prompt))
                ids, labels = ids + target, labels + target
            if max_length is not None and len(ids) > max_length:
                what = "prompt and description" if descriptions is not None else "prompt"
                raise ValueError(
                    f"Example {i}: the {what} take {len(ids)} tokens, more than the {max_length} allowed."
                )
            examples.append({"input_ids": ids, "labels": labels})
        return examples

    def pad(self, examples, padding_side="right", return_tensors="pt"):
        """Pads encoded examples to one length; labels are padded with -100."""
        import torch

        longest = max(len(example["input_ids"]) for example in examples)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for example in examples:
            n_pad = longest - len(example["input_ids"])
            pads, ones = [0] * n_pad, [1] * len(example["input_ids"])
            if padding_side == "left":
                batch["input_ids"].append([pad_id] * n_pad + example["input_ids"])
                batch["attention_mask"].append(pads + ones)
                batch["labels"].append([IGNORE_INDEX] * n_pad + example["labels"])
            else:
                batch["input_ids"].append(example["input_ids"] + [pad_id] * n_pad)
                batch["attention_mask"].append(ones + pads)
                batch["labels"].append(example["labels"] + [IGNORE_INDEX] * n_pad)
        if return_tensors == "pt":
            return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
        if return_tensors == "np":
            return {key: np.array(value, dtype=np.int64) for key, value in batch.items()}
        if return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")
        return batch

    # --- both ---------------------------------------------------------------------------------------------------

    def __call__(self, images=None, text=None, descriptions=None, return_tensors="pt", timeout=None, padding=True,
                 max_length=None, add_special_tokens=True, return_attention_mask=True, videos=None, audio=None):
        """
        Args:
            images: a PIL image, path, http(s) URL or array, or a list of them.
            text: an optional prompt (e.g. "What colour is this item?"), or one per image.
            descriptions: for training, the target description per image; adds `labels`.
            return_tensors: "pt" (default), "np", or None for lists.
            padding: taken for the pipelines' sake; a batch is always padded to its longest example, with the pads
                kept off the image prefix.
            max_length: the most tokens an example may take (default: the tokenizer's model_max_length); a longer
                one is an error, never cut.
            add_special_tokens: False where the prompt's text already holds its special tokens (a chat template's).
            return_attention_mask: False leaves `attention_mask` out.
            videos, audio: only None (the pipelines pass them); MODA reads images.
        Returns:
            BatchFeature with `pixel_values` (when images are given), `input_ids`, `attention_mask` and, with
            descriptions, `labels`. Prompts are left-padded for generation; training examples right-padded.
        """
        for name, value in (("videos", videos), ("audio", audio)):
            if value is not None:
                raise ValueError(f"MODA describes images; it cannot take {name}.")
        data = {}
        count = None
        if images is not None:
            data["pixel_values"] = self.process_images(images, timeout=timeout, return_tensors=return_tensors)
            count = len(data["pixel_values"])
        if isinstance(text, (list, tuple)):
            if len(text) == 0:
                raise ValueError("text is an empty list: give one prompt, or one per image.")
            prompts = list(text)
        else:
            prompts = [text] * (count or 1)
        if descriptions is not None:
            descriptions = [descriptions] if isinstance(descriptions, str) else list(descriptions)
            if len(prompts) == 1 and len(descriptions) > 1:
                prompts = prompts * len(descriptions)
        if count is not None and len(prompts) != count:
            raise ValueError(f"Got {count} images but {len(prompts)} prompts: give one prompt, or one per image.")
        if descriptions is not None and len(descriptions) != len(prompts):
            raise ValueError(f"Got {len(prompts)} examples but {len(descriptions)} descriptions.")
        if max_length is None:
            max_length = getattr(self.tokenizer, "model_max_length", None)
            max_length = max_length if max_length is not None and max_length < 1e9 else None
        examples = self.encode_examples(prompts, descriptions, max_length=max_length,
                                        add_special_tokens=add_special_tokens)
        padded = self.pad(examples, padding_side="right" if descriptions is not None else "left",
                          return_tensors=return_tensors)
        data["input_ids"] = padded["input_ids"]
        if return_attention_mask:
            data["attention_mask"] = padded["attention_mask"]
        if descriptions is not None:
            data["labels"] = padded["labels"]
        return BatchFeature(data, tensor_type=None)

    def batch_decode(self, sequences, skip_special_tokens=True, **kwargs):
        return [text.strip() for text in self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)]

    def decode(self, sequence, skip_special_tokens=True, **kwargs):
        return self.tokenizer.decode(sequence, skip_special_tokens=skip_special_tokens, **kwargs).strip()

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        # Unstripped: the image-text-to-text pipeline appends this to the prompt text.
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self):
        return ["input_ids", "attention_mask", "pixel_values"]


MODAProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["MODAProcessor"]
