"""moda.vision: the contrastive loss, a tower learning a toy set, the adaptation stage end to end (saved folder,
train_hf.py --vision_model on it), the tower's evaluation and the two commands. Tiny configs, toy text sides."""

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPVisionModelWithProjection

import train_hf
from moda.cli import main as moda_main
from moda.model.build import build_from_scratch, vision_config_for_size
from moda.vision.adapt import adapt_vision
from moda.vision.evaluate import attribute_queries, attribute_readout, precision_at_k, recall_at_k
from moda.vision.pairs import caption_template_for, cached_text_embeddings
from moda.vision.tower import ContrastiveTower, contrastive_loss, load_tower

pytestmark = pytest.mark.filterwarnings("ignore")
DIM = 32


def bag_of_words(texts):
    """A toy locked text side: hashed word counts, L2-normalised (captions sharing words are near)."""
    vectors = np.zeros((len(texts), DIM), np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            vectors[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM] += 1
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)


TOY_ENCODER = (bag_of_words, "toy-bag-of-words")


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
    from moda.data.synthetic import make_catalog

    return make_catalog(tmp_path_factory.mktemp("catalog") / "data", num_items=120, image_size=32, seed=0)


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, catalog_dir):
    """A test-size tower adapted to the synthetic catalog, and its summary."""
    root = tmp_path_factory.mktemp("adapted")
    summary = adapt_vision([str(catalog_dir)], root / "tower", tower_size="test", num_train_epochs=4, batch_size=32,
                           feature_cache_dir=root / "cache", eval_dataset=str(catalog_dir), encoder=TOY_ENCODER,
                           logging_steps=1, eval_every_epochs=2)
    return root / "tower", summary


def test_matched_pairs_lose_less_than_mismatched():
    torch.manual_seed(0)
    captions = F.normalize(torch.randn(6, DIM), dim=-1)
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    matched = captions[ids]
    mismatched = captions[ids.roll(1)]
    for negatives in ("catalog", "batch"):
        assert contrastive_loss(matched, captions, ids, 20.0, negatives) < 0.1
        assert contrastive_loss(mismatched, captions, ids, 20.0, negatives) > 5


def test_batch_loss_treats_a_shared_caption_as_positive():
    """Two images of one template caption are not each other's negatives: with every image on its caption, the
    loss is at its floor (the entropy of the soft targets), where one-hot in-batch targets would push them apart."""
    captions = torch.eye(3)
    ids = torch.tensor([0, 0, 1, 2])
    loss = contrastive_loss(captions[ids], captions, ids, 50.0, "batch")
    # Row 0's soft target is (1/2, 1/2, 0, 0) and its softmax is the same: the loss is that distribution's entropy.
    floor = (2 * np.log(2) + 2 * 0) / 4
    assert abs(loss.item() - floor) < 1e-3


def test_a_tower_learns_a_toy_set():
    """Four colours, four captions: the loss falls and each image's nearest caption becomes its own."""
    torch.manual_seed(0)
    config = vision_config_for_size("test", projection_dim=DIM)
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])
    pixels = colours[:, :, None, None].expand(4, 3, config.image_size, config.image_size).repeat(4, 1, 1, 1)
    pixels = pixels + 0.3 * torch.randn_like(pixels)
    ids = torch.arange(4).repeat(4)
    model = ContrastiveTower(CLIPVisionModelWithProjection(config), torch.from_numpy(bag_of_words(
        ["red dress", "green shirt", "blue shoes", "yellow bag"])), negatives="catalog")  # (in-batch: a floor of log 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(pixels, ids)["loss"].item()
    for _ in range(60):
        optimizer.zero_grad()
        loss = model(pixels, ids)["loss"]
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 4
    with torch.no_grad():
        nearest = (model(pixels, ids)["image_embeds"] @ model.caption_embeds.T).argmax(1)
    assert (nearest == ids).all()


def test_caption_template_follows_the_catalog_columns():
    myntra = [{"Colour": "Red", "Usage": "Casual", "ProductType": "Tops", "Gender": "Women", "Category": "Apparel",
               "SubCategory": "Topwear"}]
    small = [{"baseColour": "Red", "usage": "Casual", "articleType": "Tops", "gender": "Women",
              "masterCategory": "Apparel", "subCategory": "Topwear"}]
    assert caption_template_for(myntra, "a") == "{Colour} {Usage} {ProductType} for {Gender} - {Category} {SubCategory}"
    assert caption_template_for(small, "b") == ("{baseColour} {usage} {articleType} for {gender} - {masterCategory} "
                                                "{subCategory}")
    with pytest.raises(ValueError, match="'c' lacks the column"):
        caption_template_for([{"Colour": "Red", "Gender": "Men"}], "c")


def test_text_embeddings_are_computed_once(tmp_path):
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return bag_of_words(texts)

    first = cached_text_embeddings(["red top", "blue jeans", "red top"], (encode, "counting"), tmp_path)
    again = cached_text_embeddings(["blue jeans", "red top"], (encode, "counting"), tmp_path)
    assert calls == [["red top", "blue jeans"]]
    assert torch.equal(first[0], first[2]) and torch.equal(again[1], first[0])


def test_adapted_tower_is_a_clip_vision_folder(adapted, catalog_dir):
    tower_dir, summary = adapted
    assert json.loads((tower_dir / "config.json").read_text())["model_type"] == "clip_vision_model"
    tower, image_processor, adaptation = load_tower(tower_dir)
    assert tower.config.projection_dim == DIM and image_processor.crop_size["height"] == 32
    assert adaptation["logit_scale"] > 0 and adaptation["datasets"] == [str(catalog_dir)]
    assert adaptation["negatives"] == "batch"  # the default: in-batch negatives, the measured winner
    # only the train split: 96 of the 120 items (80 %), and no row of another split was read
    assert summary["train_pairs"] == 96 and summary["bad_rows"] == 0
    saved = load_file(tower_dir / "model.safetensors")
    assert all(torch.equal(saved[name], value) for name, value in tower.state_dict().items())
    evaluation = summary["evaluation"]
    assert evaluation["items"] == 12 and evaluation["split"] == "test"
    for readout in ("zero_shot_nearest", "zero_shot_marginal"):
        assert set(evaluation[readout]) == {"colour", "product_type", "gender", "usage"}
        assert all(0 <= value <= 1 for value in evaluation[readout].values())
    assert 0 <= evaluation["title_recall@10"] <= 1
    # the growth curve: the validation split (12 items) after epochs 2 and 4, minutes rising
    curve = summary["growth_curve"]
    assert [point["epoch"] for point in curve] == [2, 4] and all(point["items"] == 12 for point in curve)
    assert 0 < curve[0]["train_minutes"] <= curve[1]["train_minutes"]


def test_adaptation_loss_falls(adapted):
    tower_dir, summary = adapted
    curve = json.loads((tower_dir / "adaptation_summary.json").read_text())["loss_curve"]
    assert len(curve) == 12  # 4 epochs of 3 full batches, logged at every step
    assert np.mean([loss for _, loss in curve[-3:]]) < np.mean([loss for _, loss in curve[:3]]) - 0.1


def test_moda_builds_a_decoder_on_the_adapted_tower(adapted, tiny_tokenizer):
    tower_dir, _ = adapted
    tower, _, _ = load_tower(tower_dir)
    model, processor = build_from_scratch("test", tiny_tokenizer, vision_model=str(tower_dir))
    assert model.config.freeze_vision_tower and not any(p.requires_grad for p in model.vision_tower.parameters())
    assert all(torch.equal(model.vision_tower.state_dict()[name], value) for name, value in tower.state_dict().items())
    assert model.projector.linear_1.in_features == DIM
    assert processor.image_processor.crop_size == {"height": 32, "width": 32}


def test_train_hf_trains_tiny_moda_on_the_adapted_tower(adapted, catalog_dir, tmp_path):
    tower_dir, _ = adapted
    tower_weights = load_file(tower_dir / "model.safetensors")
    common = ["--dataset", str(catalog_dir), "--model_size", "test", "--vision_model", str(tower_dir),
              "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--eval_strategy", "no",
              "--save_strategy", "no", "--feature_cache_dir", str(tmp_path / "cache"), "--tokenizer_vocab_size", "300",
              "--disable_tqdm", "true"]
    summary = train_hf.main(common + ["--output_dir", str(tmp_path / "frozen")])
    frozen = load_file(tmp_path / "frozen" / "model.safetensors")
    assert summary["num_eval_items"] == 12
    assert all(torch.equal(frozen[f"vision_tower.{name}"], value) for name, value in tower_weights.items())
    train_hf.main(common + ["--output_dir", str(tmp_path / "tuned"), "--tune_vision_tower", "true"])
    tuned = load_file(tmp_path / "tuned" / "model.safetensors")
    assert not torch.equal(tuned["vision_tower.visual_projection.weight"], tower_weights["visual_projection.weight"])


def test_readouts_and_retrieval_metrics():
    captions = torch.eye(3)
    attributes = [{"colour": "red", "gender": "men"}, {"colour": "red", "gender": "women"},
                  {"colour": "blue", "gender": "women"}]
    # closest to caption 2 (blue), but captions 0 and 1 (both red) together hold more probability
    image = F.normalize(torch.tensor([[0.55, 0.55, 0.6]]), dim=-1)
    assert attribute_readout(image, captions, attributes, 1.0, "nearest") == [attributes[2]]
    assert attribute_readout(image, captions, attributes, 1.0, "marginal")[0]["colour"] == "red"
    images = torch.eye(4)
    queries = torch.tensor([[1.0, 0.9, 0, 0]])  # ranks image 0, then 1, then the rest
    assert precision_at_k(images, queries, [[0, 3]], k=2) == 0.5
    assert precision_at_k(images, queries, [[0, 1]], k=2) == 1.0
    assert recall_at_k(images, torch.eye(4)[[1, 0, 2, 3]], k=1) == 0.5
    truths = [{"colour": "black", "product_type": "sports shoes", "gender": "men"}] * 5 + [{"colour": "red"}]
    assert attribute_queries(truths, min_relevant=5) == [("black sports shoes for men", [0, 1, 2, 3, 4])]


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory, tiny_tokenizer):
    """A full CLIPModel of test size with a tokenizer: the `--text_encoder clip` start."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=48, eos_token_id=tiny_tokenizer.eos_token_id,
                         bos_token_id=tiny_tokenizer.bos_token_id, pad_token_id=tiny_tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=24)
    path = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    from moda.model.build import image_processor_at

    image_processor_at(32).save_pretrained(path)
    return path


def test_command_adapts_a_pretrained_clip_against_its_text_tower(catalog_dir, tiny_clip_dir, tmp_path, capsys):
    from transformers import CLIPModel

    status = moda_main(["adapt-vision", "--dataset", str(catalog_dir), "--output-dir", str(tmp_path / "tower"),
                        "--model_name_or_path", str(tiny_clip_dir), "--text_encoder", "clip",
                        "--num_train_epochs", "1", "--per_device_train_batch_size", "32",
                        "--feature_cache_dir", str(tmp_path / "cache")])
    assert status == 0
    tower, _, adaptation = load_tower(tmp_path / "tower")
    start = CLIPModel.from_pretrained(tiny_clip_dir)
    assert adaptation["text_encoder"] == "clip" and tower.config.projection_dim == 24
    # started from the pretrained tower (same shapes), and training moved it
    assert not torch.equal(tower.visual_projection.weight, start.visual_projection.weight)
    assert tower.vision_model.embeddings.patch_embedding.weight.shape == \
        start.vision_model.embeddings.patch_embedding.weight.shape
    capsys.readouterr()
    assert moda_main(["eval-vision", "--model_name_or_path", str(tmp_path / "tower"), "--dataset", str(catalog_dir),
                      "--feature_cache_dir", str(tmp_path / "cache")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["items"] == 12 and set(result["zero_shot_marginal"]) == {"colour", "product_type", "gender",
                                                                                 "usage"}


def test_command_takes_in_batch_negatives_unless_told():
    from moda.cli.adapt_vision import parse_arguments

    required = ["--dataset", "d", "--output_dir", "o"]
    assert parse_arguments(required).negatives == "batch"
    assert parse_arguments(required + ["--negatives", "catalog"]).negatives == "catalog"


def test_command_refuses_bad_inputs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        moda_main(["adapt-vision", "--dataset", "x", "--output_dir", str(tmp_path), "--text_encoder", "clip"])
    assert exit_info.value.code == 2 and "--text_encoder clip needs --model_name_or_path" in capsys.readouterr().err
    (tmp_path / "only-test" / "test").mkdir(parents=True)
    (tmp_path / "only-test" / "test" / "metadata.csv").write_text("file_name,Colour\na.jpg,Red\n")
    assert moda_main(["adapt-vision", "--dataset", str(tmp_path / "only-test"), "--output_dir",
                      str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "moda adapt-vision: error:" in err and "has no train split" in err
