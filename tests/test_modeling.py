"""MODA's model: shapes, loss masking, generation modes, save/load, freezing, backbones (tiny configs)."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection, OPTForCausalLM

from configuration_moda import MODAConfig
from modeling_moda import MODAForConditionalGeneration, MODAProjector
from moda.build import config_for_size, image_processor_for
from processing_moda import MODAProcessor


class MODAModelTester:
    """Builds inputs for a tiny MODA, in the manner of transformers' model testers."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor
        self.config = model.config

    def pixel_values(self, batch=2, seed=0):
        size = self.config.vision_config.image_size
        return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))

    def training_batch(self, images, prompts=None, descriptions=("Black Sports Shoes for Men - Footwear Shoes",)):
        return self.processor(images=images, text=prompts, descriptions=list(descriptions))


@pytest.fixture
def tester(tiny_model_and_processor):
    return MODAModelTester(*tiny_model_and_processor)


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


def test_tiny_model_is_under_one_million_parameters(tester):
    assert sum(p.numel() for p in tester.model.parameters()) < 1_000_000


def test_mismatched_image_embed_dim_is_a_clear_error(tiny_tokenizer):
    config = config_for_size("test", tiny_tokenizer)
    with pytest.raises(ValueError, match="projection_dim"):
        MODAConfig(vision_config=config.vision_config, text_config=config.text_config, image_embed_dim=999)


@pytest.mark.parametrize("num_image_tokens", [1, 3])
def test_forward_shapes(tiny_tokenizer, product_images, num_image_tokens):
    config = config_for_size("test", tiny_tokenizer, num_image_tokens=num_image_tokens)
    model = MODAForConditionalGeneration(config).eval()
    processor = MODAProcessor(image_processor=image_processor_for(config), tokenizer=tiny_tokenizer)
    batch = processor(images=product_images[:2], descriptions=["Red Dress", "Black Casual Sports Shoes"])
    out = model(**batch)
    seq = batch["input_ids"].shape[1]
    assert out.logits.shape == (2, num_image_tokens + seq, len(tiny_tokenizer))
    assert out.image_embeds.shape == (2, config.image_embed_dim)
    assert out.attention_mask.shape == (2, num_image_tokens + seq)
    assert torch.isfinite(out.loss)


def test_loss_covers_only_description_and_eos(tester, product_images):
    model = tester.model
    batch = tester.processor(
        images=product_images[:2], text=["What colour is this item?", None], descriptions=["Red", "Black Shoes"]
    )
    out = model(**batch)
    # Recompute the loss by hand from the labels the model used: the prefix, BOS, prompt and pads are -100.
    labels = torch.cat([torch.full((2, 1), -100), batch["labels"]], dim=1)
    expected = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)
    tok = tester.processor.tokenizer
    scored = batch["labels"][batch["labels"] != -100].tolist()
    red = tok(" Red", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    black = tok("Black Shoes", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert scored == red + black
    # Changing the prompt's tokens' targets cannot change the loss: they are never scored.
    assert (batch["labels"][0, : len(tok("What colour is this item?")["input_ids"])] == -100).all()


def test_left_padding_in_training_batches_moves_pads_before_the_prefix(tester, product_images):
    batch = tester.processor(images=product_images[:2], descriptions=["Red", "Black Casual Sports Shoes"])
    out_right = tester.model(**batch)
    left = tester.processor.pad(
        tester.processor.encode_examples([None, None], ["Red", "Black Casual Sports Shoes"]), padding_side="left"
    )
    out_left = tester.model(pixel_values=batch["pixel_values"], **left)
    torch.testing.assert_close(out_left.loss, out_right.loss, rtol=1e-5, atol=1e-5)
    assert out_left.attention_mask[0, 0] == 0  # the pads come first, before the image prefix


def test_generation_greedy_beam_and_sampling(tester):
    pv = tester.pixel_values()
    greedy = tester.model.generate(pixel_values=pv, max_new_tokens=6)
    assert greedy.shape[0] == 2 and 1 <= greedy.shape[1] <= 6
    beams = tester.model.generate(pixel_values=pv, max_new_tokens=6, num_beams=3)
    assert beams.shape[0] == 2
    torch.manual_seed(0)
    sampled = tester.model.generate(pixel_values=pv, max_new_tokens=6, do_sample=True, top_k=20)
    torch.manual_seed(0)
    sampled_again = tester.model.generate(pixel_values=pv, max_new_tokens=6, do_sample=True, top_k=20)
    assert torch.equal(sampled, sampled_again)
    # Different images give different descriptions (the image really conditions the text).
    assert not torch.equal(greedy[0], greedy[1])


def test_cached_and_uncached_generation_agree(tester):
    pv = tester.pixel_values(seed=3)
    cached = tester.model.generate(pixel_values=pv, max_new_tokens=8, use_cache=True)
    uncached = tester.model.generate(pixel_values=pv, max_new_tokens=8, use_cache=False)
    assert torch.equal(cached, uncached)


def test_batched_generation_with_prompts_of_different_lengths_matches_one_by_one(tester, product_images):
    prompts = ["What colour is this item?", None, "What kind of product is this?"]
    batch = tester.processor(images=product_images[:3], text=prompts)
    batched = tester.processor.batch_decode(tester.model.generate(**batch, max_new_tokens=8))
    single = [
        tester.processor.batch_decode(tester.model.generate(**tester.processor(images=image, text=prompt), max_new_tokens=8))[0]
        for image, prompt in zip(product_images[:3], prompts)
    ]
    assert batched == single


def test_generate_without_an_image_is_a_clear_error(tester):
    with pytest.raises(ValueError, match="pixel_values"):
        tester.model.generate(input_ids=torch.tensor([[0]]))
    with pytest.raises(ValueError, match="pixel_values"):
        tester.model(input_ids=torch.tensor([[0, 5]]))


def test_wrong_pixel_values_are_clear_errors(tester):
    with pytest.raises(TypeError, match="torch.Tensor"):
        tester.model.generate(pixel_values=[[1.0]])
    with pytest.raises(TypeError, match="real numbers"):
        tester.model.generate(pixel_values=torch.zeros(1, 3, 32, 32, dtype=torch.complex64))
    with pytest.raises(ValueError, match="shape"):
        tester.model.generate(pixel_values=torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        tester.model.generate(pixel_values=torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="image_embeds must have shape"):
        tester.model.generate(image_embeds=torch.zeros(1, 7))


def test_prompt_longer_than_the_decoder_allows_is_a_clear_error(tester):
    too_long = torch.ones(1, tester.config.text_config.max_position_embeddings, dtype=torch.long)
    with pytest.raises(ValueError, match="The prompt is .* positions"):
        tester.model.generate(pixel_values=tester.pixel_values(1), input_ids=too_long)
    with pytest.raises(ValueError, match=r"The training sequence \(prompt and description\) is .* positions"):
        tester.model(pixel_values=tester.pixel_values(1), input_ids=too_long, labels=too_long)


def test_image_embeds_path_equals_pixel_values_path(tester):
    pv = tester.pixel_values()
    embeds = tester.model.get_image_features(pv)
    assert embeds.shape == (2, tester.config.image_embed_dim)
    assert torch.equal(
        tester.model.generate(pixel_values=pv, max_new_tokens=6),
        tester.model.generate(image_embeds=embeds, max_new_tokens=6),
    )


def test_save_load_round_trip_keeps_every_tensor_ties_and_outputs(tester, tiny_moda_dir):
    loaded = MODAForConditionalGeneration.from_pretrained(tiny_moda_dir).eval()
    original = tester.model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    lm = loaded.language_model
    assert lm.lm_head.weight.data_ptr() == lm.model.decoder.embed_tokens.weight.data_ptr()
    pv = tester.pixel_values()
    ids = torch.tensor([[0, 5, 6]] * 2)
    torch.testing.assert_close(loaded(pixel_values=pv, input_ids=ids).logits,
                               tester.model(pixel_values=pv, input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_saved_folder_has_safetensors_code_auto_map_and_pipeline(tiny_moda_dir):
    import json

    files = {p.name for p in tiny_moda_dir.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert {"configuration_moda.py", "modeling_moda.py", "processing_moda.py", "pipeline_moda.py",
            "fast_generation_moda.py"} <= files
    config = json.loads((tiny_moda_dir / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageTextToText", "AutoProcessor"}
    assert config["custom_pipelines"]["image-to-text"]["impl"] == "pipeline_moda.MODAImageToTextPipeline"
    # Tied weights are stored once.
    assert not any(key.endswith("lm_head.weight") for key in load_file(tiny_moda_dir / "model.safetensors"))


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


def test_vision_tower_is_frozen_after_init_and_after_load(tiny_moda_dir):
    loaded = MODAForConditionalGeneration.from_pretrained(tiny_moda_dir)
    assert not any(p.requires_grad for p in loaded.vision_tower.parameters())
    assert all(p.requires_grad for p in loaded.projector.parameters())
    assert all(p.requires_grad for p in loaded.language_model.parameters())


def test_gradient_checkpointing_gives_the_same_gradients(tester, product_images):
    batch = tester.training_batch(product_images[:1])
    model = tester.model
    model.train()
    try:
        model.zero_grad()
        model(**batch).loss.backward()
        plain = model.projector.linear_1.weight.grad.clone()
        model.gradient_checkpointing_enable()
        assert model.language_model.model.decoder.gradient_checkpointing
        model.zero_grad()
        model(**batch).loss.backward()
        torch.testing.assert_close(model.projector.linear_1.weight.grad, plain)
    finally:
        model.gradient_checkpointing_disable()
        model.zero_grad()
        model.eval()


@pytest.fixture(scope="module")
def tiny_backbone_dirs(tmp_path_factory, tiny_tokenizer):
    """Tiny CLIP (full CLIPModel and vision-with-projection) and OPT checkpoints saved as on the Hub."""
    root = tmp_path_factory.mktemp("backbones")
    reference = config_for_size("test", tiny_tokenizer)
    vision = reference.vision_config.to_dict()
    clip_config = CLIPConfig(
        vision_config=vision,
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=99),
        projection_dim=vision["projection_dim"],
    )
    torch.manual_seed(1)
    CLIPModel(clip_config).save_pretrained(root / "clip-full")
    CLIPVisionModelWithProjection(reference.vision_config).save_pretrained(root / "clip-vision")
    OPTForCausalLM(reference.text_config).save_pretrained(root / "opt")
    for name in ("clip-full", "clip-vision"):
        image_processor_for(reference).save_pretrained(root / name)
    tiny_tokenizer.save_pretrained(root / "opt")
    return root


@pytest.mark.parametrize("clip_dir", ["clip-full", "clip-vision"])
def test_from_backbones_loads_the_pretrained_weights(tiny_backbone_dirs, clip_dir, red_image):
    model = MODAForConditionalGeneration.from_backbones(
        vision_model=str(tiny_backbone_dirs / clip_dir), text_model=str(tiny_backbone_dirs / "opt")
    )
    clip = CLIPVisionModelWithProjection.from_pretrained(tiny_backbone_dirs / "clip-vision") if clip_dir == "clip-vision" else None
    full = CLIPModel.from_pretrained(tiny_backbone_dirs / "clip-full") if clip_dir == "clip-full" else None
    opt = OPTForCausalLM.from_pretrained(tiny_backbone_dirs / "opt")
    processor = MODAProcessor.from_backbones(str(tiny_backbone_dirs / clip_dir), str(tiny_backbone_dirs / "opt"))
    pixel_values = processor(images=red_image)["pixel_values"]
    with torch.no_grad():
        expected = full.get_image_features(pixel_values=pixel_values) if full is not None else clip(pixel_values).image_embeds
        if not isinstance(expected, torch.Tensor):  # transformers 5 returns an output object
            expected = expected.pooler_output
        torch.testing.assert_close(model.get_image_features(pixel_values), expected)
    for name, tensor in opt.state_dict().items():
        assert torch.equal(model.language_model.state_dict()[name], tensor), name
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert model.config.image_embed_dim == model.config.vision_config.projection_dim
    ids = model.generate(**processor(images=red_image), max_new_tokens=4)
    assert ids.shape[0] == 1


def test_from_backbones_rejects_a_non_clip_vision_checkpoint(tiny_backbone_dirs):
    with pytest.raises(ValueError, match="CLIP checkpoint"):
        MODAForConditionalGeneration.from_backbones(
            vision_model=str(tiny_backbone_dirs / "opt"), text_model=str(tiny_backbone_dirs / "opt")
        )


def test_image_prefix_tokens_have_the_token_embedding_width_when_opt_projects_its_embeddings():
    from transformers import OPTConfig

    from tests.conftest import moda_around_opt

    # OPT-350m's layout: 16-d token embeddings, project_in to the 32-d layers
    model = moda_around_opt(OPTConfig(vocab_size=64, hidden_size=32, word_embed_proj_dim=16, num_hidden_layers=1,
                                      num_attention_heads=2, ffn_dim=64, max_position_embeddings=32))
    _, prefix = model.get_image_prefix(image_embeds=torch.randn(2, 24))
    assert prefix.shape == (2, 1, 16)
    output = model(image_embeds=torch.randn(2, 24), input_ids=torch.tensor([[2, 5, 7], [2, 9, 4]]))
    assert output.logits.shape == (2, 4, 64)
