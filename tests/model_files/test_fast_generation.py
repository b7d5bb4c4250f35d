"""MODA's fast greedy loop gives GenerationMixin's tokens, and every other option still goes to GenerationMixin.

Every test here needs only the root model files, transformers and torch: the tiny model and its inputs (random
images and prompt token ids, left-padded as MODAProcessor pads them) come from `MODAModelTester`
(tests/model_files/model_tester.py), with no tokenizer, no workshop (`moda`) import and no files. The model is this
module's own: no test elsewhere can leave hooks or settings on it.
"""

import contextlib
import copy
import functools
from collections import Counter

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

import fast_generation_moda
from fast_generation_moda import (ONEDNN_OP_PATHS, OPTLayerPlan, PackedLinears, decoder_pass, decoding_linears,
                                  fast_path_off_reason, first_max_function, packed_copy_dtypes, packed_dtypes,
                                  packed_modules, reset_fast_path, vision_linears)
from modeling_moda import MODAForConditionalGeneration
from tests.model_files.model_tester import moda_around_opt

PROMPT_LENGTHS = (6, 0, 7, 1)  # four images, prompts of different lengths (none in the second row)


def generate_both(model, **inputs):
    """(fast loop, GenerationMixin) outputs of the same generate call."""
    fast = model.generate(**inputs)
    model.fast_greedy = False
    try:
        reference = model.generate(**inputs)
    finally:
        model.fast_greedy = True
    return fast, reference


def copy_of(model):
    """A separate model with the same weights and generation settings (tests that change weights or dtype)."""
    copied = MODAForConditionalGeneration(model.config)
    copied.load_state_dict(model.state_dict())
    copied.generation_config = model.generation_config
    return copied.eval()  # as from_pretrained ends: the weights are packed now


@pytest.fixture(autouse=True)
def packs_fp32(monkeypatch):
    """The tiny models are fp32, whose weights the fast path packs only when asked (`pack_weights = True`): the
    tests of the packed products ask, and the tests of the default and of no packing say so themselves."""
    monkeypatch.setattr(MODAForConditionalGeneration, "pack_weights", True)


@pytest.fixture(autouse=True)
def fresh_fast_path():
    """Each test starts with the fast path on and its ops not yet looked up (so a test that stands in for
    torch.ops.mkldnn has its stand-in looked up), and leaves it so: a test that turns it off affects no other."""
    reset_fast_path()
    yield
    reset_fast_path()


def plain_generate(model, **inputs):
    """The tokens of the plain path (GenerationMixin and CLIP's forward)."""
    model.fast_greedy = False
    try:
        return model.generate(**inputs)
    finally:
        model.fast_greedy = True


def onednn_with(path, replacement):
    """A stand-in for torch.ops.mkldnn (its entries cannot be monkeypatched one by one) whose op at `path`
    (e.g. "_linear_pointwise.binary") is `replacement`, or missing where that is None; the other ops are torch's."""
    namespace = torch.ops.mkldnn
    name, _, overload = path.partition(".")

    class Packet:  # the op `name`, its overload `overload` replaced
        def __call__(self, *args):
            return getattr(namespace, name)(*args)

        def __getattr__(self, attribute):
            if attribute != overload:
                return getattr(getattr(namespace, name), attribute)
            if replacement is None:
                raise AttributeError(f"'OpOverloadPacket' object has no attribute '{attribute}'")
            return replacement

    class Replaced:  # `replacement` as the op `name`, its overloads (e.g. .binary) still torch's
        def __call__(self, *args):
            return replacement(*args)

        def __getattr__(self, attribute):
            return getattr(getattr(namespace, name), attribute)

    class Namespace:
        def __getattr__(self, attribute):
            if attribute != name:
                return getattr(namespace, attribute)
            if overload:
                return Packet()
            if replacement is None:
                raise AttributeError(f"'_OpNamespace' 'mkldnn' object has no attribute '{attribute}'")
            return Replaced()

    return Namespace()


def recorded_packing(monkeypatch) -> list:
    """A list that gets the shape of every weight packed from now on (torch.ops.mkldnn stood in for)."""
    packed = []
    original = torch.ops.mkldnn._reorder_linear_weight
    namespace = torch.ops.mkldnn

    class Recorder:  # stands in for the torch.ops.mkldnn namespace
        def __getattr__(self, name):
            return getattr(namespace, name)

        def _reorder_linear_weight(self, weight, *args):
            packed.append(tuple(weight.shape))
            return original(weight, *args)

    monkeypatch.setattr(torch.ops, "mkldnn", Recorder(), raising=False)
    return packed


def fast_path_warnings(records) -> list:
    return [str(record.message) for record in records if "MODA's fast CPU path is off" in str(record.message)]


@pytest.fixture
def spy(monkeypatch):
    """Counts the calls of the fast loop."""
    calls = []
    original = fast_generation_moda.greedy_decode

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(fast_generation_moda, "greedy_decode", counting)
    return calls


def test_fast_greedy_equals_generation_mixin_with_prompts_of_different_lengths(model, tester, spy):
    batch = tester.prepare_generation_inputs(PROMPT_LENGTHS)
    assert (batch["attention_mask"] == 0).any()  # the prompts really are padded
    fast, reference = generate_both(model, **batch, max_new_tokens=10)
    assert len(spy) == 1
    assert torch.equal(fast, reference)


@pytest.mark.parametrize("prompt_length", [0, 6], ids=["no prompt", "a prompt"])
def test_fast_greedy_equals_generation_mixin_one_image(model, tester, prompt_length):
    fast, reference = generate_both(model, **tester.prepare_generation_inputs((prompt_length,), seed=1),
                                    max_new_tokens=12)
    assert torch.equal(fast, reference)


def test_fast_greedy_equals_generation_mixin_from_image_embeds(model):
    model = model
    embeds = torch.randn(3, model.config.image_embed_dim, generator=torch.Generator().manual_seed(4))
    fast, reference = generate_both(model, image_embeds=embeds, max_new_tokens=9)
    assert torch.equal(fast, reference)


@pytest.mark.parametrize(
    "variant",
    [
        dict(do_layer_norm_before=False),  # OPT-350m normalises after the attention and the MLP
        dict(hidden_size=24, num_attention_heads=2, ffn_dim=48, word_embed_proj_dim=24),  # head_dim 12: scale not 2^k
        dict(hidden_size=128, num_attention_heads=2, ffn_dim=64, word_embed_proj_dim=128),  # head_dim 64, OPT's 1/8
        dict(word_embed_proj_dim=16),  # project_in / project_out around the layers, as OPT-350m
        dict(word_embed_proj_dim=16, do_layer_norm_before=False),  # OPT-350m's whole layout
    ],
    ids=["post-norm", "query-scale-not-a-power-of-two", "head-dim-64", "projected-embeddings", "opt-350m-layout"],
)
@pytest.mark.parametrize("attention_kernel", ["default", "math"])
def test_fast_greedy_equals_generation_mixin_for_other_opt_layouts(variant, attention_kernel, monkeypatch):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import OPTConfig

    torch.manual_seed(0)
    text = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64,
                word_embed_proj_dim=32, max_position_embeddings=64, bos_token_id=2, eos_token_id=3, pad_token_id=1)
    model = moda_around_opt(OPTConfig(**{**text, **variant}))
    for parameter in model.parameters():  # well away from zero, so the tokens differ from step to step
        torch.nn.init.normal_(parameter, std=0.5) if parameter.ndim > 1 else None
    calls = []
    original = fast_generation_moda.greedy_decode
    monkeypatch.setattr(fast_generation_moda, "greedy_decode", lambda *a, **k: calls.append(1) or original(*a, **k))
    embeds = torch.randn(4, 24, generator=torch.Generator().manual_seed(1))
    with sdpa_kernel(SDPBackend.MATH) if attention_kernel == "math" else contextlib.nullcontext():
        # eos suppressed for the first 3 tokens, then free to end a row
        fast, reference = generate_both(model, image_embeds=embeds, max_new_tokens=8, min_new_tokens=3)
    assert calls == [1]  # the fast loop ran (once), GenerationMixin gave the reference
    assert torch.equal(fast, reference)
    assert max(len(set(row.tolist())) for row in fast) > 2  # a real sequence, not one token repeated


@pytest.mark.parametrize("attention_kernel", ["default", "math"])
def test_the_fast_decoder_pass_is_opts_own_arithmetic(attention_kernel):
    """Bit for bit, where both run the same Linear kernels (oneDNN off): same ops, same order, OPT's 1/8 query scale."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import OPTConfig

    torch.manual_seed(0)
    model = moda_around_opt(OPTConfig(vocab_size=96, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                      ffn_dim=64, word_embed_proj_dim=128, max_position_embeddings=64))  # head_dim 64
    decoder = model.language_model.model.decoder
    embeds = torch.randn(2, 5, 128)
    positions = torch.arange(5).expand(2, 5)
    kernel = sdpa_kernel(SDPBackend.MATH) if attention_kernel == "math" else contextlib.nullcontext()
    with torch.backends.mkldnn.flags(enabled=False), kernel, torch.no_grad():
        reference = decoder(inputs_embeds=embeds, attention_mask=torch.ones(2, 5, dtype=torch.long)).last_hidden_state
        linears = PackedLinears(decoding_linears(model.language_model))
        assert linears.packed == {}  # both sides on the modules' own kernels
        plans = [OPTLayerPlan.of(layer, linears) for layer in decoder.layers]
        fast = decoder_pass(decoder, embeds, positions, [None, None], 0, None, 5, plans, (None, None))
    assert torch.equal(fast, reference)


def test_fast_greedy_stops_at_eos_and_pads_like_generation_mixin(model, tester, spy):
    batch = tester.prepare_generation_inputs(PROMPT_LENGTHS)
    free = model.generate(**batch, max_new_tokens=10)
    # Make the token row 0 writes third its end of sequence: row 0 stops there, the others later (or never).
    eos = int(free[0, 2])
    fast, reference = generate_both(model, **batch, max_new_tokens=10, eos_token_id=eos, pad_token_id=1)
    assert len(spy) == 2
    assert torch.equal(fast, reference)
    first = int((free[0] == eos).nonzero()[0])
    assert fast[0, first] == eos and (fast[0, first + 1:] == 1).all()


def test_fast_greedy_min_new_tokens_suppresses_eos_like_generation_mixin(model, tester):
    batch = tester.prepare_generation_inputs((0, 0))
    eos = int(model.generate(**batch, max_new_tokens=4)[0, 0])  # row 0 would stop at once
    fast, reference = generate_both(model, **batch, max_new_tokens=6, min_new_tokens=6, eos_token_id=eos)
    assert torch.equal(fast, reference)
    assert fast.shape == (2, 6) and not (fast == eos).any()


@pytest.mark.skipif(not packed_dtypes(), reason="oneDNN is not available to pack weights")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_power_of_two_output_scale_goes_into_the_pack_with_the_same_values(dtype):
    if dtype not in packed_dtypes():
        pytest.skip(f"oneDNN cannot pack {dtype} on this CPU")
    torch.manual_seed(0)
    q, k, v = (torch.nn.Linear(64, 64).to(dtype) for _ in range(3))
    hidden = torch.randn(3, 5, 64).to(dtype)
    for scale, folded in ((0.125, True), (2.0 ** -0.5, False)):
        linears = PackedLinears([(q, k, v)], output_scales={q: scale})
        assert linears.scaled_outputs == ({q: scale} if folded else {})
        query, key, value = linears.linear((q, k, v))(hidden)
        unscaled = PackedLinears([(q, k, v)]).linear((q, k, v))(hidden)
        expected = unscaled[0] * scale if folded else unscaled[0]
        assert torch.equal(query, expected) and torch.equal(key, unscaled[1]) and torch.equal(value, unscaled[2])
    # an input in another dtype runs the modules themselves, and still comes out scaled
    other = torch.float32 if dtype == torch.bfloat16 else torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        query = PackedLinears([(q, k, v)], output_scales={q: 0.125}).linear((q, k, v))(hidden.to(other))[0]
        assert torch.equal(query, q(hidden.to(other)) * 0.125)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_max_index_is_max_indices_with_ties_and_minus_infinity(dtype):
    torch.manual_seed(0)
    logits = torch.randn(6, 50272).to(dtype)
    logits[1, [19728, 1700, 1650]] = 9.0  # a tie within a later chunk (1650, 1700) and across chunks (1571 wide)
    logits[2, [1571 * 7, 1571 * 7 - 1]] = 9.0  # a tie across a chunk boundary
    logits[3] = -float("inf")
    logits[3, 50271] = 0.0  # the maximum in the last slot
    logits[4] = 0.0  # every value the same: index 0
    logits[5, :1571 * 20] = -float("inf")
    for vocab in (50272, 300, 257):  # chunks of 1571 and of 150; a prime falls back to max
        rows = logits[:, :vocab].contiguous()
        assert torch.equal(first_max_function(vocab)(rows), rows.max(-1).indices), vocab
    assert first_max_function(50272)(logits)[1] == 1650
    assert first_max_function(50272)(logits[:0]).shape == (0,)  # an empty batch, as max gives it


def test_the_tiny_vocabulary_takes_the_chunked_first_max(model):
    vocab = model.language_model.lm_head.out_features
    # else the tests that compare the fast loop's tokens with GenerationMixin's would not cover the chunked path
    assert first_max_function(vocab).__name__ == "chunked", vocab


def test_fast_greedy_in_bfloat16_equals_generation_mixin_in_bfloat16_on_the_test_model(model, tester):
    # Not so on every model: in bf16 the packed products (their residual adds inside) and the fp32 attention of one
    # new token round differently from GenerationMixin's ops, so a near-tie can go the other way
    # (benchmarks/precision_agreement.py measures a trained model). On this one every token agrees: a gross error shows.
    bf16 = copy_of(model).to(torch.bfloat16)
    fast, reference = generate_both(bf16, **tester.prepare_generation_inputs(PROMPT_LENGTHS), max_new_tokens=8)
    assert torch.equal(fast, reference)


def test_fast_greedy_runs_int8_dynamic_quantized_linears(model, tester):
    quantized = copy_of(model)
    quantized.language_model = torch.ao.quantization.quantize_dynamic(
        quantized.language_model, {torch.nn.Linear}, dtype=torch.qint8
    )
    fast, reference = generate_both(quantized, **tester.prepare_generation_inputs((0, 0, 0, 0)), max_new_tokens=8)
    assert torch.equal(fast, reference)


@pytest.mark.parametrize(
    "options",
    [
        dict(num_beams=3),
        dict(do_sample=True, top_k=20),
        dict(use_cache=False),
        dict(repetition_penalty=1.3),
        dict(no_repeat_ngram_size=2),
        dict(output_scores=True, return_dict_in_generate=True),
        dict(num_return_sequences=2, num_beams=2),
        dict(min_length=4),
    ],
    ids=lambda options: ",".join(options),
)
def test_other_options_go_to_generation_mixin(model, tester, spy, options):
    torch.manual_seed(0)
    out = model.generate(**tester.prepare_generation_inputs((0, 0)), max_new_tokens=5, **options)
    assert spy == []
    if options.get("return_dict_in_generate"):
        assert out.scores is not None


def test_a_streamer_goes_to_generation_mixin(model, tester, spy):
    class Recorder(BaseStreamer):  # as TextStreamer is, without a tokenizer to decode with
        def __init__(self):
            self.tokens, self.ended = [], False

        def put(self, value):
            self.tokens.extend(value.reshape(-1).tolist())

        def end(self):
            self.ended = True

    streamer = Recorder()
    out = model.generate(**tester.prepare_generation_inputs((0,)), max_new_tokens=4, streamer=streamer)
    assert spy == []
    assert streamer.ended and streamer.tokens[-out.shape[1]:] == out[0].tolist()  # the prompt, then each new token


def test_fast_greedy_can_be_switched_off(model, tester, spy):
    model.fast_greedy = False
    try:
        model.generate(**tester.prepare_generation_inputs((0,)), max_new_tokens=4)
    finally:
        model.fast_greedy = True
    assert spy == []
    model.generate(**tester.prepare_generation_inputs((0,)), max_new_tokens=4)
    assert len(spy) == 1


def test_after_training_with_gradient_checkpointing_generate_takes_the_fast_loop_again(model, tester, spy):
    # transformers 5 hooks the input embeddings while checkpointing is on: the fast loop steps aside for hooks, and
    # comes back once checkpointing is disabled (MODA removes those hooks then).
    model = copy_of(model)
    _, batch = tester.prepare_config_and_inputs()
    inputs = tester.prepare_generation_inputs(PROMPT_LENGTHS)
    model.gradient_checkpointing_enable()
    model.train()
    model(**batch).loss.backward()
    model.eval()
    while_checkpointing = model.generate(**inputs, max_new_tokens=6)
    model.gradient_checkpointing_disable()
    calls = len(spy)
    fast, reference = generate_both(model, **inputs, max_new_tokens=6)
    assert len(spy) == calls + 1 and torch.equal(fast, reference) and torch.equal(fast, while_checkpointing)


def test_greedy_with_a_generation_config_object_uses_the_fast_loop(model, tester, spy):
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=5, eos_token_id=model.generation_config.eos_token_id, pad_token_id=1)
    fast, reference = generate_both(model, **tester.prepare_generation_inputs((0, 0)), generation_config=config)
    assert len(spy) == 1 and torch.equal(fast, reference) and fast.shape[1] <= 5



@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_fast_greedy_runs_the_decoder_and_vision_linears_on_packed_weights(model, tester,
                                                                          monkeypatch):
    calls = []
    namespace = torch.ops.mkldnn
    original = namespace._linear_pointwise

    class RecordedLinear:
        def __call__(self, *args):
            calls.append(tuple(args[1].shape))
            return original(*args)

        def binary(self, *args):  # the product with a residual added inside it
            calls.append(tuple(args[2].shape))
            return original.binary(*args)

    class Recorder:  # torch.ops entries cannot be monkeypatched one by one: stand in for the namespace
        _linear_pointwise = RecordedLinear()

        def __getattr__(self, name):
            return getattr(namespace, name)

    monkeypatch.setattr(torch.ops, "mkldnn", Recorder(), raising=False)
    model.generate(**tester.prepare_generation_inputs((0,)), max_new_tokens=3)
    monkeypatch.undo()

    def shapes(*layers):  # the packed weights' shapes: (out_features, in_features), q/k/v stacked
        qkv = (3 * layers[0].q_proj.out_features, layers[0].q_proj.in_features)
        return [qkv] + [tuple(layer.weight.shape) for layer in layers[1:]]

    text = model.language_model.model.decoder.layers
    vision = model.vision_tower.vision_model.encoder.layers
    expected = Counter()
    for layer in text:  # each step: the prompt and 2 more tokens
        expected.update(3 * shapes(layer.self_attn, layer.self_attn.out_proj, layer.fc1, layer.fc2))
    expected[tuple(model.language_model.lm_head.weight.shape)] += 3
    for layer in vision:
        expected.update(shapes(layer.self_attn, layer.self_attn.out_proj, layer.mlp.fc1, layer.mlp.fc2))
    expected[tuple(model.vision_tower.visual_projection.weight.shape)] += 1
    assert Counter(calls) == expected


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_unchanged_weights_are_packed_once_when_the_model_is_put_in_eval_mode(model, tester, monkeypatch):
    packed = recorded_packing(monkeypatch)
    model = copy_of(model)  # put in eval mode: packed now, so that the first caption does not wait for it
    groups = len(decoding_linears(model.language_model)) + len(vision_linears(model.vision_tower))
    assert len(packed) == groups  # one pack per group, q/k/v stacked
    inputs = tester.prepare_generation_inputs((0, 0))
    first = model.generate(**inputs, max_new_tokens=4)
    second = model.generate(**inputs, max_new_tokens=4)
    assert len(packed) == groups and torch.equal(first, second)  # the calls pack nothing


@pytest.mark.parametrize(
    "how", ["optimizer step", "load_state_dict", "write through .data", "to bfloat16 and back", "biases only"]
)
def test_packed_weights_follow_changed_weights(model, tester, how):
    model = copy_of(model)
    inputs = tester.prepare_generation_inputs(PROMPT_LENGTHS)
    before = model.generate(**inputs, max_new_tokens=8)  # packs the weights
    decoder = model.language_model.model.decoder
    torch.manual_seed(1)
    if how == "biases only":  # the Linear layers' biases, nothing else
        linear_biases = {f"{name}.bias" for name, m in decoder.named_modules() if isinstance(m, torch.nn.Linear)}
        new_weights = {name: torch.randn_like(p) * 2 for name, p in decoder.named_parameters() if name in linear_biases}
    else:
        new_weights = {name: torch.randn_like(p) * 0.2 for name, p in decoder.named_parameters() if p.ndim == 2}
    if how in ("optimizer step", "biases only"):
        with torch.no_grad():
            for name, p in decoder.named_parameters():
                if name in new_weights:
                    p.add_(new_weights[name])
    elif how == "load_state_dict":
        state = decoder.state_dict()
        state.update({name: state[name] + value for name, value in new_weights.items()})
        decoder.load_state_dict(state)
    elif how == "write through .data":  # .data has a version counter of its own: the values must be checked
        for name, p in decoder.named_parameters():
            if name in new_weights:
                p.data.add_(new_weights[name])
    else:
        model.to(torch.bfloat16)
        model.generate(**tester.prepare_generation_inputs((0, 0, 0, 0)), max_new_tokens=2)
        model.to(torch.float32)
        with torch.no_grad():
            for name, p in decoder.named_parameters():
                if name in new_weights:
                    p.add_(new_weights[name])
    fast, reference = generate_both(model, **inputs, max_new_tokens=8)
    assert torch.equal(fast, reference)
    assert not torch.equal(fast, before)  # the change shows in the captions


def test_after_a_write_through_data_the_sample_misses_train_eval_packs_anew(model, tester):
    # The documented way out for writes through .data that the value sample misses (it reads a few elements a row).
    model = copy_of(model)
    inputs = tester.prepare_generation_inputs(PROMPT_LENGTHS)
    before = model.generate(**inputs, max_new_tokens=8)  # packs the weights
    for layer in model.language_model.model.decoder.layers:  # all but the first column: the sample reads only that
        layer.fc2.weight.data[:, 1:] *= -3.0
    model.train().eval()
    fast, reference = generate_both(model, **inputs, max_new_tokens=8)
    assert torch.equal(fast, reference) and not torch.equal(fast, before)


def test_inference_image_features_match_the_vision_tower(model, tester):
    pixel_values = tester.pixel_values(4)
    with torch.no_grad():
        lean = model.get_image_features(pixel_values)  # the last layer runs the class token alone
        reference = model.vision_tower(pixel_values=pixel_values).image_embeds
    torch.testing.assert_close(lean, reference, rtol=1e-5, atol=1e-5)
    assert lean.shape == reference.shape and not torch.equal(lean, torch.zeros_like(lean))
    changed = copy_of(model)  # a tower that trains (e.g. from scratch) gets its new weights packed
    with torch.no_grad():
        changed.vision_tower.vision_model.encoder.layers[0].mlp.fc1.weight.mul_(3.0)
        torch.testing.assert_close(changed.get_image_features(pixel_values),
                                   changed.vision_tower(pixel_values=pixel_values).image_embeds, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(changed.get_image_features(pixel_values), lean, atol=1e-3)
    with torch.enable_grad():  # training takes CLIP's own forward: gradients reach every token
        pixel_values.requires_grad_(True)
        model.get_image_features(pixel_values).sum().backward()
    assert pixel_values.grad is not None and pixel_values.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_a_write_through_data_to_any_one_row_is_packed_again():
    torch.manual_seed(0)
    linear = torch.nn.Linear(768, 1024)
    inputs = torch.randn(4, 768)
    for row in range(0, 1024, 7):
        PackedLinears([(linear,)])(linear, inputs)  # packed as it is now
        linear.weight.data[row] = torch.randn(768)  # .data: no version counter bump
        packed = PackedLinears([(linear,)])
        expected = torch.nn.functional.linear(inputs, linear.weight, linear.bias)
        torch.testing.assert_close(packed(linear, inputs), expected, rtol=1e-4, atol=1e-4)  # a stale row: off by ~1


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_pack_checks_compare_the_bits_of_the_values():
    linear = torch.nn.Linear(64, 32)
    linear.weight.data[0, 0] = float("nan")  # NaN != NaN as values: a value comparison would repack every call
    linear.weight.data[3, 0] = 0.0
    first = PackedLinears([(linear,)]).packed[(linear,)][0]
    assert PackedLinears([(linear,)]).packed[(linear,)][0] is first
    linear.weight.data[3, 0] = -0.0  # equal as values, another weight's sign bit
    assert PackedLinears([(linear,)]).packed[(linear,)][0] is not first


@pytest.mark.skipif(
    torch.bfloat16 not in packed_dtypes(), reason="oneDNN cannot pack bf16 on this CPU"
)
def test_bf16_quick_gelu_runs_inside_the_first_product_and_matches_clip(model, tester):
    model = copy_of(model).to(torch.bfloat16)
    layers = model.vision_tower.vision_model.encoder.layers
    packed = PackedLinears(vision_linears(model.vision_tower), [(layer.mlp.fc1, layer.mlp.fc2) for layer in layers])
    assert packed.swish_inputs == {layer.mlp.fc1 for layer in layers}  # the fused path is the one taken
    pixel_values = tester.pixel_values(4).to(torch.bfloat16)
    with torch.no_grad():
        fused = model.get_image_features(pixel_values).float()
        reference = model.vision_tower(pixel_values=pixel_values).image_embeds.float()
        fp32 = copy_of(model).float().vision_tower(pixel_values=pixel_values.float()).image_embeds
    # within bf16's own error of the fp32 result, as CLIP's bf16 forward is
    assert (fused - fp32).norm() / fp32.norm() < 2 * max((reference - fp32).norm() / fp32.norm(), 0.01)
    assert torch.nn.functional.cosine_similarity(fused, reference).min() > 0.99


def test_training_mode_gives_the_packed_copies_back(model, tester):
    model = copy_of(model)
    inputs = tester.prepare_generation_inputs((0, 0))
    first = model.generate(**inputs, max_new_tokens=4)
    groups = len(decoding_linears(model.language_model)) + len(vision_linears(model.vision_tower))
    assert len(packed_modules(model.modules())) == groups
    model.train()
    assert packed_modules(model.modules()) == []
    model.eval()
    assert torch.equal(model.generate(**inputs, max_new_tokens=4), first)  # packed again, same tokens


def test_under_autocast_the_fast_paths_step_aside(model, tester, spy):
    # The packed products would not follow autocast's casts: CLIP's forward and GenerationMixin run instead.
    batch = tester.prepare_generation_inputs(PROMPT_LENGTHS)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.get_image_features(batch["pixel_values"])
        reference = model.vision_tower(pixel_values=batch["pixel_values"]).image_embeds
        fast, generation_mixin = generate_both(model, **batch, max_new_tokens=6)
    assert features.dtype == torch.bfloat16 and torch.equal(features, reference)
    assert spy == [] and torch.equal(fast, generation_mixin)


def test_forward_hooks_are_called_and_heard(model, tester, spy):
    # The fast paths call few modules, so with a hook anywhere in the towers they step aside.
    batch = tester.prepare_generation_inputs((0, 0))
    plain = model.generate(**batch, max_new_tokens=4)
    calls = Counter()
    handles = [
        model.vision_tower.vision_model.encoder.layers[0].register_forward_pre_hook(lambda *_: calls.update(["vision"])),
        model.language_model.model.decoder.layers[0].register_forward_hook(lambda *_: calls.update(["decoder"])),
        model.language_model.lm_head.register_forward_hook(lambda module, inputs, logits: -logits),  # argmax -> argmin
        model.register_forward_hook(lambda *_: calls.update(["model"])),
    ]
    try:
        hooked = model.generate(**batch, max_new_tokens=4)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"vision": 1, "decoder": 4, "model": 4}  # the prompt's pass and three steps
    assert not torch.equal(hooked, plain) and len(spy) == 1  # only the call without hooks took the fast loop
    handle = model.register_forward_hook(lambda *_: calls.update(["model alone"]))  # a hook on the model alone
    try:
        assert torch.equal(model.generate(**batch, max_new_tokens=4), plain)
    finally:
        handle.remove()
    assert calls["model alone"] == 4 and len(spy) == 1
    assert torch.equal(model.generate(**batch, max_new_tokens=4), plain) and len(spy) == 2


def test_a_generation_config_object_takes_the_models_settings_it_leaves_unset(model, tester,
                                                                               spy):
    from transformers import GenerationConfig

    batch = tester.prepare_generation_inputs(PROMPT_LENGTHS)
    free = model.generate(**batch, max_new_tokens=10)
    model = copy_of(model)
    model.generation_config = copy.deepcopy(model.generation_config)
    eos = int(free[0, 2])  # row 0 stops at its third token or before
    model.generation_config.update(eos_token_id=eos, pad_token_id=1)
    fast, reference = generate_both(model, **batch, generation_config=GenerationConfig(max_new_tokens=10))
    assert len(spy) == 2 and torch.equal(fast, reference)
    first = int((free[0] == eos).nonzero()[0])
    assert fast[0, first] == eos and (fast[0, first + 1:] == 1).all()


def test_max_length_counts_the_image_prefix_and_prompt_and_yields_to_max_new_tokens(model, tester):
    batch = tester.prepare_generation_inputs((1, 1))
    input_length = model.config.num_image_tokens + batch["input_ids"].shape[1]
    assert model.generate(**batch, max_length=input_length + 3).shape == (2, 3)
    assert model.generate(**batch, max_length=input_length + 3, max_new_tokens=5).shape == (2, 5)
    with pytest.raises(ValueError, match=f"max_length={input_length} leaves no room"):
        model.generate(**batch, max_length=input_length)


def test_the_last_position_still_yields_a_token(model, tester):
    # The last new token is never fed back: a prompt that fills every position leaves room for exactly one.
    positions = model.config.text_config.max_position_embeddings
    prompt_length = positions - model.config.num_image_tokens
    pixel_values = tester.pixel_values(1)
    for free_positions, expected in ((0, 1), (1, 2)):
        input_ids = torch.full((1, prompt_length - free_positions), 5)
        input_ids[0, 0] = tester.bos_token_id
        fast, reference = generate_both(model, pixel_values=pixel_values, input_ids=input_ids, max_new_tokens=10)
        assert fast.shape == (1, expected) and torch.equal(fast, reference)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
@pytest.mark.parametrize("path", list(ONEDNN_OP_PATHS.values()))
def test_a_missing_onednn_op_turns_the_fast_path_off_with_one_warning(model, tester, spy,
                                                                      monkeypatch, path):
    # Another torch build, or a later torch, may lack a private op: generate works on, as with fast_greedy = False.
    batch = tester.prepare_generation_inputs(PROMPT_LENGTHS)
    plain = plain_generate(model, **batch, max_new_tokens=8)  # switched on again, it packed: the ops were found
    monkeypatch.setattr(torch.ops, "mkldnn", onednn_with(path, None), raising=False)
    reset_fast_path()  # the ops are looked up anew, as in a process whose torch lacks one
    with pytest.warns(RuntimeWarning) as records:
        model.train().eval()  # packs, as from_pretrained does
        first = model.generate(**batch, max_new_tokens=8)
        second = model.generate(**batch, max_new_tokens=8)
    warned = fast_path_warnings(records)
    assert len(warned) == 1 and f"torch.ops.mkldnn.{path} is missing" in warned[0], warned
    assert "plain path" in warned[0]
    assert torch.equal(first, plain) and torch.equal(second, plain)
    assert spy == [] and fast_path_off_reason() is not None  # the fast loop never ran
    assert packed_modules(model.modules()) == []


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
@pytest.mark.parametrize("path, when", [
    ("_linear_pointwise", "first"),  # in the vision tower
    ("_linear_pointwise", "middle"),  # while decoding
    ("_linear_pointwise", "last"),  # the last token's logits
    ("_linear_pointwise.binary", "middle"),
    ("_reorder_linear_weight", "middle"),  # while packing
    ("_is_mkldnn_bf16_supported", "first"),  # when the ops are looked up
])
def test_an_onednn_op_that_fails_midway_redoes_the_call_on_the_plain_path(model, tester,
                                                                          monkeypatch, path, when):
    # A failure at call time (a kernel this CPU or build refuses) mid-generate: no partial or mixed output, the whole
    # call again on the plain path, one warning, and the plain path from then on.
    batch = tester.prepare_generation_inputs(PROMPT_LENGTHS)
    plain = plain_generate(copy_of(model), **batch, max_new_tokens=8)
    op = functools.reduce(getattr, path.split("."), torch.ops.mkldnn)
    calls = []

    def counted(*args):
        calls.append(1)
        if len(calls) == fail_at:
            raise RuntimeError("could not create a primitive")
        return op(*args)

    fail_at = None  # first a call that fails nowhere: how many calls of the op one generate makes (packing included)
    monkeypatch.setattr(torch.ops, "mkldnn", onednn_with(path, counted), raising=False)
    reset_fast_path()  # the ops were looked up when `plain`'s model was put in eval mode: look up the stand-in
    assert torch.equal(copy_of(model).generate(**batch, max_new_tokens=8), plain)
    total, fail_at = len(calls), {"first": 1, "middle": len(calls) // 2 + 1, "last": len(calls)}[when]
    assert total >= (1 if when == "first" else 3)
    calls.clear()
    reset_fast_path()  # as in a fresh process: the ops are looked up again (the bf16 query is called then)
    with pytest.warns(RuntimeWarning) as records:
        model = copy_of(model)  # packs: a failure while packing turns the fast path off here
        failed_midway = model.generate(**batch, max_new_tokens=8)
        after = model.generate(**batch, max_new_tokens=8)
    warned = fast_path_warnings(records)
    assert len(warned) == 1 and f"torch.ops.mkldnn.{path} raised RuntimeError" in warned[0], warned
    assert torch.equal(failed_midway, plain) and torch.equal(after, plain)
    assert len(calls) == fail_at  # after the failure the op was never called again
    assert packed_modules(model.modules()) == []  # the packs made before the failure are given back


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
@pytest.mark.parametrize("change", ["half()", "to(bfloat16)", "to('cpu', dtype=float64)"])
def test_a_dtype_or_device_change_gives_the_packed_copies_back(model, tester, change):
    model = copy_of(model)
    batch = tester.prepare_generation_inputs(PROMPT_LENGTHS)
    model.generate(**batch, max_new_tokens=4)  # packs the weights
    assert len(packed_modules(model.modules())) == len(decoding_linears(model.language_model)) + len(
        vision_linears(model.vision_tower))
    dtype = {"half()": torch.float16, "to(bfloat16)": torch.bfloat16, "to('cpu', dtype=float64)": torch.float64}[change]
    if change == "half()":
        model.half()
    elif change == "to(bfloat16)":
        model.to(torch.bfloat16)
    else:
        model.to("cpu", dtype=torch.float64)
    assert model.dtype == dtype
    # no copy of the former weights is kept; in eval mode, weights of a dtype oneDNN packs are packed anew
    packed = packed_copy_dtypes(model.modules())
    assert packed == [dtype] * len(packed) and bool(packed) == (dtype in packed_dtypes())
    fast, reference = generate_both(model, **batch, max_new_tokens=8)
    assert torch.equal(fast, reference)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_a_conversion_that_changes_nothing_keeps_the_packs(model, tester, monkeypatch):
    packed = recorded_packing(monkeypatch)
    model = copy_of(model)
    before = packed_modules(model.modules())
    packed.clear()
    model.cpu().float().to(torch.float32).to("cpu")
    assert packed_modules(model.modules()) == before and before and packed == []  # nothing packed again
    model.to(torch.float64).to(torch.float32)  # a real change packs anew, once for the dtype it ends in
    assert len(packed) == len(before) and packed_copy_dtypes(model.modules()) == [torch.float32] * len(before)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_a_conversion_gives_the_packs_back_before_it_makes_the_new_weights(model):
    # Else the old packs and both copies of the weights would be in memory at once (+0.5-0.9 GB at full size).
    from torch.overrides import TorchFunctionMode

    model = copy_of(model)
    packs_seen = []

    class NotingThePacks(TorchFunctionMode):  # the packs alive at each Tensor.to call of the conversion
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.to:
                packs_seen.append(len(packed_modules(model.modules())))
            return func(*args, **(kwargs or {}))

    with NotingThePacks():
        model.to(torch.float64)
    assert packs_seen[0] > 0  # the check of whether it converts: one small parameter, the packs still there
    assert len(packs_seen) > 2 and set(packs_seen[1:]) == {0}  # then every tensor converted without them
    assert model.dtype == torch.float64


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_switching_the_fast_path_off_gives_the_packs_back_and_on_packs_again(model, tester):
    model = copy_of(model)
    groups = len(decoding_linears(model.language_model)) + len(vision_linears(model.vision_tower))
    assert len(packed_modules(model.modules())) == groups
    model.fast_greedy = False
    assert packed_modules(model.modules()) == []
    model.eval()  # a model switched off stays unpacked, in eval mode too
    assert packed_modules(model.modules()) == []
    model.fast_greedy = True
    assert len(packed_modules(model.modules())) == groups


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_with_hooks_eval_packs_only_what_the_fast_path_will_run(model, tester):
    model = copy_of(model).train()
    handle = model.language_model.model.decoder.layers[0].register_forward_hook(lambda *_: None)
    try:
        model.eval()  # decoding takes GenerationMixin for the hook; the image features take the fast path
        assert packed_modules(model.language_model.modules()) == []
        assert len(packed_modules(model.vision_tower.modules())) == len(vision_linears(model.vision_tower))
        model.train()
        in_the_tower = model.vision_tower.vision_model.encoder.layers[0].register_forward_hook(lambda *_: None)
        model.eval()  # CLIP's forward runs too
        in_the_tower.remove()
        assert packed_modules(model.modules()) == []
    finally:
        handle.remove()
    model.generate(**tester.prepare_generation_inputs((0, 0)), max_new_tokens=4)  # hooks gone: packed at the call
    assert len(packed_modules(model.modules())) == len(decoding_linears(model.language_model)) + len(
        vision_linears(model.vision_tower))
    handle = model.language_model.lm_head.register_forward_hook(lambda *_: None)  # a hook on a packed model:
    try:
        model.eval()  # the decoder's packs are given back, the tower's kept
        assert packed_modules(model.language_model.modules()) == []
        assert len(packed_modules(model.vision_tower.modules())) == len(vision_linears(model.vision_tower))
    finally:
        handle.remove()
    model.eval()
    assert len(packed_modules(model.modules())) == len(decoding_linears(model.language_model)) + len(
        vision_linears(model.vision_tower))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_a_submodule_moved_alone_drops_its_packs_at_the_next_call(model, tester):
    # model.language_model.half() does not go through the model's _apply: the next call drops what it cannot pack.
    model = copy_of(model)
    batch = tester.prepare_generation_inputs(PROMPT_LENGTHS)
    model.generate(**batch, max_new_tokens=4)
    assert packed_modules(model.language_model.modules())
    model.language_model.half()
    fast, reference = generate_both(model, **batch, max_new_tokens=8)
    assert torch.equal(fast, reference)
    assert packed_modules(model.language_model.modules()) == []
    assert len(packed_modules(model.vision_tower.modules())) == len(vision_linears(model.vision_tower))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_a_device_change_gives_the_packed_copies_back(model, tester):
    model = copy_of(model)
    model.generate(**tester.prepare_generation_inputs((0, 0)), max_new_tokens=4)
    assert packed_modules(model.modules())
    model.to("meta")  # a device change through the same path as .to("cuda"), on a machine without a GPU
    assert packed_modules(model.modules()) == []


# --- which weights are packed: the rule, and every path's tokens ----------------------------------------------------


@pytest.mark.parametrize("pack_weights, packable, expected", [
    (None, (torch.float32, torch.bfloat16), (torch.bfloat16,)),  # the default: bf16 where oneDNN packs it
    (None, (torch.float32,), ()),  # no bf16 instructions: nothing (fp32 is not worth a second copy by default)
    (True, (torch.float32, torch.bfloat16), (torch.float32, torch.bfloat16)),
    (True, (torch.float32,), (torch.float32,)),
    (False, (torch.float32, torch.bfloat16), ()),
    (None, (), ()), (True, (), ()),  # oneDNN missing or the fast path off
])
def test_dtypes_to_pack_follow_the_rule(pack_weights, packable, expected):
    assert fast_generation_moda.dtypes_to_pack(pack_weights, packable) == expected


@pytest.mark.parametrize("pack_weights", [None, True, False])
def test_every_path_writes_the_plain_paths_tokens_in_fp32(model, tester, pack_weights):
    model = copy_of(model)
    model.pack_weights = pack_weights
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    batch = tester.prepare_generation_inputs(PROMPT_LENGTHS)
    fast, reference = generate_both(model, **batch, max_new_tokens=10)
    assert torch.equal(fast, reference)
    packed = packed_modules(model.modules())
    assert bool(packed) == (pack_weights is True and torch.float32 in packed_dtypes())
    after = model.state_dict()  # packing copies the weights and leaves the model's own as they were
    assert state.keys() == after.keys() and all(torch.equal(state[name], after[name]) for name in state)


@pytest.mark.skipif(torch.bfloat16 not in packed_dtypes(), reason="oneDNN cannot pack bf16 on this CPU")
def test_by_default_a_bf16_model_in_eval_mode_is_packed_and_an_fp32_one_is_not(model):
    model = copy_of(model)
    model.pack_weights = None
    model.train().eval()
    assert packed_modules(model.modules()) == []  # fp32: the modules' own weights
    model.to(torch.bfloat16)  # in eval mode: packed for the new dtype now
    packed = packed_copy_dtypes(model.modules())
    groups = len(decoding_linears(model.language_model)) + len(vision_linears(model.vision_tower))
    assert packed == [torch.bfloat16] * groups


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN (mkldnn)")
def test_a_loaded_model_is_packed_before_its_first_caption(model, tester, tmp_path, monkeypatch):
    model.save_pretrained(tmp_path)
    packed = recorded_packing(monkeypatch)
    loaded = MODAForConditionalGeneration.from_pretrained(tmp_path)  # pack_weights = True here (packs_fp32)
    after_loading = len(packed)
    assert after_loading == len(decoding_linears(loaded.language_model)) + len(vision_linears(loaded.vision_tower))
    loaded.generate(**tester.prepare_generation_inputs((0, 3)), max_new_tokens=4)
    assert len(packed) == after_loading  # the first caption packs nothing
