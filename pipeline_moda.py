"""The "image-to-text" pipeline for MODA (a custom pipeline: transformers 5 has no built-in task of that name).

    captioner = pipeline("image-to-text", model="path/or/repo", trust_remote_code=True)
    captioner(image)                        # [{"generated_text": "White Casual Shirts for Boys - Apparel Topwear"}]
    captioner([img1, img2], batch_size=2)   # [[{...}], [{...}]]
    captioner(image, prompt="What colour is this item?")

This file travels to the Hub with the weights: it imports only transformers.
"""

from transformers import Pipeline


class MODAImageToTextPipeline(Pipeline):
    """Describes fashion product images (PIL images, local paths or http(s) URLs) with a MODA model."""

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, prompt=None, max_new_tokens=None, generate_kwargs=None, timeout=None):
        preprocess_params, forward_params = {}, dict(generate_kwargs or {})
        if prompt is not None:
            preprocess_params["prompt"] = prompt
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        if max_new_tokens is not None:
            if "max_new_tokens" in forward_params:
                raise ValueError("max_new_tokens is given twice: as an argument and in generate_kwargs.")
            forward_params["max_new_tokens"] = max_new_tokens
        return preprocess_params, forward_params, {}

    def __call__(self, images=None, **kwargs):
        """
        Args:
            images: a PIL image, a local path, an http(s) URL, or a list of them (also accepted as `inputs=`, the
                name transformers' own pipelines use).
            prompt: an optional question, e.g. "What colour is this item?".
            max_new_tokens, generate_kwargs: passed to `model.generate`.
        Returns:
            `[{"generated_text": ...}]` for one image; a list of those for a list of images.
        """
        if "inputs" in kwargs:
            if images is not None:
                raise ValueError("Give the images once: as `images` or as `inputs`, not both.")
            images = kwargs.pop("inputs")
        if images is None:
            raise ValueError("No images given: pass a PIL image, a local path, an http(s) URL, or a list of them.")
        if isinstance(images, tuple):  # a batch, as a list is (the base class would read a tuple as one input)
            images = list(images)
        if isinstance(images, list) and not images:
            raise ValueError("images is an empty list: give at least one image.")
        return super().__call__(images, **kwargs)

    def preprocess(self, image, prompt=None, timeout=None):
        return self.processor(images=image, text=prompt, timeout=timeout, return_tensors="pt")

    def _forward(self, model_inputs, **generate_kwargs):
        return {"generated_ids": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs):
        texts = self.processor.batch_decode(model_outputs["generated_ids"], skip_special_tokens=True)
        return [{"generated_text": text} for text in texts]


__all__ = ["MODAImageToTextPipeline"]
