"""The model train_hf.py trains: new (from scratch or from backbones), continued from a MODA folder, or BLIP; the
projector-only and LoRA stages; the attention it trains with."""

import torch
from transformers import set_seed

from moda.model.auto_classes import MODAForConditionalGeneration, MODAProcessor
from moda.model.blip_baseline import load_blip
from moda.model.build import build_from_backbones, build_from_scratch
from moda.model.tokenizer import train_caption_tokenizer


def build_model(model_args, data_args, training_args, captions):
    # Every model loaded from the Hub comes at --model_revision, into --cache_dir.
    hub = {"revision": model_args.model_revision, "cache_dir": model_args.cache_dir}
    if model_args.architecture == "blip":  # (check_arguments made sure there is a --blip_model)
        return load_blip(model_args.blip_model, **hub)
    if model_args.model_name_or_path:
        # trust_remote_code=False said outright: left unset, transformers asks on stdin whether to run the code that a
        # folder's tokenizer_config.json names, and a "y" runs it.
        model = MODAForConditionalGeneration.from_pretrained(model_args.model_name_or_path, trust_remote_code=False, **hub)
        processor = MODAProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=False, **hub)
    elif model_args.model_size:
        tokenizer = train_caption_tokenizer(captions, vocab_size=model_args.tokenizer_vocab_size)
        set_seed(training_args.seed)
        # (resolve_size_defaults leaves --vision_model set only where the user gave a tower to build on)
        model, processor = build_from_scratch(
            model_args.model_size, tokenizer, vision_model=model_args.vision_model, hub=hub,
            num_image_tokens=model_args.num_image_tokens,
            **({"freeze_vision_tower": False} if model_args.tune_vision_tower else {}),
        )
    else:
        model, processor = build_from_backbones(
            model_args.vision_model, model_args.text_model, num_image_tokens=model_args.num_image_tokens, **hub
        )
    if model_args.train_projector_only:
        model.language_model.requires_grad_(False)
        model.freeze_vision_tower(True)
    if model_args.use_lora:
        model = add_lora(model, model_args)
    return model, processor


def add_lora(model, model_args):
    """LoRA on the decoder's attention only (q_proj/v_proj names exist in CLIP too: the pattern excludes it)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=r".*language_model.*\.self_attn\.(q_proj|v_proj)",
        modules_to_save=["projector"],
    )
    return get_peft_model(model, config)


def unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def vision_is_frozen(model) -> bool:
    tower = getattr(unwrap(model), "vision_tower", None)  # BLIP has none: its encoder output is not one embedding
    return tower is not None and not any(p.requires_grad for p in tower.parameters())


def use_training_attention(model, device: torch.device) -> None:
    """
    On CPU, MODA trains with eager attention (decoder and vision tower): at caption lengths torch's SDPA backward is
    slower (about 10 % of a full-size bf16 step, benchmarks/training_speed.py; ~5 % of a tiny from-scratch step). The
    choice is not saved: a saved model loads with its default.
    """
    base = unwrap(model)
    if device.type == "cpu" and isinstance(base, MODAForConditionalGeneration):
        base.set_attn_implementation("eager")
