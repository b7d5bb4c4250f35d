"""MODA: a frozen CLIP vision tower, a small projector and an OPT decoder that writes the description.

Where an image becomes a token:

    pixel_values --CLIP vision tower--> image embedding (512-d, CLIP's projected pooled output)
                 --MODAProjector------> `num_image_tokens` prefix embeddings (the decoder's token embedding width)
                 --merge_image_prefix--> [prefix] + [BOS] + [prompt] + [description] embeddings
                 --OPT decoder---------> next-token logits

This file travels to the Hub with the weights (``trust_remote_code``): it imports only torch, transformers and
the other MODA files, by relative import when loaded as remote code. The fast CPU path for plain greedy decoding and
inference image features lives in fast_generation_moda.py; `model.fast_greedy = False` switches it off.
"""

import copy
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from transformers import (
    AutoConfig,
    CLIPVisionModelWithProjection,
    GenerationConfig,
    GenerationMixin,
    OPTForCausalLM,
    PreTrainedModel,
)
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import logging

# Importing the processor, the pipeline and the fast path here makes every save_pretrained (Trainer's and
# push_to_hub's too) copy all the MODA files next to the weights. image_io_moda is the processor's import, named here
# too: for a local folder, transformers 4.x copies only the loaded file's own relative imports into its module cache,
# and the processor's import of it would then fail.
try:
    from .configuration_moda import MODAConfig
    from .fast_generation_moda import (fast_image_features, greedy_generate, redo_on_the_plain_path,
                                       pack_for_inference, release_packed_weights)
    from .image_io_moda import ImageInputError  # noqa: F401
    from .pipeline_moda import MODAImageToTextPipeline
    from .processing_moda import MODAProcessor
except ImportError:
    from configuration_moda import MODAConfig
    from fast_generation_moda import (fast_image_features, greedy_generate, redo_on_the_plain_path,
                                      pack_for_inference, release_packed_weights)
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
# generate options with which transformers 5 loads and runs code the caller names (a custom_generate folder or Hub
# repo, or a decoding mode moved to one): a caller of generate, e.g. a pipeline's or an endpoint's user, must never
# choose code to run, and MODA does not need them (its generation is its own).
REFUSED_GENERATE_OPTIONS = ("custom_generate", "trust_remote_code")
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


def load_clip_vision(vision_model: str, **kwargs) -> CLIPVisionModelWithProjection:
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
    # Towers come from anyone (a Hub id, a folder from `moda adapt-vision` or a stranger): safetensors only, as for
    # MODA's own weights, since a pickle file (pytorch_model.bin) can run code when unpickled.
    kwargs.setdefault("use_safetensors", True)
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
        # The extremes are NaN or infinite where any value is: one vectorised pass, far cheaper than isfinite().all().
        if pixel_values.numel() and not all(bool(extreme.isfinite()) for extreme in torch.aminmax(pixel_values)):
            raise ValueError("pixel_values contain NaN or infinite values.")
        pixel_values = pixel_values.to(device=self.device, dtype=self.vision_tower.dtype)
        if self.fast_greedy:  # None where CLIP's forward must run (gradients, autocast, hooks, ...)
            image_embeds = fast_image_features(self.vision_tower, pixel_values, self.pack_weights)
            if image_embeds is not None:
                return image_embeds
        return self.vision_tower(pixel_values=pixel_values).image_embeds

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
    @redo_on_the_plain_path  # where a private oneDNN op fails midway, the whole call runs again on the plain path
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
        All of `GenerationMixin.generate`'s options work (greedy, beam search, sampling, caches) but those that run
        code the caller names (`REFUSED_GENERATE_OPTIONS`), which raise a ValueError.
        """
        refused = [name for name in REFUSED_GENERATE_OPTIONS if generate_kwargs.get(name) is not None]
        if refused:
            raise ValueError(f"MODA's generate refuses {refused}: they make transformers load and run code the caller "
                             f"chooses (a custom_generate folder or Hub repo), which must never run; MODA has its own "
                             f"generation.")
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
        if self.fast_greedy:  # None where the options need GenerationMixin
            new_tokens = greedy_generate(self, inputs_embeds, attention_mask, config, generate_kwargs)
            if new_tokens is not None:
                return new_tokens
        return super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generate_kwargs)

    def load_custom_generate(self, pretrained_model_name_or_path=None, trust_remote_code=None, **kwargs):
        """
        Never loads a custom_generate/generate.py: raises OSError, which transformers reads as "this folder has none".

        transformers 4.57's from_pretrained calls this on every load and counts a local folder as trusted, so a MODA
        folder's custom_generate/generate.py ran with trust_remote_code=False and replaced `generate` (and with it
        the REFUSED_GENERATE_OPTIONS check); 5.x calls it from from_pretrained with trust_remote_code=True, and both
        call it from GenerationMixin.generate for `custom_generate=`. Both catch OSError as "no custom generate
        function". MODA's generation is its own: none is ever loaded, whatever the folder or the flag.
        """
        raise OSError(f"MODA never loads a custom generate function (custom_generate/generate.py), also not from "
                      f"{str(pretrained_model_name_or_path)!r}: MODA's generation is its own.")

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

    # --- the fast CPU path (fast_generation_moda.py) --------------------------------------------------------------
    # Plain greedy decoding and inference image features run on a fast path that gives GenerationMixin's tokens
    # (within rounding in bf16, see fast_generation_moda.py); any other option, autocast and forward hooks take
    # GenerationMixin and CLIP's forward. `model.fast_greedy = False` sends everything there. Where a private oneDNN
    # op it uses is missing or fails, the fast path turns itself off for the process (one warning).

    _fast_greedy = True

    @property
    def fast_greedy(self) -> bool:
        return self._fast_greedy

    @fast_greedy.setter
    def fast_greedy(self, on: bool):
        # Off gives the packed copies of the weights back (they serve the fast path only); on, in eval mode, packs.
        self._fast_greedy = bool(on)
        if on:
            pack_for_inference(self)
        else:
            release_packed_weights(self.modules())

    # Which weights the fast path packs for oneDNN (a second copy of them, in memory): None, the default, packs bf16
    # where the CPU computes it (fast_generation_moda.dtypes_to_pack says why not fp32); True packs fp32 as well
    # (faster at large batches on some CPUs, +1 GB); False packs nothing (the fast loop on the modules' kernels).
    pack_weights = None

    def train(self, mode: bool = True):
        # The packed copies of the weights serve inference: a model that trains gives their memory back, and one put
        # in eval mode packs now (from_pretrained ends with eval()), so the first caption does not wait for it.
        if mode:
            release_packed_weights(self.modules())
        model = super().train(mode)
        if not mode:
            pack_for_inference(self)
        return model

    def _apply(self, fn, *args, **kwargs):
        # .to(), .half(), .float(), .bfloat16(), .cuda() and .cpu() all come here. The packs are copies of the weights
        # as they were: after a dtype or device change they would only hold memory (on the CPU, after a move to a GPU),
        # so they go, and a model in eval mode packs anew for its new dtype. A call that changes nothing (.cpu() on
        # the CPU, .to() the dtype it has) keeps them: packing again would cost the next caption a second or more.
        before = self._weight_storage()
        if self._converts(fn):  # given back before the conversion, whose new weights would otherwise meet them
            release_packed_weights(self.modules())
        model = super()._apply(fn, *args, **kwargs)
        if self._weight_storage() != before:
            release_packed_weights(self.modules())
            if not self.training:
                pack_for_inference(self)
        return model

    def _weight_storage(self) -> list:
        """Each parameter's dtype, device and memory: what a conversion in _apply changes."""
        return [(weight.dtype, weight.device, weight.data_ptr()) for weight in self.parameters()]

    def _converts(self, fn) -> bool:
        """Whether `fn` (an _apply function) gives another tensor for the smallest parameter of each dtype and device:
        a conversion, told apart from .cpu() on the CPU or .to() the dtype it has, at the cost of one small copy."""
        smallest = {}
        for weight in self.parameters():
            key = (weight.dtype, weight.device)
            if key not in smallest or weight.numel() < smallest[key].numel():
                smallest[key] = weight
        with torch.no_grad():
            return any(fn(weight) is not weight for weight in smallest.values())

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs):
        # transformers 5 enabling checkpointing also hooks every input embedding (enable_input_require_grads), and
        # disabling it leaves the hooks unless PEFT is loaded. A hook makes the fast path step aside, so a model
        # that trained with checkpointing would generate on the plain path for good: disabling removes them.
        super()._set_gradient_checkpointing(enable, *args, **kwargs)
        if not enable and (getattr(self, "_require_grads_hooks", None) or getattr(self, "_require_grads_hook", None)):
            self.disable_input_require_grads()

    # --- construction and saving ----------------------------------------------------------------------------------

    @classmethod
    def from_backbones(
        cls,
        vision_model: str = "patrickjohncyh/fashion-clip",
        text_model: str = "facebook/opt-125m",
        revision: Optional[str] = None,
        cache_dir: Optional[str] = None,
        **config_overrides,
    ) -> "MODAForConditionalGeneration":
        """Builds MODA from pretrained CLIP and OPT checkpoints (Hub ids or local folders, both at `revision` when
        given, downloaded into `cache_dir`); the projector is new."""
        # CLIP is transformers' own code: a checkpoint's own is never run (with trust_remote_code unset, AutoConfig would
        # ask on stdin whether to run the code a config.json's auto_map names, and a "y" runs it).
        vision_tower = load_clip_vision(vision_model, trust_remote_code=False, revision=revision, cache_dir=cache_dir)
        language_model = OPTForCausalLM.from_pretrained(text_model, revision=revision, cache_dir=cache_dir)
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


MODAForConditionalGeneration.register_for_auto_class("AutoModel")


def _has_cache(kwargs: dict) -> bool:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None:
        return False
    return cache.get_seq_length() > 0 if hasattr(cache, "get_seq_length") else True


__all__ = ["MODAConfig", "MODAProjector", "MODAPreTrainedModel", "MODAForConditionalGeneration", "MODACausalLMOutput"]
