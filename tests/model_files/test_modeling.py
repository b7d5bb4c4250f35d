"""MODA's model: shapes, loss masking, generation modes, save/load, freezing, backbones (tiny configs).

What each test needs:
- Most tests need only the root model files, transformers and torch: their tiny model, configs and inputs come from
  `MODAModelTester` (tests/model_files/model_tester.py), built from plain dicts with no tokenizer, no workshop
  (`moda`) import and no files but a pytest tmp_path where a test saves.
- Processor and tokenizer integration (a trained tokenizer and MODAProcessor; the session fixtures of
  tests/conftest.py, which build through the workshop): test_loss_covers_only_description_and_eos (the processor's
  labels score the description and its EOS), test_processor_loads_directly_without_the_remote_code_question and
  test_processor_from_backbones_reads_the_backbone_folders.
"""

import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection, CLIPModel,
                          OPTConfig, OPTForCausalLM)

from configuration_moda import MODAConfig
from modeling_moda import MODAForConditionalGeneration, MODAProjector
from processing_moda import MODAProcessor
from tests.model_files.model_tester import IGNORE_INDEX, MODAModelTester, moda_around_opt


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory, model):
    """The tiny model saved (model.save_pretrained alone: no processor)."""
    path = tmp_path_factory.mktemp("tiny-moda-model")
    model.save_pretrained(path)
    return path


def test_default_config_is_full_size_clip_b32_and_opt125m():
    config = MODAConfig()
    assert config.vision_config.patch_size == 32 and config.vision_config.hidden_size == 768
    assert config.vision_config.projection_dim == 512 == config.image_embed_dim
    assert config.text_config.hidden_size == 768 and config.text_config.num_hidden_layers == 12
    assert config.num_image_tokens == 1


def test_full_size_model_builds_with_about_217m_parameters():
    model = MODAForConditionalGeneration(MODAConfig())
    n = sum(p.numel() for p in model.parameters())
    assert 210e6 < n < 225e6, n
    assert isinstance(model.projector, MODAProjector)
    assert model.projector.linear_1.in_features == 512 and model.projector.linear_1.out_features == 4 * 768
    assert model.projector.linear_2.out_features == 768


def test_tiny_model_is_under_one_million_parameters(model):
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_mismatched_image_embed_dim_is_a_clear_error(tester):
    with pytest.raises(ValueError, match="projection_dim"):
        MODAConfig(vision_config=tester.get_vision_config(), text_config=tester.get_text_config(), image_embed_dim=999)


@pytest.mark.parametrize("num_image_tokens", [1, 3])
def test_forward_shapes(num_image_tokens):
    tester = MODAModelTester(num_image_tokens=num_image_tokens)
    config, batch = tester.prepare_config_and_inputs(prompt_lengths=(0, 0), description_lengths=(1, 4))
    model = MODAForConditionalGeneration(config).eval()
    out = model(**batch)
    seq = batch["input_ids"].shape[1]
    assert out.logits.shape == (2, num_image_tokens + seq, tester.vocab_size)
    assert out.image_embeds.shape == (2, config.image_embed_dim)
    assert out.attention_mask.shape == (2, num_image_tokens + seq)
    assert torch.isfinite(out.loss)


def test_loss_is_the_cross_entropy_of_the_labelled_positions_only(tester, model):
    _, batch = tester.prepare_config_and_inputs(prompt_lengths=(5, 0), description_lengths=(1, 2))
    out = model(**batch)
    # Recompute the loss by hand from the labels the model used: the prefix, BOS, prompt and pads are -100.
    labels = torch.cat([torch.full((2, 1), IGNORE_INDEX), batch["labels"]], dim=1)
    expected = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    torch.testing.assert_close(out.loss, expected)
    # Tokens whose label is -100 (BOS, the prompt, pads) are never scored: other targets there leave the loss as it is.
    ignored = batch["labels"] == IGNORE_INDEX
    other_targets = torch.where(ignored, torch.full_like(batch["labels"], IGNORE_INDEX), batch["labels"])
    torch.testing.assert_close(model(**{**batch, "labels": other_targets}).loss, out.loss)
    scored = batch["labels"].clone()
    scored[0, 1] = batch["input_ids"][0, 2]  # one prompt position scored after all: the loss changes
    assert not torch.allclose(model(**{**batch, "labels": scored}).loss, out.loss)


def test_loss_covers_only_description_and_eos(tiny_model_and_processor, product_images):
    """Processor integration: the processor's labels score the description's tokens and its EOS, nothing else."""
    model, processor = tiny_model_and_processor
    batch = processor(
        images=product_images[:2], text=["What colour is this item?", None], descriptions=["Red", "Black Shoes"]
    )
    out = model(**batch)
    # Recompute the loss by hand from the labels the model used: the prefix, BOS, prompt and pads are -100.
    labels = torch.cat([torch.full((2, 1), -100), batch["labels"]], dim=1)
    expected = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)
    tok = processor.tokenizer
    scored = batch["labels"][batch["labels"] != -100].tolist()
    red = tok(" Red", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    black = tok("Black Shoes", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert scored == red + black
    # Changing the prompt's tokens' targets cannot change the loss: they are never scored.
    assert (batch["labels"][0, : len(tok("What colour is this item?")["input_ids"])] == -100).all()


def test_left_padding_in_training_batches_moves_pads_before_the_prefix(tester, model):
    lengths = dict(prompt_lengths=(0, 0), description_lengths=(1, 5))  # row 0 is the shorter: it gets pads
    _, right = tester.prepare_config_and_inputs(**lengths)
    _, left = tester.prepare_config_and_inputs(**lengths, padding_side="left")
    assert torch.equal(right["pixel_values"], left["pixel_values"]) and left["attention_mask"][0, 0] == 0
    out_right = model(**right)
    out_left = model(**left)
    torch.testing.assert_close(out_left.loss, out_right.loss, rtol=1e-5, atol=1e-5)
    assert out_left.attention_mask[0, 0] == 0  # the pads come first, before the image prefix


def test_generation_greedy_beam_and_sampling(tester, model):
    pv = tester.pixel_values()
    greedy = model.generate(pixel_values=pv, max_new_tokens=6)
    assert greedy.shape[0] == 2 and 1 <= greedy.shape[1] <= 6
    beams = model.generate(pixel_values=pv, max_new_tokens=6, num_beams=3)
    assert beams.shape[0] == 2
    torch.manual_seed(0)
    sampled = model.generate(pixel_values=pv, max_new_tokens=6, do_sample=True, top_k=20)
    torch.manual_seed(0)
    sampled_again = model.generate(pixel_values=pv, max_new_tokens=6, do_sample=True, top_k=20)
    assert torch.equal(sampled, sampled_again)
    # Different images give different descriptions (the image really conditions the text).
    assert not torch.equal(greedy[0], greedy[1])


def test_cached_and_uncached_generation_agree(tester, model):
    pv = tester.pixel_values(seed=3)
    cached = model.generate(pixel_values=pv, max_new_tokens=8, use_cache=True)
    uncached = model.generate(pixel_values=pv, max_new_tokens=8, use_cache=False)
    assert torch.equal(cached, uncached)


def test_batched_generation_with_prompts_of_different_lengths_matches_one_by_one(tester, model):
    batch = tester.prepare_generation_inputs(prompt_lengths=(6, 0, 7))
    assert (batch["attention_mask"] == 0).any()  # the prompts really are left-padded
    batched = model.generate(**batch, max_new_tokens=8)
    for row in range(3):
        keep = batch["attention_mask"][row].bool()  # the row alone, without its pads
        single = model.generate(pixel_values=batch["pixel_values"][row:row + 1],
                                input_ids=batch["input_ids"][row:row + 1, keep], max_new_tokens=8)[0]
        # the same tokens; where the row alone stopped early (at EOS), the batch pads the rest
        assert torch.equal(batched[row, :len(single)], single), row
        if len(single) < batched.shape[1]:
            assert single[-1] == tester.eos_token_id and (batched[row, len(single):] == tester.pad_token_id).all()


def test_generate_without_an_image_is_a_clear_error(model):
    with pytest.raises(ValueError, match="pixel_values"):
        model.generate(input_ids=torch.tensor([[0]]))
    with pytest.raises(ValueError, match="pixel_values"):
        model(input_ids=torch.tensor([[0, 5]]))


def test_wrong_pixel_values_are_clear_errors(model):
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.generate(pixel_values=[[1.0]])
    with pytest.raises(TypeError, match="real numbers"):
        model.generate(pixel_values=torch.zeros(1, 3, 32, 32, dtype=torch.complex64))
    with pytest.raises(ValueError, match="shape"):
        model.generate(pixel_values=torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        model.generate(pixel_values=torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="image_embeds must have shape"):
        model.generate(image_embeds=torch.zeros(1, 7))


def test_prompt_longer_than_the_decoder_allows_is_a_clear_error(tester, model):
    too_long = torch.ones(1, model.config.text_config.max_position_embeddings, dtype=torch.long)
    with pytest.raises(ValueError, match="The prompt is .* positions"):
        model.generate(pixel_values=tester.pixel_values(1), input_ids=too_long)
    with pytest.raises(ValueError, match=r"The training sequence \(prompt and description\) is .* positions"):
        model(pixel_values=tester.pixel_values(1), input_ids=too_long, labels=too_long)


def test_image_embeds_path_equals_pixel_values_path(tester, model):
    pv = tester.pixel_values()
    embeds = model.get_image_features(pv)
    assert embeds.shape == (2, model.config.image_embed_dim)
    assert torch.equal(
        model.generate(pixel_values=pv, max_new_tokens=6),
        model.generate(image_embeds=embeds, max_new_tokens=6),
    )


def test_save_load_round_trip_keeps_every_tensor_ties_and_outputs(tester, model, saved_model_dir):
    loaded = MODAForConditionalGeneration.from_pretrained(saved_model_dir).eval()
    original = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    lm = loaded.language_model
    assert lm.lm_head.weight.data_ptr() == lm.model.decoder.embed_tokens.weight.data_ptr()
    pv = tester.pixel_values()
    ids = torch.tensor([[0, 5, 6]] * 2)
    torch.testing.assert_close(loaded(pixel_values=pv, input_ids=ids).logits,
                               model(pixel_values=pv, input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_saved_folder_has_safetensors_code_auto_map_and_pipeline(saved_model_dir):
    import json

    files = {p.name for p in saved_model_dir.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert {"configuration_moda.py", "modeling_moda.py", "processing_moda.py", "pipeline_moda.py",
            "fast_generation_moda.py"} <= files
    config = json.loads((saved_model_dir / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoProcessor"}
    assert config["custom_pipelines"]["image-to-text"]["impl"] == "pipeline_moda.MODAImageToTextPipeline"
    # Tied weights are stored once.
    assert not any(key.endswith("lm_head.weight") for key in load_file(saved_model_dir / "model.safetensors"))


def test_processor_loads_directly_without_the_remote_code_question(tiny_moda_dir, tiny_model_and_processor,
                                                                   monkeypatch):
    """MODAProcessor.from_pretrained needs none of the folder's code: it must not ask whether to run it."""
    import transformers.models.auto.configuration_auto as configuration_auto

    def asked(*args, **kwargs):
        raise AssertionError("MODAProcessor.from_pretrained asked whether to run the folder's remote code")

    monkeypatch.setattr(configuration_auto, "resolve_trust_remote_code", asked)
    loaded = MODAProcessor.from_pretrained(tiny_moda_dir)
    _, processor = tiny_model_and_processor
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert loaded(text=["red"])["input_ids"].tolist() == processor(text=["red"])["input_ids"].tolist()


def test_vision_tower_is_frozen_after_init_and_after_load(model, saved_model_dir):
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    loaded = MODAForConditionalGeneration.from_pretrained(saved_model_dir)
    assert not any(p.requires_grad for p in loaded.vision_tower.parameters())
    assert all(p.requires_grad for p in loaded.projector.parameters())
    assert all(p.requires_grad for p in loaded.language_model.parameters())


def test_gradient_checkpointing_gives_the_same_gradients(tester):
    # A model of its own: checkpointing changes the model (flags, and hooks under transformers 5).
    model = tester.create_model()
    _, batch = tester.prepare_config_and_inputs(prompt_lengths=(0,), description_lengths=(6,))
    model.train()
    model.zero_grad()
    model(**batch).loss.backward()
    plain = model.projector.linear_1.weight.grad.clone()
    model.gradient_checkpointing_enable()
    assert model.language_model.model.decoder.gradient_checkpointing
    model.zero_grad()
    model(**batch).loss.backward()
    torch.testing.assert_close(model.projector.linear_1.weight.grad, plain)


def forward_hooked_modules(model):
    return [name for name, module in model.named_modules() if module._forward_hooks or module._forward_pre_hooks]


@pytest.mark.parametrize("disable", ["gradient_checkpointing_disable", "activation_checkpointing_disable"])
def test_disabling_gradient_checkpointing_leaves_no_hooks_behind(tester, disable):
    # transformers 5 hooks the input embeddings when checkpointing is enabled and, without PEFT, keeps the hooks when
    # it is disabled: MODA removes them, else its fast path would step aside for good (test_fast_generation.py).
    model = tester.create_model()
    if not hasattr(model, disable):
        pytest.skip(f"this transformers has no {disable}")
    _, batch = tester.prepare_config_and_inputs()
    enable = disable.replace("_disable", "_enable")
    getattr(model, enable)()
    model.train()
    model(**batch).loss.backward()  # training still works with checkpointing (and the hooks, where added)
    getattr(model, disable)()
    assert not model.language_model.model.decoder.gradient_checkpointing
    assert forward_hooked_modules(model) == []
    getattr(model, disable)()  # disabling again is harmless
    getattr(model, enable)()  # and enabling again works
    assert model.language_model.model.decoder.gradient_checkpointing
    model.zero_grad()
    model(**batch).loss.backward()
    assert model.projector.linear_1.weight.grad is not None


def test_disabling_gradient_checkpointing_keeps_the_models_other_hooks(tester):
    model = tester.create_model()
    handle = model.language_model.lm_head.register_forward_hook(lambda *_: None)
    try:
        model.gradient_checkpointing_enable()
        model.gradient_checkpointing_disable()
        assert forward_hooked_modules(model) == ["language_model.lm_head"]
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def tiny_backbone_dirs(tmp_path_factory, tester):
    """Tiny CLIP (full CLIPModel and vision-with-projection) and OPT checkpoints saved as on the Hub (no tokenizer)."""
    root = tmp_path_factory.mktemp("backbones")
    vision = tester.get_vision_config()
    clip_config = CLIPConfig(
        vision_config=vision,
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=99),
        projection_dim=vision["projection_dim"],
    )
    torch.manual_seed(1)
    CLIPModel(clip_config).save_pretrained(root / "clip-full")
    CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)).save_pretrained(root / "clip-vision")
    OPTForCausalLM(OPTConfig(**tester.get_text_config())).save_pretrained(root / "opt")
    size = tester.image_size
    for name in ("clip-full", "clip-vision"):
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
            root / name)
    return root


@pytest.mark.parametrize("clip_dir", ["clip-full", "clip-vision"])
def test_from_backbones_loads_the_pretrained_weights(tester, tiny_backbone_dirs, clip_dir):
    model = MODAForConditionalGeneration.from_backbones(
        vision_model=str(tiny_backbone_dirs / clip_dir), text_model=str(tiny_backbone_dirs / "opt")
    )
    clip = CLIPVisionModelWithProjection.from_pretrained(tiny_backbone_dirs / "clip-vision") if clip_dir == "clip-vision" else None
    full = CLIPModel.from_pretrained(tiny_backbone_dirs / "clip-full") if clip_dir == "clip-full" else None
    opt = OPTForCausalLM.from_pretrained(tiny_backbone_dirs / "opt")
    pixel_values = tester.pixel_values(1)
    with torch.no_grad():
        expected = full.get_image_features(pixel_values=pixel_values) if full is not None else clip(pixel_values).image_embeds
        if not isinstance(expected, torch.Tensor):  # transformers 5 returns an output object
            expected = expected.pooler_output
        torch.testing.assert_close(model.get_image_features(pixel_values), expected)
    for name, tensor in opt.state_dict().items():
        assert torch.equal(model.language_model.state_dict()[name], tensor), name
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert model.config.image_embed_dim == model.config.vision_config.projection_dim
    ids = model.generate(pixel_values=pixel_values, max_new_tokens=4)
    assert ids.shape[0] == 1


@pytest.mark.parametrize("clip_dir", ["clip-full", "clip-vision"])
def test_processor_from_backbones_reads_the_backbone_folders(tiny_backbone_dirs, tiny_tokenizer, tmp_path, clip_dir,
                                                             red_image):
    """Processor integration: MODAProcessor.from_backbones on the same folders (the OPT one with a tokenizer) gives
    the inputs the model from_backbones describes."""
    opt_dir = shutil.copytree(tiny_backbone_dirs / "opt", tmp_path / "opt")
    tiny_tokenizer.save_pretrained(opt_dir)
    model = MODAForConditionalGeneration.from_backbones(vision_model=str(tiny_backbone_dirs / clip_dir),
                                                        text_model=str(opt_dir))
    processor = MODAProcessor.from_backbones(str(tiny_backbone_dirs / clip_dir), str(opt_dir))
    assert processor.tokenizer.get_vocab() == tiny_tokenizer.get_vocab()
    inputs = processor(images=red_image)
    size = model.config.vision_config.image_size
    assert inputs["pixel_values"].shape == (1, 3, size, size)
    ids = model.generate(**inputs, max_new_tokens=4)
    assert ids.shape[0] == 1


def test_from_backbones_rejects_a_non_clip_vision_checkpoint(tiny_backbone_dirs):
    with pytest.raises(ValueError, match="CLIP checkpoint"):
        MODAForConditionalGeneration.from_backbones(
            vision_model=str(tiny_backbone_dirs / "opt"), text_model=str(tiny_backbone_dirs / "opt")
        )


def test_image_prefix_tokens_have_the_token_embedding_width_when_opt_projects_its_embeddings():
    # OPT-350m's layout: 16-d token embeddings, project_in to the 32-d layers
    model = moda_around_opt(OPTConfig(vocab_size=64, hidden_size=32, word_embed_proj_dim=16, num_hidden_layers=1,
                                      num_attention_heads=2, ffn_dim=64, max_position_embeddings=32))
    _, prefix = model.get_image_prefix(image_embeds=torch.randn(2, 24))
    assert prefix.shape == (2, 1, 16)
    output = model(image_embeds=torch.randn(2, 24), input_ids=torch.tensor([[2, 5, 7], [2, 9, 4]]))
    assert output.logits.shape == (2, 4, 64)
