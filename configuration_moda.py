"""MODA configuration: a CLIP vision tower, a small projector and an OPT decoder.

This file travels to the Hub with the weights (``trust_remote_code``): it imports only transformers.
"""

from transformers import CLIPVisionConfig, OPTConfig, PretrainedConfig


class MODAConfig(PretrainedConfig):
    r"""
    Configuration of [`MODAForConditionalGeneration`].

    With no arguments it describes the full-size MODA: a CLIP ViT-B/32 vision tower (FashionCLIP's shape,
    projection_dim 512) and OPT-125m as the decoder.

    Args:
        vision_config (`dict` or `CLIPVisionConfig`, *optional*):
            The CLIP vision tower. Its `projection_dim` is the size of the image embedding the projector reads.
        text_config (`dict` or `OPTConfig`, *optional*):
            The OPT decoder. Its token embedding width (`word_embed_proj_dim`, which is `hidden_size` at OPT-125m) is
            the size of each image prefix token.
        num_image_tokens (`int`, *optional*, defaults to 1):
            How many prefix embeddings one image becomes (the original MODA used one).
        projector_expansion (`int`, *optional*, defaults to 4):
            The projector's hidden width as a multiple of the prefix token size d (Linear 512 -> 4d -> d).
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            The projector's non-linearity.
        image_embed_dim (`int`, *optional*):
            The image embedding size the projector expects. Defaults to `vision_config.projection_dim`; when
            given it must agree with it.
        freeze_vision_tower (`bool`, *optional*, defaults to `True`):
            Whether the vision tower is frozen (as in the original MODA). Applied after every load.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the projector's initial weights.

    Example:

    ```python
    >>> from configuration_moda import MODAConfig
    >>> from modeling_moda import MODAForConditionalGeneration
    >>> model = MODAForConditionalGeneration(MODAConfig())  # full size, random weights
    ```
    """

    model_type = "moda"
    sub_configs = {"vision_config": CLIPVisionConfig, "text_config": OPTConfig}

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        num_image_tokens=1,
        projector_expansion=4,
        projector_hidden_act="gelu",
        image_embed_dim=None,
        freeze_vision_tower=True,
        initializer_range=0.02,
        **kwargs,
    ):
        if vision_config is None:
            vision_config = CLIPVisionConfig(projection_dim=512)  # CLIP ViT-B/32, as FashionCLIP
        elif isinstance(vision_config, dict):
            vision_config = CLIPVisionConfig(**{k: v for k, v in vision_config.items() if k != "model_type"})
        if text_config is None:
            text_config = OPTConfig()  # OPT-125m
        elif isinstance(text_config, dict):
            text_config = OPTConfig(**{k: v for k, v in text_config.items() if k != "model_type"})

        if image_embed_dim is not None and image_embed_dim != vision_config.projection_dim:
            raise ValueError(
                f"image_embed_dim={image_embed_dim} does not match the vision tower's "
                f"projection_dim={vision_config.projection_dim}: the projector reads the vision tower's image "
                "embedding, so the two must agree."
            )
        if int(num_image_tokens) < 1:
            raise ValueError(f"num_image_tokens must be at least 1, got {num_image_tokens}.")

        self.vision_config = vision_config
        self.text_config = text_config
        self.num_image_tokens = int(num_image_tokens)
        self.projector_expansion = int(projector_expansion)
        self.projector_hidden_act = projector_hidden_act
        self.image_embed_dim = vision_config.projection_dim
        self.freeze_vision_tower = bool(freeze_vision_tower)
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


MODAConfig.register_for_auto_class()

__all__ = ["MODAConfig"]
