"""Builds MODA models and processors: from pretrained backbones, or small ones from scratch for CPU work.

The sizes here are the only place model shapes are chosen: `--model_size tiny` in train_hf.py, the offline demo
and the tests all come through `config_for_size`.
"""

from transformers import CLIPVisionConfig, OPTConfig

from configuration_moda import MODAConfig
from modeling_moda import MODAForConditionalGeneration, load_clip_vision
from processing_moda import MODAProcessor

# Shapes of the from-scratch models. "test" stays under 1M parameters (as transformers' own model tests);
# "tiny" is the small model that learns a catalog on a CPU within minutes. Its 16-pixel patches (a 4 x 4 grid at 64 px)
# were measured on the demo catalog: an epoch costs about a third of one on 8-pixel patches, and a from-scratch tower
# learns product shapes from them far sooner (product type 0.89 after 75 epochs against 0.67 after 25 epochs of
# 8-pixel patches, about the same time).
SIZES = {
    "test": dict(
        image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=2, projection_dim=24,
        text_hidden=32, text_layers=2, text_heads=2, max_positions=64,
    ),
    "tiny": dict(
        image_size=64, patch_size=16, vision_hidden=128, vision_layers=4, vision_heads=4, projection_dim=128,
        text_hidden=128, text_layers=3, text_heads=4, max_positions=96,
    ),
}


def require_size(size: str) -> dict:
    if size not in SIZES:
        raise ValueError(f"Unknown model size {size!r}; choose one of {sorted(SIZES)}.")
    return SIZES[size]


def vision_config_for_size(size: str, **overrides) -> CLIPVisionConfig:
    """The from-scratch CLIP vision tower of a named size; `overrides` (image_size, projection_dim, ...) win."""
    s = require_size(size)
    settings = dict(
        image_size=s["image_size"],
        patch_size=s["patch_size"],
        hidden_size=s["vision_hidden"],
        intermediate_size=4 * s["vision_hidden"],
        num_hidden_layers=s["vision_layers"],
        num_attention_heads=s["vision_heads"],
        projection_dim=s["projection_dim"],
    )
    return CLIPVisionConfig(**{**settings, **overrides})


def config_for_size(size: str, tokenizer, vision_config: CLIPVisionConfig = None, **overrides) -> MODAConfig:
    """A from-scratch MODAConfig of a named size whose decoder matches `tokenizer` (vocab and special tokens); with
    `vision_config` (a pretrained tower's), the decoder of that size on that tower."""
    s = require_size(size)
    vision_config = vision_config or vision_config_for_size(size)
    text_config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=s["text_hidden"],
        word_embed_proj_dim=s["text_hidden"],
        ffn_dim=4 * s["text_hidden"],
        num_hidden_layers=s["text_layers"],
        num_attention_heads=s["text_heads"],
        max_position_embeddings=s["max_positions"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dropout=0.0,
    )
    return MODAConfig(vision_config=vision_config.to_dict(), text_config=text_config, **overrides)


def image_processor_for(config: MODAConfig):
    """CLIP's preprocessing at the vision tower's resolution (resize the short side, centre crop, normalise)."""
    return image_processor_at(config.vision_config.image_size)


def image_processor_at(size: int):
    """CLIP's preprocessing at `size` px."""
    # Imported here, when used: without torchvision, looking the name up warns that its PIL backend stands in, and
    # importing this module (as `moda train --help` does) should not.
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def clip_image_processor(name_or_path: str, **hub):
    """A CLIP checkpoint's own image processor (`hub`: from_pretrained's revision, cache_dir); imported when used, as
    in image_processor_at."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_pretrained(name_or_path, **hub)


def build_from_scratch(size: str, tokenizer, vision_model: str = None, hub: dict = None, **overrides):
    """
    A randomly initialised MODA of a named size and its processor; with `vision_model` (a CLIP checkpoint, e.g. a
    tower from `moda adapt-vision`), a new decoder of that size on that pretrained tower and its image processor;
    `hub`: from_pretrained's revision and cache_dir for that tower.
    """
    hub = {key: value for key, value in (hub or {}).items() if value is not None}
    tower = load_clip_vision(vision_model, trust_remote_code=False, **hub) if vision_model else None
    # A from-scratch vision tower has learned nothing yet: it trains too; a pretrained one stays frozen (cached
    # features) unless the caller says otherwise.
    overrides.setdefault("freeze_vision_tower", tower is not None)
    config = config_for_size(size, tokenizer, tower.config if tower is not None else None, **overrides)
    model = MODAForConditionalGeneration(config)
    if tower is None:
        image_processor = image_processor_for(config)
    else:
        model.vision_tower.load_state_dict(tower.state_dict())
        image_processor = clip_image_processor(vision_model, **hub)
    set_generation_defaults(model, tokenizer)
    return model, MODAProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_from_backbones(vision_model: str, text_model: str, revision: str = None, cache_dir: str = None, **overrides):
    """MODA on pretrained CLIP and OPT checkpoints (Hub ids or local folders, at `revision`) and its processor."""
    model = MODAForConditionalGeneration.from_backbones(vision_model, text_model, revision=revision,
                                                        cache_dir=cache_dir, **overrides)
    # trust_remote_code=False said outright: left unset, AutoImageProcessor asks on stdin whether to run the code a
    # backbone folder's preprocessor_config.json names, and a "y" runs it.
    processor = MODAProcessor.from_backbones(vision_model, text_model, trust_remote_code=False, revision=revision,
                                             cache_dir=cache_dir)
    set_generation_defaults(model, processor.tokenizer)
    return model, processor


def set_generation_defaults(model, tokenizer, max_new_tokens: int = 32) -> None:
    """Descriptions are short: greedy decoding up to `max_new_tokens`, stopping at the tokenizer's EOS."""
    model.generation_config.update(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
    )
