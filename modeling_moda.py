"""MODA: a frozen CLIP vision tower, a small projector and an OPT decoder that writes the description.

Where an image becomes a token:

    pixel_values --CLIP vision tower--> image embedding (512-d, CLIP's projected pooled output)
                 --MODAProjector------> `num_image_tokens` prefix embeddings (the decoder's token embedding width)
                 --merge_image_prefix--> [prefix] + [BOS] + [prompt] + [description] embeddings
                 --OPT decoder---------> next-token logits

This file travels to the Hub with the weights (``trust_remote_code``): it imports only torch, transformers and
the other MODA files, by relative import when loaded as remote code.
"""

import copy
import functools
import math
import weakref
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    CLIPVisionModelWithProjection,
    GenerationConfig,
    GenerationMixin,
    OPTForCausalLM,
    PreTrainedModel,
)
from transformers.activations import ACT2FN, QuickGELUActivation
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import logging

# Importing the processor and pipeline here makes every save_pretrained (Trainer's and push_to_hub's too) copy
# all the MODA files next to the weights. image_io_moda is the processor's import, named here too: for a local
# folder, transformers 4.x copies only the loaded file's own relative imports into its module cache, and the
# processor's import of it would then fail.
try:
    from .configuration_moda import MODAConfig
    from .image_io_moda import ImageInputError  # noqa: F401
    from .pipeline_moda import MODAImageToTextPipeline
    from .processing_moda import MODAProcessor
except ImportError:
    from configuration_moda import MODAConfig
    from image_io_moda import ImageInputError  # noqa: F401
    from pipeline_moda import MODAImageToTextPipeline
    from processing_moda import MODAProcessor

logger = logging.get_logger(__name__)

AUTO_MAP = {
    "AutoConfig": f"configuration_moda.{MODAConfig.__name__}",
    "AutoModel": "modeling_moda.MODAForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_moda.MODAForConditionalGeneration",
    "AutoProcessor": f"processing_moda.{MODAProcessor.__name__}",
}
CUSTOM_PIPELINES = {
    "image-to-text": {
        "impl": f"pipeline_moda.{MODAImageToTextPipeline.__name__}",
        "pt": ["AutoModel"],
        "tf": [],
        "type": "multimodal",
    }
}


@dataclass
class MODACausalLMOutput(CausalLMOutputWithPast):
    """
    Output of [`MODAForConditionalGeneration`]: the decoder's output (loss over the description tokens only,
    logits for every position including the image prefix, the key/value cache) plus:

    Args:
        image_embeds: the image embedding the projector read, `(batch, image_embed_dim)`.
        attention_mask: the mask of the merged sequence (prefix included) the decoder saw.
    """

    image_embeds: Optional[torch.FloatTensor] = None
    attention_mask: Optional[torch.LongTensor] = None


class MODAProjector(nn.Module):
    """Linear(image_embed_dim -> 4d) -> GELU -> Linear(4d -> k*d): one image embedding to k prefix embeddings."""

    def __init__(self, config: MODAConfig):
        super().__init__()
        # The prefix tokens sit among the token embeddings, so they have their width: OPT's word_embed_proj_dim (768,
        # its hidden size, at OPT-125m; 512 at OPT-350m, whose project_in maps every embedding to its 1024-d layers).
        hidden = getattr(config.text_config, "word_embed_proj_dim", None) or config.text_config.hidden_size
        self.num_image_tokens = config.num_image_tokens
        self.linear_1 = nn.Linear(config.image_embed_dim, config.projector_expansion * hidden)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.projector_expansion * hidden, config.num_image_tokens * hidden)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        prefix = self.linear_2(self.act(self.linear_1(image_embeds)))
        return prefix.view(image_embeds.shape[0], self.num_image_tokens, -1)


class MODAPreTrainedModel(PreTrainedModel):
    config_class = MODAConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer", "OPTDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_cache_class = True
    _supports_static_cache = True


def _load_clip_vision(vision_model: str, **kwargs) -> CLIPVisionModelWithProjection:
    """Loads the vision tower (with its projection) from a full CLIPModel checkpoint or a vision-only one."""
    config = AutoConfig.from_pretrained(vision_model, **kwargs)
    if config.model_type == "clip":
        vision_config = config.vision_config
        vision_config.projection_dim = config.projection_dim  # the projection lives on the full config
    elif config.model_type == "clip_vision_model":
        vision_config = config
    else:
        raise ValueError(
            f"vision_model={vision_model!r} is a {config.model_type!r} checkpoint; MODA needs a CLIP checkpoint "
            "(a full CLIPModel or a CLIPVisionModelWithProjection)."
        )
    return CLIPVisionModelWithProjection.from_pretrained(vision_model, config=vision_config, **kwargs)


class MODAForConditionalGeneration(MODAPreTrainedModel, GenerationMixin):
    """MODA: describes a fashion item from its photo. See the module docstring for the data flow."""

    def __init__(self, config: MODAConfig):
        super().__init__(config)
        self.vision_tower = CLIPVisionModelWithProjection(config.vision_config)
        self.projector = MODAProjector(config)
        self.language_model = OPTForCausalLM(config.text_config)
        self.post_init()
        self.freeze_vision_tower(config.freeze_vision_tower)

    # --- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_backbones(
        cls,
        vision_model: str = "patrickjohncyh/fashion-clip",
        text_model: str = "facebook/opt-125m",
        **config_overrides,
    ) -> "MODAForConditionalGeneration":
        """Builds MODA from pretrained CLIP and OPT checkpoints (Hub ids or local folders); the projector is new."""
        vision_tower = _load_clip_vision(vision_model)
        language_model = OPTForCausalLM.from_pretrained(text_model)
        config = MODAConfig(
            vision_config=vision_tower.config.to_dict(), text_config=language_model.config.to_dict(), **config_overrides
        )
        model = cls(config)
        model.vision_tower.load_state_dict(vision_tower.state_dict())
        model.language_model.load_state_dict(language_model.state_dict())
        model.language_model.tie_weights()
        model.generation_config.update(
            bos_token_id=config.text_config.bos_token_id,
            eos_token_id=config.text_config.eos_token_id,
            pad_token_id=config.text_config.pad_token_id,
        )
        model.freeze_vision_tower(config.freeze_vision_tower)
        return model

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Weights load from safetensors only: a pickle file (pytorch_model.bin) can run code when unpickled.
        kwargs.setdefault("use_safetensors", True)
        # Loading re-creates Parameters (requires_grad=True): freeze again after every load.
        model = super().from_pretrained(*args, **kwargs)
        model.freeze_vision_tower(model.config.freeze_vision_tower)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        # register_for_auto_class takes one class; the other auto classes and the pipeline are added here.
        self.config.auto_map = dict(AUTO_MAP)
        self.config.custom_pipelines = CUSTOM_PIPELINES
        return super().save_pretrained(save_directory, *args, **kwargs)

    def freeze_vision_tower(self, freeze: bool = True) -> None:
        self.vision_tower.requires_grad_(not freeze)
        self.config.freeze_vision_tower = bool(freeze)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self):
        return self.language_model.get_decoder()

    # --- image -> prefix ----------------------------------------------------------------------------------------

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP's projected, pooled image embedding (what `CLIPModel.get_image_features` returns)."""
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(
                f"pixel_values must be a torch.Tensor (use MODAProcessor on the images), got {type(pixel_values).__name__}."
            )
        if pixel_values.is_complex():
            raise TypeError(f"pixel_values must be real numbers, got {pixel_values.dtype}.")
        expected = (self.config.vision_config.num_channels, self.config.vision_config.image_size)
        if pixel_values.ndim != 4 or pixel_values.shape[1] != expected[0]:
            raise ValueError(
                f"pixel_values must have shape (batch, {expected[0]}, height, width), got {tuple(pixel_values.shape)}."
            )
        # The extremes are NaN or infinite where any value is; one vectorised pass (0.2 ms for a batch of 16 at 224
        # px, where isfinite().all() took 4 ms).
        if pixel_values.numel() and not all(bool(extreme.isfinite()) for extreme in torch.aminmax(pixel_values)):
            raise ValueError("pixel_values contain NaN or infinite values.")
        pixel_values = pixel_values.to(device=self.device, dtype=self.vision_tower.dtype)
        if self.fast_greedy and not torch.is_grad_enabled() and isinstance(self.vision_tower, CLIPVisionModelWithProjection) \
                and _runs_as_written(self.vision_tower, pixel_values.device.type):
            return self._inference_image_features(pixel_values)
        return self.vision_tower(pixel_values=pixel_values).image_embeds

    def _inference_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        The vision tower's forward for inference, with two savings: the Linear layers run on oneDNN with packed
        weights (`_PackedLinears`; at batch 16 on 2 AVX-512 cores the tower took 14-25 % less time than CLIP's
        forward in fp32 and, with the quick GELU inside the first MLP product, ~22 % less in bf16), and the pooled
        output reads only the class token, so past its attention the last layer runs the class token alone (its output
        projection and MLP on 1 row instead of 50 at ViT-B/32). In fp32 the arithmetic is CLIP's own (in bf16 see
        `_PackedLinears.mlp`).
        """
        vision = self.vision_tower.vision_model
        layers = vision.encoder.layers
        quick_gelu_mlps = [(layer.mlp.fc1, layer.mlp.fc2) for layer in layers
                           if isinstance(layer.mlp.activation_fn, QuickGELUActivation)]
        linears = _PackedLinears(self._vision_linears(), quick_gelu_mlps)
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
        for index, layer in enumerate(layers):
            hidden = _clip_layer_pass(layer, hidden, index == len(layers) - 1, linears)
        return linears(self.vision_tower.visual_projection, vision.post_layernorm(hidden[:, 0]))

    def _vision_linears(self) -> list:
        """The vision tower's Linear layers in `_inference_image_features`, grouped by shared input (q, k, v)."""
        groups = [(self.vision_tower.visual_projection,)]
        for layer in self.vision_tower.vision_model.encoder.layers:
            groups += _layer_linears(layer.self_attn, layer.mlp.fc1, layer.mlp.fc2)
        return groups

    def get_image_prefix(self, pixel_values=None, image_embeds=None) -> tuple:
        """Returns (image_embeds, prefix embeddings of shape (batch, num_image_tokens, token embedding width))."""
        if pixel_values is not None and image_embeds is not None:
            raise ValueError("Pass pixel_values or image_embeds, not both: MODA would use only one of them.")
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError(
                    "MODA needs an image: pass pixel_values (from MODAProcessor) or precomputed image_embeds."
                )
            image_embeds = self.get_image_features(pixel_values)
        if image_embeds.ndim != 2 or image_embeds.shape[-1] != self.config.image_embed_dim:
            raise ValueError(
                f"image_embeds must have shape (batch, {self.config.image_embed_dim}) to match the projector, got "
                f"{tuple(image_embeds.shape)}."
            )
        image_embeds = image_embeds.to(device=self.device, dtype=self.projector.linear_1.weight.dtype)
        return image_embeds, self.projector(image_embeds)

    def merge_image_prefix(self, prefix, input_ids, attention_mask=None, labels=None, pads_first=False) -> tuple:
        """
        Returns the decoder's inputs_embeds, attention_mask and labels for [prefix] + tokens.

        Left padding (always, with `pads_first`) is moved in front of the image prefix, so no pad ever sits
        between the prefix and the text: batched and one-by-one generation agree. Right padding stays at the end.
        """
        batch, num_prefix = prefix.shape[:2]
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}.")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got "
                f"{tuple(attention_mask.shape)}."
            )
        if input_ids.shape[0] != batch:
            raise ValueError(f"{batch} images but {input_ids.shape[0]} token sequences: the batch sizes must match.")
        max_positions = self.config.text_config.max_position_embeddings
        if num_prefix + input_ids.shape[1] > max_positions:
            what = "training sequence (prompt and description)" if labels is not None else "prompt"
            raise ValueError(
                f"The {what} is {input_ids.shape[1]} tokens; with {num_prefix} image token(s) that exceeds the "
                f"decoder's {max_positions} positions."
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        token_embeds = self.get_input_embeddings()(input_ids)
        embeds = torch.cat([prefix.to(token_embeds.dtype), token_embeds], dim=1)
        mask = torch.cat([attention_mask.new_ones(batch, num_prefix), attention_mask], dim=1)
        if labels is not None:
            labels = torch.cat([labels.new_full((batch, num_prefix), -100), labels], dim=1)

        if pads_first or bool((attention_mask[:, 0] == 0).any()):
            # A stable sort on the mask puts each row's pads first and keeps the order of everything else.
            order = torch.sort(mask, dim=1, stable=True).indices
            embeds = embeds.gather(1, order[..., None].expand_as(embeds))
            mask = mask.gather(1, order)
            if labels is not None:
                labels = labels.gather(1, order)
        return embeds, mask, labels

    # --- forward / generate -------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        pixel_values: Optional[torch.FloatTensor] = None,
        attention_mask: Optional[torch.LongTensor] = None,
        image_embeds: Optional[torch.FloatTensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        **kwargs,
    ) -> MODACausalLMOutput:
        """
        With pixel_values (or image_embeds): the image prefix is put in front of `input_ids` ([BOS] + prompt +
        description) and `labels` (-100 where no loss is wanted) get -100 for the prefix. Without an image this
        is a decoding step that continues from a cache (as `generate` calls it).
        """
        if pixel_values is not None or image_embeds is not None:
            if input_ids is None:
                raise ValueError("input_ids are required with an image: at least [BOS] (MODAProcessor adds it).")
            image_embeds, prefix = self.get_image_prefix(pixel_values, image_embeds)
            inputs_embeds, attention_mask, labels = self.merge_image_prefix(prefix, input_ids, attention_mask, labels)
            input_ids = None
        elif inputs_embeds is None and not _has_cache(kwargs):
            raise ValueError(
                "MODA needs an image: pass pixel_values (from MODAProcessor) or precomputed image_embeds."
            )
        kwargs.pop("return_dict", None)
        outputs = self.language_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            labels=labels,
            return_dict=True,
            **kwargs,
        )
        return MODACausalLMOutput(**outputs, image_embeds=image_embeds, attention_mask=attention_mask)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: Optional[torch.FloatTensor] = None,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.LongTensor] = None,
        image_embeds: Optional[torch.FloatTensor] = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """
        Describes the image(s). `input_ids` ([BOS] + optional prompt, as MODAProcessor makes them) default to
        [BOS]. Returns only the new tokens; decode them with `processor.batch_decode(..., skip_special_tokens=True)`.
        All of `GenerationMixin.generate`'s options work (greedy, beam search, sampling, caches).
        """
        if "inputs_embeds" in generate_kwargs:
            raise ValueError("MODA builds inputs_embeds from the image itself; pass pixel_values or image_embeds.")
        image_embeds, prefix = self.get_image_prefix(pixel_values, image_embeds)
        if input_ids is None:
            bos = self.generation_config.bos_token_id
            if bos is None:
                bos = self.config.text_config.bos_token_id
            input_ids = torch.full((prefix.shape[0], 1), bos, dtype=torch.long, device=prefix.device)
        input_ids = input_ids.to(prefix.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(prefix.device)
        inputs_embeds, attention_mask, _ = self.merge_image_prefix(prefix, input_ids, attention_mask, pads_first=True)
        config = self._call_generation_config(generate_kwargs.get("generation_config"))
        max_new_tokens = self._max_new_tokens(inputs_embeds.shape[1], config, generate_kwargs)
        generate_kwargs.pop("max_length", None)
        if generate_kwargs.get("generation_config") is not None:  # the length goes into the call's own config:
            config.max_new_tokens = max_new_tokens  # with kwargs besides it, transformers 5 warns of a deprecation
            generate_kwargs["generation_config"] = config
            generate_kwargs.pop("max_new_tokens", None)
        else:
            generate_kwargs["max_new_tokens"] = max_new_tokens
        greedy = self._plain_greedy_settings(config, generate_kwargs)
        if greedy is not None:
            return self._greedy_decode(inputs_embeds, attention_mask, **greedy)
        return super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generate_kwargs)

    def _call_generation_config(self, generation_config):
        """
        A copy of the generation config a generate call runs with: the model's, or the call's own with the settings
        it leaves at their defaults taken from the model's (as GenerationMixin does, e.g. the EOS and pad tokens).
        """
        if generation_config is None:
            return copy.deepcopy(self.generation_config)
        config, defaults = copy.deepcopy(generation_config), GenerationConfig()
        for name, model_value in self.generation_config.to_dict().items():
            if name.startswith("_") or name == "transformers_version":
                continue
            default = getattr(defaults, name, None)
            if getattr(config, name, None) == default and model_value != default:
                setattr(config, name, model_value)
        return config

    # --- fast greedy decoding -----------------------------------------------------------------------------------
    # Plain greedy decoding (the pipeline's and the CLI's case) skips GenerationMixin: a key/value cache
    # preallocated for the whole caption and a tight loop over OPT's layers. Per step that is about 15 ops a layer
    # instead of GenerationMixin's and the cache classes' several hundred small ops, which matters most where a
    # small op is expensive (batch 1, busy CPUs). The arithmetic is OPT's own, in the same order, with the Linear
    # layers on oneDNN's packed kernels (`_PackedLinears`: results within rounding of F.linear's): the tests check
    # that in fp32 the tokens are those GenerationMixin gives. In bf16 the packed products and the fp32 attention of
    # one new token round differently from GenerationMixin's ops, so a near-tie can go the other way (also between
    # batch sizes); benchmarks/precision_agreement.py measures how often a trained model's captions agree. Any other
    # option (sampling, beams, processors, streamers, use_cache=False, outputs beyond the token ids), autocast and
    # forward hooks go to GenerationMixin; `model.fast_greedy = False` sends everything there (and makes inference
    # image features come from CLIP's own forward too).

    fast_greedy = True

    def train(self, mode: bool = True):
        # The packed copies of the weights (`_PackedLinears`) serve inference; a model that trains gives their
        # memory back (at full size ~850 MB in fp32), and an evaluation packs its weights anew.
        if mode:
            _PackedLinears.release(self.modules())
        return super().train(mode)

    def _plain_greedy_settings(self, config, generate_kwargs: dict) -> Optional[dict]:
        """The settings of the fast greedy loop, or None when the options need GenerationMixin. `config`: the call's
        generation config (`_call_generation_config`)."""
        if not self.fast_greedy or self.training or not isinstance(self.language_model, OPTForCausalLM):
            return None
        if not _runs_as_written(self, self.device.type):  # hooks on the model itself too: GenerationMixin calls it
            return None
        kwargs = {name: value for name, value in generate_kwargs.items() if name != "generation_config"}
        if config.update(**kwargs):  # streamer, logits_processor, stopping_criteria, assistant_model, ...
            return None
        for name, value in config.to_diff_dict().items():
            if name in _GREEDY_NEUTRAL_SETTINGS:
                continue
            if name not in _PLAIN_GREEDY_VALUES or value != _PLAIN_GREEDY_VALUES[name]:
                return None
        if not config.max_new_tokens or config.max_new_tokens < 1:
            return None
        eos = config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else None)
        if eos and pad is None:
            return None
        return dict(
            max_new_tokens=int(config.max_new_tokens),
            min_new_tokens=int(config.min_new_tokens or 0),
            eos_token_ids=eos,
            pad_token_id=pad,
        )

    @torch.no_grad()
    def _greedy_decode(self, inputs_embeds, attention_mask, max_new_tokens, min_new_tokens, eos_token_ids, pad_token_id):
        """Greedy decoding from the merged (left-padded) embeddings; returns the new tokens as GenerationMixin does."""
        batch, prompt_length = attention_mask.shape
        device = inputs_embeds.device
        # Which cache slots each row may attend to: its prompt without the pads, then every generated token.
        key_mask = torch.ones(batch, prompt_length + max_new_tokens, dtype=torch.bool, device=device)
        key_mask[:, :prompt_length] = attention_mask.bool()
        padded = not bool(key_mask.all())
        caches = [None] * len(self.language_model.model.decoder.layers)

        # The prompt: OPT's positions count only the real tokens (pads get position -1, as in OPT).
        positions = attention_mask.long().cumsum(1) * attention_mask.long() - 1
        prompt_mask = None
        if padded:
            causal = torch.ones(prompt_length, prompt_length, dtype=torch.bool, device=device).tril()
            # A pad attends to itself too: no row is fully masked, so no NaN reaches the cache.
            prompt_mask = (causal & key_mask[:, None, None, :prompt_length]) | torch.eye(
                prompt_length, dtype=torch.bool, device=device
            )
        decoder = self.language_model.model.decoder
        linears = _PackedLinears(
            self._decoding_linears(), output_scales={layer.self_attn.q_proj: layer.self_attn.scaling for layer in decoder.layers}
        )
        plans = [_OPTLayerPlan.of(layer, linears) for layer in decoder.layers]
        projections = tuple(None if module is None else linears.linear((module,))
                            for module in (decoder.project_in, decoder.project_out))
        lm_head = linears.linear((self.language_model.lm_head,))
        first_max_index = _first_max_function(self.language_model.lm_head.out_features)
        slots = prompt_length + max_new_tokens
        hidden = self._decoder_pass(inputs_embeds, positions, caches, 0, prompt_mask, slots, plans, projections)
        next_positions = attention_mask.long().sum(1, keepdim=True)

        eos = torch.tensor(eos_token_ids, dtype=torch.long, device=device)
        new_tokens = torch.full((batch, max_new_tokens), pad_token_id if pad_token_id is not None else 0, device=device)
        unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        embed_tokens = decoder.embed_tokens
        for step in range(max_new_tokens):
            logits = lm_head(hidden[:, -1])
            if step < min_new_tokens and len(eos_token_ids):
                logits.index_fill_(-1, eos, -float("inf"))
            tokens = first_max_index(logits)
            if len(eos_token_ids):
                tokens = torch.where(unfinished, tokens, pad_token_id)
                unfinished &= ~torch.isin(tokens, eos)
            new_tokens[:, step] = tokens
            if step + 1 == max_new_tokens or (len(eos_token_ids) and not bool(unfinished.any())):
                return new_tokens[:, : step + 1]
            end = prompt_length + step + 1
            step_mask = key_mask[:, None, None, :end] if padded else None
            hidden = self._decoder_pass(
                embed_tokens(tokens[:, None]), next_positions, caches, end - 1, step_mask, slots, plans, projections
            )
            next_positions = next_positions + 1
        return new_tokens

    def _decoding_linears(self) -> list:
        """The Linear layers the fast greedy loop runs, grouped by shared input: each decoder layer's (q, k and v
        together), OPT's projections, the lm_head."""
        decoder = self.language_model.model.decoder
        groups = [(linear,) for linear in (decoder.project_in, decoder.project_out, self.language_model.lm_head)
                  if linear is not None]
        for layer in decoder.layers:
            groups += _layer_linears(layer.self_attn, layer.fc1, layer.fc2)
        return groups

    def _decoder_pass(self, embeds, positions, caches, start, attention_mask, slots, plans, projections):
        """OPT's decoder on `embeds` at cache slots start..; fills the caches (of `slots` slots, made on the first
        pass). `projections`: the functions of OPT's project_in and project_out (None where it has none)."""
        decoder = self.language_model.model.decoder
        project_in, project_out = projections
        hidden = embeds if project_in is None else project_in(embeds)
        hidden = hidden + F.embedding(positions + decoder.embed_positions.offset, decoder.embed_positions.weight)
        for index, plan in enumerate(plans):
            hidden = plan.forward(hidden, caches, index, start, attention_mask, slots)
        if decoder.final_layer_norm is not None:
            hidden = decoder.final_layer_norm(hidden)
        return hidden if project_out is None else project_out(hidden)

    def _max_new_tokens(self, input_length: int, config, generate_kwargs: dict) -> int:
        """
        The number of new tokens to write, capped where the decoder runs out of positions. A length given to the
        call wins over the generation config's, and max_new_tokens over max_length; max_length counts the whole
        sequence, image prefix and prompt included (`input_length` positions), as in transformers.
        """
        new_tokens, max_length = generate_kwargs.get("max_new_tokens"), generate_kwargs.get("max_length")
        if new_tokens is not None and max_length is not None:
            logger.warning(f"Both max_new_tokens ({new_tokens}) and max_length ({max_length}) were given: "
                           f"max_new_tokens takes precedence.")
        if new_tokens is None and max_length is None:
            new_tokens, max_length = config.max_new_tokens, config.max_length
            if new_tokens is None and max_length is None:  # transformers 5 leaves both unset: its default length
                max_length = 20
        requested = new_tokens if new_tokens is not None else max_length - input_length
        if requested < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for new tokens: the image prefix and the prompt already take "
                f"{input_length} positions. Pass max_new_tokens instead." if new_tokens is None else
                f"max_new_tokens must be at least 1, got {new_tokens}."
            )
        # The last new token is never fed back, so it needs no position of its own.
        room = self.config.text_config.max_position_embeddings - input_length + 1
        if requested > room:
            logger.warning(f"Asked for {requested} new tokens; the decoder has room for {room}: generating {room}.")
        return min(requested, room)

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, **kwargs):
        # Without a cache every step re-reads the whole sequence: the image prefix and prompt embeddings followed
        # by the tokens generated so far. (With a cache only the first step needs the embeddings.)
        use_cache = kwargs.get("use_cache", True)
        if inputs_embeds is not None and use_cache is False and input_ids.shape[1] > 0:
            inputs_embeds = torch.cat([inputs_embeds, self.get_input_embeddings()(input_ids)], dim=1)
            kwargs["is_first_iteration"] = True
            kwargs.pop("cache_position", None)
            input_ids = input_ids[:, :0]
        return super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)


MODAForConditionalGeneration.register_for_auto_class("AutoModel")


# Generation settings that cannot change what greedy decoding writes (sampling and beam settings, special tokens,
# lengths, which _greedy_decode applies itself) ...
_GREEDY_NEUTRAL_SETTINGS = {
    "max_new_tokens", "max_length", "min_new_tokens", "bos_token_id", "eos_token_id", "pad_token_id",
    "decoder_start_token_id", "temperature", "top_k", "top_p", "typical_p", "min_p", "epsilon_cutoff", "eta_cutoff",
    "length_penalty", "early_stopping", "transformers_version", "_from_model_config", "_commit_hash",
    "_original_object_hash", "compile_config", "disable_compile",
}
# ... and the values other settings must have for the fast greedy loop (any other value needs GenerationMixin).
_PLAIN_GREEDY_VALUES = {
    "use_cache": True, "do_sample": False, "num_beams": 1, "num_beam_groups": 1, "num_return_sequences": 1,
    "output_attentions": False, "output_hidden_states": False, "output_scores": False, "output_logits": False,
    "return_dict_in_generate": False, "repetition_penalty": 1.0, "min_length": 0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "diversity_penalty": 0.0, "renormalize_logits": False, "low_memory": None,
}


class _OPTLayerPlan(NamedTuple):
    """
    One OPTDecoderLayer as the fast greedy loop runs it: its functions and settings, resolved once per generate
    call, so a decoding step does only the layer's ops (at batch 1 a step's module calls, attribute and pack lookups
    had cost 3-8 % of a bf16 caption).
    """

    pre_norm: bool  # OPT-125m normalises before the attention and the MLP, OPT-350m after them
    attention_norm: Callable
    qkv: Callable  # hidden -> (query, key, value)
    scaling: float  # of the query before the product, as OPT does (SDPA's math kernel would scale q and k by its root)
    heads: int
    out: Callable  # (hidden, residual) -> residual + out_proj(hidden)
    mlp_norm: Callable
    mlp: Callable  # (hidden, residual) -> residual + fc2(activation(fc1(hidden)))

    @classmethod
    def of(cls, layer: nn.Module, linears: "_PackedLinears") -> "_OPTLayerPlan":
        attention = layer.self_attn
        return cls(
            pre_norm=layer.do_layer_norm_before,
            attention_norm=_layer_norm_function(layer.self_attn_layer_norm),
            qkv=linears.linear(_qkv(attention)),
            scaling=1.0 if attention.q_proj in linears.scaled_outputs else attention.scaling,
            heads=attention.num_heads,
            out=linears.linear_add(attention.out_proj),
            mlp_norm=_layer_norm_function(layer.final_layer_norm),
            mlp=linears.mlp(layer.fc1, layer.activation_fn, layer.fc2),
        )

    def forward(self, hidden: torch.Tensor, caches: list, index: int, start: int, attention_mask, slots: int):
        """
        The layer (inference) on `hidden`, its keys and values written into `caches[index]` at slots start.. (made on
        the first pass: (batch, heads, slots, head_dim) each, in the keys' dtype).
        """
        batch, length, width = hidden.shape
        residual = hidden
        if self.pre_norm:
            hidden = self.attention_norm(hidden)
        query, key, value = self.qkv(hidden)
        if self.scaling != 1.0:  # 1.0 where the scale is inside the packed q weights
            query = query * self.scaling
        query = query.view(batch, length, self.heads, -1).transpose(1, 2)
        key = key.view(batch, length, self.heads, -1).transpose(1, 2)
        value = value.view(batch, length, self.heads, -1).transpose(1, 2)
        if caches[index] is None:
            shape = (batch, self.heads, slots, key.shape[-1])
            caches[index] = (key.new_empty(shape), value.new_empty(shape))
        key_cache, value_cache = caches[index]
        end = start + length
        key_cache[:, :, start:end] = key
        value_cache[:, :, start:end] = value
        if length == 1 and batch > 1 and query.dtype == torch.bfloat16 and query.device.type == "cpu":
            # One new token against the cache: in bf16, torch's CPU attention kernel takes about 4x as long as two
            # small products in fp32 at batch 16 (a tenth of a bf16 caption's time); at batch 1 it is the faster
            # (46 against 62 us a layer, -3 % of a batch-1 caption).
            scores = torch.matmul(query.float(), key_cache[:, :, :end].transpose(-1, -2).float())
            if attention_mask is not None:
                scores = scores.masked_fill(~attention_mask, float("-inf"))
            hidden = torch.matmul(scores.softmax(-1), value_cache[:, :, :end].float()).to(key.dtype)
        else:
            hidden = F.scaled_dot_product_attention(
                query,
                key_cache[:, :, :end],
                value_cache[:, :, :end],
                attn_mask=attention_mask,
                is_causal=attention_mask is None and length > 1,
                scale=1.0,  # the query is scaled
            )
        hidden = self.out(hidden.transpose(1, 2).reshape(batch, length, width), residual)
        if not self.pre_norm:
            hidden = self.attention_norm(hidden)
        residual = hidden
        if self.pre_norm:
            hidden = self.mlp_norm(hidden)
        hidden = self.mlp(hidden, residual)
        if not self.pre_norm:
            hidden = self.mlp_norm(hidden)
        return hidden


@functools.lru_cache(maxsize=None)
def _first_max_function(vocab_size: int) -> Callable:
    """
    A function logits (batch, vocab_size) -> each row's first maximal index, as `logits.max(-1).indices` (and argmax)
    give it. torch's max with indices reads a long row one element at a time (0.6-0.8 ms at batch 16 x 50272 in bf16,
    argmax 1.5 ms), its amax is vectorised (0.1 ms). So where the vocabulary splits into equal chunks of 64-2048,
    the chunks' maxima (amax) tell the first chunk that holds the row's maximum, and max runs on that chunk alone:
    0.23 against 0.79 ms at batch 16 and 52 against 86 us at batch 1 (OPT's 50272 = 32 x 1571).
    """
    width = next((width for width in range(min(2048, vocab_size // 2), 63, -1) if vocab_size % width == 0), None)
    if width is None:
        return lambda logits: logits.max(-1).indices

    def chunked(logits):
        chunks = logits.view(logits.shape[0], vocab_size // width, width)
        first = chunks.amax(-1).max(-1).indices  # max over the chunk maxima: the first chunk with the row's maximum
        rows = torch.arange(logits.shape[0], device=logits.device)
        return first * width + chunks[rows, first].max(-1).indices

    return chunked


def _layer_norm_function(norm: nn.Module) -> Callable:
    """An nn.LayerNorm as one op (at batch 1 its module call costs about as much again as the op itself)."""
    if type(norm) is not nn.LayerNorm:
        return norm
    weight = None if norm.weight is None else norm.weight.detach()
    bias = None if norm.bias is None else norm.bias.detach()
    return functools.partial(torch.layer_norm, normalized_shape=norm.normalized_shape, weight=weight, bias=bias,
                             eps=norm.eps)


def _clip_layer_pass(layer: nn.Module, hidden: torch.Tensor, class_token_only: bool, linears) -> torch.Tensor:
    """One CLIPEncoderLayer (inference); with `class_token_only`, only the class token's output is computed."""
    attention = layer.self_attn
    batch, length, width = hidden.shape
    query, key, value = linears.linear(_qkv(attention))(layer.layer_norm1(hidden))
    if class_token_only:  # its keys and values still come from every token
        hidden, query = hidden[:, :1].contiguous(), query[:, :1]

    def heads(states):
        return states.reshape(batch, -1, attention.num_heads, attention.head_dim).transpose(1, 2)

    attended = F.scaled_dot_product_attention(heads(query), heads(key), heads(value), scale=attention.scale)
    hidden = linears.linear_add(attention.out_proj)(attended.transpose(1, 2).reshape(batch, -1, width), hidden)
    mlp = linears.mlp(layer.mlp.fc1, layer.mlp.activation_fn, layer.mlp.fc2)
    return mlp(layer.layer_norm2(hidden), hidden)


def _qkv(attention: nn.Module) -> tuple:
    """An attention's q, k and v projections: one group of _PackedLinears (they read the same input)."""
    return attention.q_proj, attention.k_proj, attention.v_proj


def _layer_linears(attention: nn.Module, fc1: nn.Module, fc2: nn.Module) -> list:
    """A transformer layer's Linear layers as _PackedLinears groups: (q, k, v), the output projection, fc1, fc2."""
    return [_qkv(attention), (attention.out_proj,), (fc1,), (fc2,)]


def _packed_dtypes() -> tuple:
    """Dtypes oneDNN's packed kernels take here: fp32, and bf16 where the CPU has the instructions for it (oneDNN
    refuses to pack bf16 otherwise). None where oneDNN is missing or switched off (torch.backends.mkldnn.enabled)."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return ()
    return (torch.float32, torch.bfloat16) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)


_QUICK_GELU = 1.702  # CLIP's quick GELU: y * sigmoid(1.702 y)


def _value_sample(tensors: tuple, stride: int = 509) -> torch.Tensor:
    """
    A strided sample of the tensors' values, to see writes through `.data` (which bump no version counter). The
    stride is at most a row, so a write to any whole row of a weight is seen. The bits are compared (a sum can miss
    two values swapped; NaN never equals itself, and 0.0 equals -0.0). At full size sampling every pack takes about
    7 ms a generate call (a cache line per row: memory latency), against ~40 ms to read every weight.
    """
    sample = torch.cat([tensor.detach().reshape(-1)[:: min(stride, tensor.shape[-1])] for tensor in tensors])
    return sample.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[sample.element_size()])


class _PackedLinears:
    """
    The inference paths' Linear layers (the fast greedy loop's decoder and lm_head, the vision tower in
    `_inference_image_features`) on oneDNN, with their weights re-laid out (packed) for its GEMM kernels.

    Decoding reads every decoder weight once per token. Measured on a 2-core AVX-512 CPU over OPT-125m's Linear
    layers and lm_head (1 thread), a step takes 21 % less time than with F.linear at batch 1 in fp32, 39 % less in
    bf16, and about 45 % less at batch 16. Layers that read the same input (an attention's q, k and v projections)
    are packed stacked and run as one product: another 17 % off those layers at batch 1 in fp32 (2 threads). The
    price is a packed copy of the weights in memory. Packing takes about a second, so packs are kept between calls
    (outside the model, which therefore still copies and pickles as before) and checked at every call: a weight that
    is another tensor, or changed in place (its version counter, or a strided sample of its values for writes through
    `.data`), is packed again. The sample sees a write through `.data` to a whole row, not one that leaves the sampled
    elements alone (all but a row's first, say): after such a write, `model.train().eval()` gives the packs back and
    the next call packs anew.
    """

    # first layer of a group -> (weights and biases, versions, value sample, scales, packed stacked weight, bias)
    _cache = weakref.WeakKeyDictionary()

    def __init__(self, groups, quick_gelu_mlps=(), output_scales=None):
        """
        `groups`: tuples of Linear layers that share their input (most are single layers). `quick_gelu_mlps`:
        (fc1, fc2) pairs with a quick GELU between them; in bf16 their activation runs inside fc1's product (`mlp`).
        `output_scales`: {layer: s} for outputs the caller multiplies by s. Where s is a power of two and the layer
        is packed, s goes into its packed weight and bias (the same values: scaling by a power of two rounds
        nothing, short of subnormal numbers), the layer's outputs come out scaled, and the layer is in
        `scaled_outputs`.
        """
        self.packed = {}
        self.swish_inputs = set()  # fc1 layers whose pack is scaled for swish (see `mlp`)
        self.scaled_outputs = {}  # layer -> the power of two its outputs come out multiplied by
        dtypes = _packed_dtypes()

        def packable(modules):  # other layers (e.g. int8 dynamically quantized ones) keep their own kernels
            return all(
                type(module) is nn.Linear and module.weight.device.type == "cpu" and module.weight.dtype in dtypes
                for module in modules
            ) and len({module.weight.dtype for module in modules}) == 1

        scales = {}  # module -> (weight scale, bias scale)
        for fc1, fc2 in quick_gelu_mlps:
            # Only in bf16: scaling re-rounds the weights, and fp32 keeps exactly the arithmetic of the plain path.
            if packable((fc1, fc2)) and fc1.weight.dtype == torch.bfloat16 and fc1.bias is not None:
                scales[fc1], scales[fc2] = (_QUICK_GELU, _QUICK_GELU), (1 / _QUICK_GELU, 1.0)
                self.swish_inputs.add(fc1)
        for group in groups:
            if not packable(group):
                continue
            for module in group:
                scale = (output_scales or {}).get(module)
                # at most 1 (OPT's is head_dim ** -0.5): a larger power of two could overflow the scaled weights
                if scale is not None and module not in scales and math.frexp(scale)[0] == 0.5 and scale <= 1:
                    scales[module] = (scale, scale)
                    self.scaled_outputs[module] = scale
            self.packed[group] = self._pack(group, tuple(scales.get(module, (1.0, 1.0)) for module in group))

    @classmethod
    def _pack(cls, group: tuple, scales: tuple) -> tuple:
        """The packed stacked weight and the bias of `group`, each layer's weight and bias multiplied by its
        (weight scale, bias scale) in `scales`."""
        # Weights and biases alike: either may change alone (a bias-only fine-tune, a partial load_state_dict).
        tensors = tuple(tensor for module in group for tensor in (module.weight, module.bias) if tensor is not None)
        versions, sample = tuple(tensor._version for tensor in tensors), _value_sample(tensors)
        entry = cls._cache.get(group[0])
        if entry is None or len(entry[0]) != len(tensors) or any(a is not b for a, b in zip(entry[0], tensors)) \
                or entry[1] != versions or entry[3] != scales or not torch.equal(entry[2], sample):

            def scaled(tensor, scale):
                return tensor.detach() * scale if scale != 1.0 else tensor.detach()

            stacked = torch.cat([scaled(module.weight, weight_scale) for module, (weight_scale, _) in zip(group, scales)])
            if any(module.bias is not None for module in group):
                bias = torch.cat([
                    scaled(module.bias, bias_scale) if module.bias is not None else stacked.new_zeros(module.out_features)
                    for module, (_, bias_scale) in zip(group, scales)
                ])
            else:
                bias = None
            # No batch-size hint: one layout serves batch 1 and 16 alike (an fp32 batch-1 layout is slow at 16).
            entry = (tensors, versions, sample, scales, torch.ops.mkldnn._reorder_linear_weight(stacked), bias)
            cls._cache[group[0]] = entry
        return entry[4:]

    @classmethod
    def release(cls, modules) -> None:
        """Forgets the packs of these modules (their memory goes back when nothing else holds them)."""
        for module in modules:
            cls._cache.pop(module, None)

    def linear(self, group: tuple, activation: Optional[nn.Module] = None) -> Callable:
        """
        A function hidden -> the outputs of the layers of `group` on `hidden` (one tensor for a single layer, a
        tuple for a stacked group), with `activation` (single layers only) applied; on oneDNN a ReLU runs inside
        the product. Built once per call of the model, so the decoding loop pays no lookups per step.
        """
        packed = self.packed.get(group)
        scales = [self.scaled_outputs.get(module) for module in group]

        def plain(hidden):  # an input not in the pack's dtype: the modules do (or refuse) what they always do
            outputs = [module(hidden) if scale is None else module(hidden) * scale for module, scale in zip(group, scales)]
            if len(group) > 1:
                return tuple(outputs)
            return outputs[0] if activation is None else activation(outputs[0])

        if packed is None:
            return plain
        weight, bias = packed
        relu = isinstance(activation, nn.ReLU)
        sizes = [module.out_features for module in group]

        def fused(hidden):
            if hidden.dtype != weight.dtype:
                return plain(hidden)
            output = torch.ops.mkldnn._linear_pointwise(hidden, weight, bias, "relu" if relu else "none", [], "")
            if len(group) > 1:
                return output.split(sizes, dim=-1)
            return output if activation is None or relu else activation(output)

        return fused

    def linear_add(self, module: nn.Module) -> Callable:
        """A function (hidden, residual) -> residual + module(hidden); on oneDNN the sum runs inside the product."""
        packed = self.packed.get((module,))

        def plain(hidden, residual):
            return residual + module(hidden)

        if packed is None:
            return plain
        weight, bias = packed

        def fused(hidden, residual):
            if hidden.dtype != weight.dtype or residual.dtype != weight.dtype:
                return plain(hidden, residual)
            return torch.ops.mkldnn._linear_pointwise.binary(hidden, residual, weight, bias, "add")

        return fused

    def mlp(self, fc1: nn.Module, activation: nn.Module, fc2: nn.Module) -> Callable:
        """
        A function (hidden, residual) -> residual + fc2(activation(fc1(hidden))). A quick-GELU MLP packed for it
        (bf16) runs the activation inside fc1's product as oneDNN's swish: quick_gelu(y) = y * sigmoid(1.702 y) =
        swish(1.702 y) / 1.702, with 1.702 folded into fc1's packed weight and bias and 1 / 1.702 into fc2's weight.
        In bf16 the three elementwise passes over the (batch x 50 x 3072) activations took ~15 % of the vision
        tower's time.
        """
        second = self.linear_add(fc2)
        if fc1 not in self.swish_inputs:
            first = self.linear((fc1,), activation)
            return lambda hidden, residual: second(first(hidden), residual)
        weight, bias = self.packed[(fc1,)]

        def swish(hidden, residual):
            if hidden.dtype != weight.dtype or residual.dtype != weight.dtype:
                # as in `linear`; fc2's pack is scaled for swish, so both products take the modules
                return residual + fc2(activation(fc1(hidden)))
            return second(torch.ops.mkldnn._linear_pointwise(hidden, weight, bias, "swish", [], ""), residual)

        return swish

    def __call__(self, module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """module(hidden), on oneDNN where the module is packed."""
        return self.linear((module,))(hidden)


def _runs_as_written(module: nn.Module, device_type: str) -> bool:
    """
    Whether a fast inference path may stand in for `module`'s forward: not under autocast, whose casts its packed
    products would not follow, and no forward hooks on the module or inside it, which it would skip (it calls few
    modules).
    """
    try:
        autocast = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 (transformers 4.57 takes 2.2) has no device-type argument
        autocast = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    if autocast:
        return False
    hooks = nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return False
    return not any(child._forward_hooks or child._forward_pre_hooks for child in module.modules())


def _has_cache(kwargs: dict) -> bool:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None:
        return False
    return cache.get_seq_length() > 0 if hasattr(cache, "get_seq_length") else True


__all__ = ["MODAConfig", "MODAProjector", "MODAPreTrainedModel", "MODAForConditionalGeneration", "MODACausalLMOutput"]
