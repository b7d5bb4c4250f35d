"""MODA's fast path for inference on the CPU: plain greedy decoding and the vision tower's image features.

Plain greedy decoding (the pipeline's and the CLI's case) skips GenerationMixin: a key/value cache preallocated for
the whole caption and a tight loop over OPT's layers, about 15 ops a layer and step instead of GenerationMixin's and
the cache classes' several hundred small ops, which matters most where a small op is expensive (batch 1, busy CPUs).
The arithmetic is OPT's own, in the same order, with the Linear layers on oneDNN's packed kernels (`PackedLinears`:
results within rounding of F.linear's): the tests check that in fp32 the tokens are those GenerationMixin gives. In
bf16 the packed products and the fp32 attention of one new token round differently from GenerationMixin's ops, so a
near-tie can go the other way (also between batch sizes); benchmarks/precision_agreement.py measures how often a
trained model's captions agree. BENCHMARKS.md ("What was done") says what each part saves.

modeling_moda.py calls in through five hooks: `fast_image_features`, `greedy_generate`, `redo_on_the_plain_path`,
`pack_for_inference` and `release_packed_weights`. Any other option (sampling, beams, processors, streamers,
use_cache=False, outputs beyond the token ids), autocast and forward hooks go to GenerationMixin and CLIP's forward,
the plain path; `model.fast_greedy = False` sends everything there.

The packed products use torch's PRIVATE oneDNN ops (`torch.ops.mkldnn._reorder_linear_weight`, `_linear_pointwise`
and its `.binary`, `_is_mkldnn_bf16_supported`), which another torch build or a later torch may lack or change. They
are looked up once; where one is missing, or raises when called, a warning names it and the fast path is off for the
rest of the process: the plain path runs, and a generate call that failed midway runs again on it from the start.

This file travels to the Hub with the weights (modeling_moda.py imports it relatively, so save_pretrained copies it):
it imports only torch, transformers and the standard library.
"""

import functools
import math
import os
import warnings
import weakref
from typing import Callable, NamedTuple, Optional

import torch
from torch import nn
from torch.nn import functional as F
from transformers import CLIPVisionModelWithProjection, OPTForCausalLM
from transformers.activations import QuickGELUActivation


# --- the private oneDNN ops: looked up once, a failure turns the fast path off ----------------------------------------


class FastPathFailure(RuntimeError):
    """An op of the fast path failed, which turned the fast path off: the call is to be redone on the plain path."""


class OneDNNOps(NamedTuple):
    """torch's private oneDNN ops behind the packed products; a failing call turns the fast path off."""

    reorder_linear_weight: Callable  # weight -> the weight re-laid out (packed) for oneDNN's GEMM kernels
    linear_pointwise: Callable  # (input, packed weight, bias, "none" | "relu" | "swish", [], "") -> output
    linear_pointwise_binary: Callable  # (input, other, packed weight, bias, "add") -> other + output
    bf16_supported: bool  # whether oneDNN packs bf16 on this CPU (it refuses to otherwise)


# OneDNNOps field -> the op's path under torch.ops.mkldnn
ONEDNN_OP_PATHS = {
    "reorder_linear_weight": "_reorder_linear_weight",
    "linear_pointwise": "_linear_pointwise",
    "linear_pointwise_binary": "_linear_pointwise.binary",
    "bf16_supported": "_is_mkldnn_bf16_supported",
}


class _FastPathState:
    looked_up = False  # whether the ops were looked up (once a process, or after reset_fast_path)
    ops: Optional[OneDNNOps] = None
    off_reason: Optional[str] = None  # why the fast path is off; None while it is on


_STATE = _FastPathState()


def _guarded(path: str, op: Callable) -> Callable:
    """`op`, but an exception it raises turns the fast path off and comes out as a FastPathFailure."""

    def call(*args):
        try:
            return op(*args)
        except Exception as error:
            turn_fast_path_off(f"torch.ops.mkldnn.{path} raised {type(error).__name__}: {error}")
            raise FastPathFailure(f"torch.ops.mkldnn.{path} failed: the fast path is off") from error

    return call


def _look_up_onednn_ops():
    """The ops as OneDNNOps, or (a string) why they cannot be used."""
    found = {}
    for field, path in ONEDNN_OP_PATHS.items():
        op = torch
        try:
            for name in ("ops", "mkldnn", *path.split(".")):
                op = getattr(op, name)
        except Exception:  # torch.ops answers an op it lacks with AttributeError; expect other errors as well
            return f"torch.ops.mkldnn.{path} is missing from this torch ({torch.__version__})"
        found[field] = op if field == "bf16_supported" else _guarded(path, op)
    try:
        found["bf16_supported"] = bool(found["bf16_supported"]())
    except Exception as error:
        return f"torch.ops.mkldnn.{ONEDNN_OP_PATHS['bf16_supported']} raised {type(error).__name__}: {error}"
    return OneDNNOps(**found)


def onednn_ops() -> Optional[OneDNNOps]:
    """The ops (looked up on the first call), or None when the fast path is off (a missing op turns it off)."""
    if not _STATE.looked_up and _STATE.off_reason is None:
        _STATE.looked_up = True
        found = _look_up_onednn_ops()
        if isinstance(found, str):
            turn_fast_path_off(found)
        else:
            _STATE.ops = found
    return _STATE.ops if _STATE.off_reason is None else None


def turn_fast_path_off(reason: str) -> None:
    """Turns the fast path off for the rest of the process (warning once, with `reason`) and drops every pack."""
    if _STATE.off_reason is not None:
        return
    _STATE.off_reason = reason
    _PACKS.clear()
    warnings.warn(
        f"MODA's fast CPU path is off for the rest of this process: {reason}. Generation takes the plain path "
        "(GenerationMixin and CLIP's forward, as with model.fast_greedy = False) and gives that path's tokens.",
        RuntimeWarning,
        stacklevel=2,
    )


def fast_path_off_reason() -> Optional[str]:
    """Why the fast path is off (a missing or failing oneDNN op), or None while it is on."""
    return _STATE.off_reason


def reset_fast_path() -> None:
    """Turns the fast path on again; the ops are looked up anew at its next use (for tests that replace an op)."""
    _STATE.looked_up, _STATE.ops, _STATE.off_reason = False, None, None


def _onednn_enabled() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def fast_path_on() -> bool:
    """Whether the fast path may run. Where oneDNN is on, the first call looks its ops up (a missing one turns the
    fast path off); without oneDNN the fast loop runs on the modules' own kernels and needs none of them."""
    if _onednn_enabled():
        onednn_ops()
    return _STATE.off_reason is None


def redo_on_the_plain_path(generate: Callable) -> Callable:
    """
    Decorates a generate method: where an op of the fast path fails during the call (which turns the fast path off),
    the whole call runs again, image features included, now on the plain path. So no partial output comes back, and
    no mix of both paths: the tokens are those `model.fast_greedy = False` gives.
    """

    @functools.wraps(generate)
    def generate_falling_back(self, *args, **kwargs):
        try:
            return generate(self, *args, **kwargs)
        except FastPathFailure:
            return generate(self, *args, **kwargs)

    return generate_falling_back


def runs_as_written(module: nn.Module, device_type: str) -> bool:
    """
    Whether a fast inference path may stand in for `module`'s forward: not under autocast, whose casts its packed
    products would not follow, and no forward hooks on the module or inside it, which it would skip (it calls few
    modules).
    """
    try:
        autocast = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device-type argument
        autocast = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    if autocast:
        return False
    hooks = nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return False
    return not any(child._forward_hooks or child._forward_pre_hooks for child in module.modules())


# --- packed weights ------------------------------------------------------------------------------------------------

# The first layer of a packed group -> its _Pack. Kept outside the model (which therefore still copies and pickles as
# before), weakly: a module that goes away takes its pack along.
_PACKS = weakref.WeakKeyDictionary()


class _Pack(NamedTuple):
    tensors: tuple  # the group's weights and biases when packed
    versions: tuple  # their version counters then
    sample: torch.Tensor  # a strided sample of their values then (`_value_sample`)
    scales: tuple  # each layer's (weight scale, bias scale) folded into the pack
    weight: torch.Tensor  # the stacked weight, packed
    bias: Optional[torch.Tensor]  # the stacked bias


def packed_modules(modules) -> list:
    """Those of `modules` that hold a packed copy of weights (the first layer of each packed group)."""
    return [module for module in modules if module in _PACKS]


def packed_copy_dtypes(modules) -> list:
    """The dtypes of the packed copies those of `modules` hold (what they were packed from), one per pack."""
    return [_PACKS[module].weight.dtype for module in packed_modules(modules)]


def release_packed_weights(modules) -> None:
    """Forgets the packs of these modules (their memory goes back when nothing else holds them)."""
    for module in modules:
        _PACKS.pop(module, None)


def packed_dtypes() -> tuple:
    """Dtypes oneDNN's packed kernels take here: fp32, and bf16 where the CPU has the instructions for it. None where
    oneDNN is missing or switched off (torch.backends.mkldnn.enabled), or the fast path is off."""
    ops = onednn_ops() if _onednn_enabled() else None
    if ops is None:
        return ()
    return (torch.float32, torch.bfloat16) if ops.bf16_supported else (torch.float32,)


# Which dtypes the fast path packs unless the model says otherwise (`model.pack_weights = None`, the default). A pack
# is a second copy of the weights, so it must buy a lot to be worth its memory. bf16: oneDNN packs it only where the
# CPU has bf16 instructions, and there the packed products take a third less time than F.linear's bf16 kernels at
# every batch size; the packs (434 MB for full-size MODA) fit under the fp32 weights a bf16 model is made from.
# fp32: the fp32 weights are MODA's largest memory (870 MB), a packed copy doubles them (+1 GB peak RSS with the
# packing's transients, +83 % on an Intel Xeon with AMX), and the gain depends on the CPU (nothing at batch 1 on that
# Xeon); the fast loop on the modules' own fp32 kernels keeps the plain path's memory. BENCHMARKS.md has the numbers.
PACKED_BY_DEFAULT = (torch.bfloat16,)


def dtypes_to_pack(pack_weights: Optional[bool] = None, packable: Optional[tuple] = None) -> tuple:
    """
    The dtypes whose weights the fast path packs: of `packable` (default: `packed_dtypes()`, what oneDNN packs
    here), those in PACKED_BY_DEFAULT where `pack_weights` is None, all of them where it is True, none where False.
    """
    packable = packed_dtypes() if packable is None else packable
    if pack_weights is None:
        return tuple(dtype for dtype in packable if dtype in PACKED_BY_DEFAULT)
    return tuple(packable) if pack_weights else ()


_QUICK_GELU = 1.702  # CLIP's quick GELU: y * sigmoid(1.702 y)


def _value_sample(tensors: tuple, stride: int = 509) -> torch.Tensor:
    """
    A strided sample of the tensors' values, to see writes through `.data` (which bump no version counter). The
    stride is at most a row, so a write to any whole row of a weight is seen. The bits are compared (a sum can miss
    two values swapped; NaN never equals itself, and 0.0 equals -0.0). A sample, not every value: a cache line per
    row is far cheaper to read at every call than every weight.
    """
    sample = torch.cat([tensor.detach().reshape(-1)[:: min(stride, tensor.shape[-1])] for tensor in tensors])
    return sample.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[sample.element_size()])


class PackedLinears:
    """
    The inference paths' Linear layers (the fast greedy loop's decoder and lm_head, the vision tower in
    `inference_image_features`) on oneDNN, with their weights re-laid out (packed) for its GEMM kernels.

    Decoding reads every decoder weight once per token, and oneDNN's packed kernels read them faster than F.linear.
    Layers that read the same input (an attention's q, k and v projections) are packed stacked and run as one product.
    The price is a packed copy of the weights in memory. Packing takes long against a caption, so packs are kept
    between calls (outside the model) and checked at every call: a weight that is another tensor, or changed in place
    (its version counter, or a strided sample of its values for writes through `.data`), is packed again. The sample
    sees a write through `.data` to a whole row, not one that leaves the sampled elements alone (all but a row's first,
    say): after such a write, `model.train().eval()` gives the packs back and the next call packs anew. A model that
    changes dtype or device drops its packs (MODAForConditionalGeneration._apply); a group that can no longer be packed
    (a submodule moved off the CPU or to another dtype alone) drops its own here, at the next call.
    """

    def __init__(self, groups, quick_gelu_mlps=(), output_scales=None, dtypes: Optional[tuple] = None):
        """
        `groups`: tuples of Linear layers that share their input (most are single layers); those whose weights are
        of `dtypes` (default: every dtype oneDNN packs here) are packed, the others run on their modules. `quick_gelu_mlps`:
        (fc1, fc2) pairs with a quick GELU between them; in bf16 their activation runs inside fc1's product (`mlp`).
        `output_scales`: {layer: s} for outputs the caller multiplies by s. Where s is a power of two and the layer
        is packed, s goes into its packed weight and bias (the same values: scaling by a power of two rounds
        nothing, short of subnormal numbers), the layer's outputs come out scaled, and the layer is in
        `scaled_outputs`.
        """
        self.packed = {}  # group -> (packed stacked weight, stacked bias)
        self.swish_inputs = set()  # fc1 layers whose pack is scaled for swish (see `mlp`)
        self.scaled_outputs = {}  # layer -> the power of two its outputs come out multiplied by
        dtypes = tuple(dtype for dtype in (packed_dtypes() if dtypes is None else dtypes) if dtype in packed_dtypes())
        self.ops = onednn_ops() if dtypes else None

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
                _PACKS.pop(group[0], None)  # a pack of its former dtype or device would only hold memory
                continue
            for module in group:
                scale = (output_scales or {}).get(module)
                # at most 1 (OPT's is head_dim ** -0.5): a larger power of two could overflow the scaled weights
                if scale is not None and module not in scales and math.frexp(scale)[0] == 0.5 and scale <= 1:
                    scales[module] = (scale, scale)
                    self.scaled_outputs[module] = scale
            self.packed[group] = self._pack(group, tuple(scales.get(module, (1.0, 1.0)) for module in group))

    def _pack(self, group: tuple, scales: tuple) -> tuple:
        """The packed stacked weight and the bias of `group`, each layer's weight and bias multiplied by its
        (weight scale, bias scale) in `scales`."""
        # Weights and biases alike: either may change alone (a bias-only fine-tune, a partial load_state_dict).
        tensors = tuple(tensor for module in group for tensor in (module.weight, module.bias) if tensor is not None)
        versions, sample = tuple(tensor._version for tensor in tensors), _value_sample(tensors)
        pack = _PACKS.get(group[0])
        if pack is None or len(pack.tensors) != len(tensors) or any(a is not b for a, b in zip(pack.tensors, tensors)) \
                or pack.versions != versions or pack.scales != scales or not torch.equal(pack.sample, sample):

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
            pack = _Pack(tensors, versions, sample, scales, self.ops.reorder_linear_weight(stacked), bias)
            _PACKS[group[0]] = pack
        return pack.weight, pack.bias

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
        linear_pointwise = self.ops.linear_pointwise

        def fused(hidden):
            if hidden.dtype != weight.dtype:
                return plain(hidden)
            output = linear_pointwise(hidden, weight, bias, "relu" if relu else "none", [], "")
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
        linear_pointwise_binary = self.ops.linear_pointwise_binary

        def fused(hidden, residual):
            if hidden.dtype != weight.dtype or residual.dtype != weight.dtype:
                return plain(hidden, residual)
            return linear_pointwise_binary(hidden, residual, weight, bias, "add")

        return fused

    def mlp(self, fc1: nn.Module, activation: nn.Module, fc2: nn.Module) -> Callable:
        """
        A function (hidden, residual) -> residual + fc2(activation(fc1(hidden))). A quick-GELU MLP packed for it
        (bf16) runs the activation inside fc1's product as oneDNN's swish: quick_gelu(y) = y * sigmoid(1.702 y) =
        swish(1.702 y) / 1.702, with 1.702 folded into fc1's packed weight and bias and 1 / 1.702 into fc2's weight.
        That saves the separate elementwise passes over the MLP's wide activations.
        """
        second = self.linear_add(fc2)
        if fc1 not in self.swish_inputs:
            first = self.linear((fc1,), activation)
            return lambda hidden, residual: second(first(hidden), residual)
        weight, bias = self.packed[(fc1,)]
        linear_pointwise = self.ops.linear_pointwise

        def swish(hidden, residual):
            if hidden.dtype != weight.dtype or residual.dtype != weight.dtype:
                # as in `linear`; fc2's pack is scaled for swish, so both products take the modules
                return residual + fc2(activation(fc1(hidden)))
            return second(linear_pointwise(hidden, weight, bias, "swish", [], ""), residual)

        return swish

    def __call__(self, module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """module(hidden), on oneDNN where the module is packed."""
        return self.linear((module,))(hidden)


def _qkv(attention: nn.Module) -> tuple:
    """An attention's q, k and v projections: one group of PackedLinears (they read the same input)."""
    return attention.q_proj, attention.k_proj, attention.v_proj


def _layer_linears(attention: nn.Module, fc1: nn.Module, fc2: nn.Module) -> list:
    """A transformer layer's Linear layers as PackedLinears groups: (q, k, v), the output projection, fc1, fc2."""
    return [_qkv(attention), (attention.out_proj,), (fc1,), (fc2,)]


def _layer_norm_function(norm: nn.Module) -> Callable:
    """An nn.LayerNorm as one op (at batch 1 its module call costs about as much again as the op itself)."""
    if type(norm) is not nn.LayerNorm:
        return norm
    weight = None if norm.weight is None else norm.weight.detach()
    bias = None if norm.bias is None else norm.bias.detach()
    return functools.partial(torch.layer_norm, normalized_shape=norm.normalized_shape, weight=weight, bias=bias,
                             eps=norm.eps)


# --- the vision tower ----------------------------------------------------------------------------------------------


def pack_for_inference(model: nn.Module) -> None:
    """
    Packs now what the fast path would pack at its next call (the vision tower's and the decoder's weights of the
    dtypes `dtypes_to_pack(model.pack_weights)` names), so that the first caption pays no packing: MODA calls it
    when it is put in eval mode (from_pretrained does that last) and after a dtype or device change in eval mode.
    Nothing is packed where the fast path would not run; packs of dtypes no longer to be packed are given back.
    """
    if model.training or not model.fast_greedy or not fast_path_on():
        return
    dtypes = dtypes_to_pack(model.pack_weights)
    try:
        # Where hooks or autocast make the path step aside, its packs would only hold memory: none are kept, and the
        # next call that takes the path packs.
        if isinstance(model.vision_tower, CLIPVisionModelWithProjection):
            if runs_as_written(model.vision_tower, "cpu"):
                vision_packs(model.vision_tower, dtypes)
            else:
                release_packed_weights(model.vision_tower.modules())
        if isinstance(model.language_model, OPTForCausalLM):
            if runs_as_written(model, "cpu"):
                decoding_packs(model.language_model, dtypes)
            else:
                release_packed_weights(model.language_model.modules())
    except FastPathFailure:  # the fast path is off now (one warning): generation takes the plain path
        pass


def fast_image_features(vision_tower: nn.Module, pixel_values: torch.Tensor,
                        pack_weights: Optional[bool] = None) -> Optional[torch.Tensor]:
    """
    The image embeds by `inference_image_features`, or None where CLIP's own forward must run: gradients on,
    another vision tower, autocast, forward hooks, or the fast path off (an op failing here turns it off: None, and
    the caller computes the features anew).
    """
    if torch.is_grad_enabled() or not isinstance(vision_tower, CLIPVisionModelWithProjection):
        return None
    if not runs_as_written(vision_tower, pixel_values.device.type) or not fast_path_on():
        return None
    try:
        return inference_image_features(vision_tower, pixel_values, pack_weights)
    except FastPathFailure:
        return None


def inference_image_features(vision_tower: CLIPVisionModelWithProjection, pixel_values: torch.Tensor,
                             pack_weights: Optional[bool] = None) -> torch.Tensor:
    """
    The vision tower's forward for inference, with two savings: the Linear layers run on oneDNN with packed
    weights (`PackedLinears`; in bf16 with the quick GELU inside the first MLP product), and the pooled output reads
    only the class token, so past its attention the last layer runs the class token alone (its output projection and
    MLP on 1 row instead of every patch's). In fp32 the arithmetic is CLIP's own (in bf16 see `PackedLinears.mlp`).
    `pack_weights`: which weights are packed (`dtypes_to_pack`); the others run on their modules' kernels.
    """
    vision = vision_tower.vision_model
    layers = vision.encoder.layers
    linears = vision_packs(vision_tower, dtypes_to_pack(pack_weights))
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
    for index, layer in enumerate(layers):
        hidden = _clip_layer_pass(layer, hidden, index == len(layers) - 1, linears)
    return linears(vision_tower.visual_projection, vision.post_layernorm(hidden[:, 0]))


def vision_packs(vision_tower: CLIPVisionModelWithProjection, dtypes: tuple) -> PackedLinears:
    """The vision tower's Linear layers as `inference_image_features` runs them, those of `dtypes` packed."""
    quick_gelu_mlps = [(layer.mlp.fc1, layer.mlp.fc2) for layer in vision_tower.vision_model.encoder.layers
                       if isinstance(layer.mlp.activation_fn, QuickGELUActivation)]
    return PackedLinears(vision_linears(vision_tower), quick_gelu_mlps, dtypes=dtypes)


def vision_linears(vision_tower: CLIPVisionModelWithProjection) -> list:
    """The vision tower's Linear layers in `inference_image_features`, grouped by shared input (q, k, v)."""
    groups = [(vision_tower.visual_projection,)]
    for layer in vision_tower.vision_model.encoder.layers:
        groups += _layer_linears(layer.self_attn, layer.mlp.fc1, layer.mlp.fc2)
    return groups


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


# --- greedy decoding -----------------------------------------------------------------------------------------------

# Generation settings that cannot change what greedy decoding writes (sampling and beam settings, special tokens,
# lengths, which greedy_decode applies itself) ...
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


def greedy_generate(model: nn.Module, inputs_embeds, attention_mask, config, generate_kwargs: dict):
    """
    The new tokens of plain greedy decoding from the merged (left-padded) embeddings, by the fast loop; None where
    the call needs GenerationMixin (see `greedy_settings`). `config`: the call's generation config.
    """
    settings = greedy_settings(model, config, generate_kwargs)
    if settings is None:
        return None
    return greedy_decode(model.language_model, inputs_embeds, attention_mask, **settings)


def greedy_settings(model: nn.Module, config, generate_kwargs: dict) -> Optional[dict]:
    """The settings of the fast greedy loop, or None when the options need GenerationMixin (or the model trains, its
    decoder is not OPT, hooks or autocast are on, or the fast path is off). `config`: the call's generation config."""
    if model.training or not isinstance(model.language_model, OPTForCausalLM):
        return None
    if not runs_as_written(model, model.device.type):  # hooks on the model itself too: GenerationMixin calls it
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
    if not fast_path_on():
        return None
    return dict(
        max_new_tokens=int(config.max_new_tokens),
        min_new_tokens=int(config.min_new_tokens or 0),
        eos_token_ids=eos,
        pad_token_id=pad,
        pack_weights=getattr(model, "pack_weights", None),
    )


@torch.no_grad()
def greedy_decode(language_model: OPTForCausalLM, inputs_embeds, attention_mask, max_new_tokens, min_new_tokens,
                  eos_token_ids, pad_token_id, pack_weights: Optional[bool] = None):
    """Greedy decoding from the merged (left-padded) embeddings; returns the new tokens as GenerationMixin does.
    `pack_weights`: which weights are packed (`dtypes_to_pack`); the others run on their modules' kernels."""
    batch, prompt_length = attention_mask.shape
    device = inputs_embeds.device
    # Which cache slots each row may attend to: its prompt without the pads, then every generated token.
    key_mask = torch.ones(batch, prompt_length + max_new_tokens, dtype=torch.bool, device=device)
    key_mask[:, :prompt_length] = attention_mask.bool()
    padded = not bool(key_mask.all())
    decoder = language_model.model.decoder
    caches = [None] * len(decoder.layers)

    # The prompt: OPT's positions count only the real tokens (pads get position -1, as in OPT).
    positions = attention_mask.long().cumsum(1) * attention_mask.long() - 1
    prompt_mask = None
    if padded:
        causal = torch.ones(prompt_length, prompt_length, dtype=torch.bool, device=device).tril()
        # A pad attends to itself too: no row is fully masked, so no NaN reaches the cache.
        prompt_mask = (causal & key_mask[:, None, None, :prompt_length]) | torch.eye(
            prompt_length, dtype=torch.bool, device=device
        )
    linears = decoding_packs(language_model, dtypes_to_pack(pack_weights))
    plans = [OPTLayerPlan.of(layer, linears) for layer in decoder.layers]
    projections = tuple(None if module is None else linears.linear((module,))
                        for module in (decoder.project_in, decoder.project_out))
    lm_head = linears.linear((language_model.lm_head,))
    first_max_index = first_max_function(language_model.lm_head.out_features)
    slots = prompt_length + max_new_tokens
    hidden = decoder_pass(decoder, inputs_embeds, positions, caches, 0, prompt_mask, slots, plans, projections)
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
        hidden = decoder_pass(
            decoder, embed_tokens(tokens[:, None]), next_positions, caches, end - 1, step_mask, slots, plans,
            projections,
        )
        next_positions = next_positions + 1
    return new_tokens


def decoding_packs(language_model: OPTForCausalLM, dtypes: tuple) -> PackedLinears:
    """The decoder's and lm_head's Linear layers as the fast greedy loop runs them, those of `dtypes` packed."""
    layers = language_model.model.decoder.layers
    return PackedLinears(decoding_linears(language_model), dtypes=dtypes,
                         output_scales={layer.self_attn.q_proj: layer.self_attn.scaling for layer in layers})


def decoding_linears(language_model: OPTForCausalLM) -> list:
    """The Linear layers the fast greedy loop runs, grouped by shared input: each decoder layer's (q, k and v
    together), OPT's projections, the lm_head."""
    decoder = language_model.model.decoder
    groups = [(linear,) for linear in (decoder.project_in, decoder.project_out, language_model.lm_head)
              if linear is not None]
    for layer in decoder.layers:
        groups += _layer_linears(layer.self_attn, layer.fc1, layer.fc2)
    return groups


def decoder_pass(decoder: nn.Module, embeds, positions, caches, start, attention_mask, slots, plans, projections):
    """OPT's decoder on `embeds` at cache slots start..; fills the caches (of `slots` slots, made on the first
    pass). `projections`: the functions of OPT's project_in and project_out (None where it has none)."""
    project_in, project_out = projections
    hidden = embeds if project_in is None else project_in(embeds)
    hidden = hidden + F.embedding(positions + decoder.embed_positions.offset, decoder.embed_positions.weight)
    for index, plan in enumerate(plans):
        hidden = plan.forward(hidden, caches, index, start, attention_mask, slots)
    if decoder.final_layer_norm is not None:
        hidden = decoder.final_layer_norm(hidden)
    return hidden if project_out is None else project_out(hidden)


class OPTLayerPlan(NamedTuple):
    """
    One OPTDecoderLayer as the fast greedy loop runs it: its functions and settings, resolved once per generate
    call, so a decoding step does only the layer's ops (at batch 1 the module calls, attribute and pack lookups of
    every step would cost a noticeable share of a caption).
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
    def of(cls, layer: nn.Module, linears: PackedLinears) -> "OPTLayerPlan":
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
            # One new token against the cache, in bf16 on the CPU: torch's attention kernel is slow there for a
            # batch of rows, two small products in fp32 are faster (at batch 1 the kernel is the faster).
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
def first_max_function(vocab_size: int) -> Callable:
    """
    A function logits (batch, vocab_size) -> each row's first maximal index, as `logits.max(-1).indices` (and argmax)
    give it. torch's max with indices reads a long row one element at a time, its amax is vectorised. So where the
    vocabulary splits into equal chunks of 64-2048 (OPT's 50272 = 32 x 1571), the chunks' maxima (amax) tell the first
    chunk that holds the row's maximum, and max runs on that chunk alone.
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


# ---------------------------------------------------------------------------------------------------------------
# Inference precision: the dtype MODA runs in on a device (moda caption, caption-image, the app, the endpoint handler).
# Here, beside the fast path it feeds, because the endpoint's handler.py may import only model files; it reads no
# model and changes nothing of the fast path.
# ---------------------------------------------------------------------------------------------------------------

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRECISION_CHOICES = ("auto", *PRECISIONS)
# The x86 CPU flags (as Linux names them) of units that multiply bf16 in hardware: AMX tiles (Intel Sapphire Rapids
# on) and AVX512-BF16 (Cooper Lake, AMD Zen 4 on). Elsewhere oneDNN emulates bf16 and it runs slower than fp32.
NATIVE_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
CPUINFO_PATH = "/proc/cpuinfo"
# The deployer's choice, for every entry point (moda caption, caption-image, the app, the endpoint handler); a request
# never chooses it.
PRECISION_VARIABLE = "MODA_PRECISION"


def cpu_flags(cpuinfo_path: str = CPUINFO_PATH) -> frozenset:
    """The CPU's feature flags from Linux's /proc/cpuinfo (its first "flags" line); empty where the file or the line
    is missing (other systems, other architectures): then nothing counts as native."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if name.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_computes_bf16_natively(flags=None) -> bool:
    """Whether the CPU multiplies bf16 in hardware (AMX or AVX512-BF16). `flags`: the CPU's flags (default: read
    from /proc/cpuinfo), so that the rule can be checked for any CPU."""
    return bool(NATIVE_BF16_CPU_FLAGS & set(cpu_flags() if flags is None else flags))


def inference_dtype(precision: str = "auto", device="cpu", flags=None) -> torch.dtype:
    """
    The dtype to run MODA in: "fp32", "bf16", or "auto": bf16 on a CPU that computes bf16 natively
    (cpu_computes_bf16_natively), fp32 on other CPUs and on any other device (fp32, as MODA ran there before).
    bf16 asked for on a CPU without native bf16 is honoured, with a warning (once) that it runs slower than fp32.
    `device`: a torch device or its name; `flags`: the CPU's flags (default: this CPU's). Any other precision raises
    ValueError naming it.
    """
    check_precision(precision)
    on_cpu = torch.device(device if device is not None else "cpu").type == "cpu"
    native = on_cpu and cpu_computes_bf16_natively(flags)
    if precision == "auto":
        return torch.bfloat16 if native else torch.float32
    if precision == "bf16" and on_cpu and not native:
        warn_bf16_is_emulated()
    return PRECISIONS[precision]


def check_precision(precision, name: str = "precision") -> str:
    """`precision` if it is one of PRECISION_CHOICES; else a ValueError naming it and `name`, where it came from."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"{name} {precision!r} is not one of {', '.join(PRECISION_CHOICES)}.")
    return precision


def configured_precision(environ=None) -> str:
    """The precision MODA_PRECISION sets (an empty value counts as unset), else "auto"; another value raises
    ValueError naming the variable. `environ`: default os.environ."""
    value = (os.environ if environ is None else environ).get(PRECISION_VARIABLE) or "auto"
    return check_precision(value, PRECISION_VARIABLE)


def precision_name(dtype: torch.dtype) -> str:
    """"fp32" or "bf16" for the dtype inference_dtype gave (what a run records)."""
    return next(name for name, each in PRECISIONS.items() if each == dtype)


@functools.lru_cache(maxsize=None)
def warn_bf16_is_emulated() -> None:
    """The warning, once a process (cache_clear() to see it again)."""
    warnings.warn("bf16 was asked for on a CPU without native bf16 (no AMX or AVX512-BF16 flag): it runs emulated, "
                  "slower than fp32. Use precision fp32 (or auto) on this CPU.", stacklevel=3)
