"""`moda recipe`: the tower stage, MODA on that tower and both scores, end to end on tiny synthetic catalogs with
the smallest sizes and a toy text side; the folder it leaves loads as any MODA model does."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, CLIPVisionModelWithProjection, pipeline

from moda.cli import main as moda_main
from moda.cli.recipe import parse_arguments, run_recipe, summary_table
from moda.model.build import SIZES
from moda.train.trainer import MODATrainer
from tests.vision.test_adapt_vision import TOY_ENCODER

pytestmark = pytest.mark.filterwarnings("ignore")
SMALLEST = min(SIZES, key=lambda size: SIZES[size]["text_hidden"])
ATTRIBUTES = {"colour", "product_type", "gender", "usage"}


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory):
    """Two catalogs, as fashion-images and the small set: 96 + 160 train pairs make two tower batches of 128."""
    from moda.data.synthetic import make_catalog

    root = tmp_path_factory.mktemp("catalogs")
    return (make_catalog(root / "captioned", num_items=120, image_size=32, seed=0),
            make_catalog(root / "other", num_items=200, image_size=32, seed=1))


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory, catalogs):
    """The recipe run once, with the rows each Trainer was handed to train on."""
    captioned, other = catalogs
    root = tmp_path_factory.mktemp("recipe")
    trained_rows = []
    original_train = MODATrainer.train

    def recording_train(self, *args, **kwargs):
        trained_rows.append([example["row"]["_where"] for example in self.train_dataset.examples])
        return original_train(self, *args, **kwargs)

    args = parse_arguments(["--output_dir", str(root / "moda"), "--dataset", str(captioned), "--dataset", str(other),
                            "--caption_dataset", str(captioned), "--adapt_epochs", "2", "--caption_epochs", "1",
                            "--tower_size", SMALLEST, "--model_size", SMALLEST,
                            "--feature_cache_dir", str(root / "cache")])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MODATrainer, "train", recording_train)
        summary = run_recipe(args, encoder=TOY_ENCODER)
    return root / "moda", summary, trained_rows, catalogs


def test_only_train_rows_are_trained_on(recipe_run):
    _, summary, trained_rows, (captioned, other) = recipe_run
    tower_rows, moda_rows = trained_rows  # the tower's Trainer, then train_hf.py's
    assert len(tower_rows) == 96 + 160 == summary["vision_tower"]["settings"]["train_pairs"]
    assert {where.split(" row ")[0] for where in tower_rows} == {str(captioned / "train" / "metadata.csv"),
                                                                  str(other / "train" / "metadata.csv")}
    assert len(moda_rows) == 96
    assert {where.split(" row ")[0] for where in moda_rows} == {str(captioned / "train" / "metadata.csv")}


def test_the_folder_is_a_moda_model_that_loads_and_captions(recipe_run, red_image, tmp_path, capsys):
    output_dir, _, _, _ = recipe_run
    model = AutoModel.from_pretrained(output_dir, trust_remote_code=True)
    assert model.config.model_type == "moda"
    described = pipeline("image-to-text", model=str(output_dir), trust_remote_code=True)(red_image)
    assert isinstance(described[0]["generated_text"], str)
    red_image.save(tmp_path / "red.png")
    capsys.readouterr()
    assert moda_main(["caption-image", "--model", str(output_dir), str(tmp_path / "red.png")]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'red.png'}\t")


def test_the_tower_folder_is_the_tower_inside_moda(recipe_run):
    output_dir, _, _, _ = recipe_run
    tower = CLIPVisionModelWithProjection.from_pretrained(output_dir / "vision")
    moda_weights = load_file(output_dir / "model.safetensors")
    assert tower.config.projection_dim == 32  # the toy text side's width
    assert all(torch.equal(moda_weights[f"vision_tower.{name}"], value) for name, value in tower.state_dict().items())


def test_the_summary_has_both_stages_minutes_settings_and_test_scores(recipe_run, catalogs):
    output_dir, summary, _, _ = recipe_run
    assert json.loads((output_dir / "recipe_summary.json").read_text()) == summary
    tower, moda = summary["vision_tower"], summary["moda"]
    assert tower["settings"]["negatives"] == "batch" and tower["settings"]["epochs"] == 2
    assert moda["settings"]["epochs"] == 1 and moda["settings"]["tune_vision_tower"] is False
    for stage in (tower, moda):
        assert 0 < stage["minutes"] <= summary["total_minutes"]
    assert tower["scores"]["split"] == "test" and tower["scores"]["items"] == 12
    assert set(tower["scores"]["zero_shot_marginal"]) == ATTRIBUTES
    assert 0 <= tower["scores"]["title_recall@10"] <= 1
    assert moda["scores"]["items"] == 12 and ATTRIBUTES <= set(moda["scores"]["hit_rates"])
    report = json.loads((output_dir / "eval" / "report.json").read_text())  # moda eval's own report
    assert report["split"] == "test" and report["hit_rates"] == moda["scores"]["hit_rates"]
    table = summary_table(summary)
    assert "vision tower (zero-shot)" in table and "MODA (attribute named)" in table


def test_a_non_empty_output_dir_is_refused_without_overwrite(recipe_run, capsys):
    output_dir, _, _, (captioned, _) = recipe_run
    before = sorted(path.name for path in output_dir.iterdir())
    assert moda_main(["recipe", "--output_dir", str(output_dir), "--dataset", str(captioned),
                      "--caption_dataset", str(captioned)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("moda recipe: error: --output_dir") and "is not empty: give --overwrite" in err
    assert sorted(path.name for path in output_dir.iterdir()) == before


def test_a_caption_dataset_without_a_test_split_is_refused_before_training(tmp_path, catalogs, capsys):
    captioned, _ = catalogs
    (tmp_path / "no-test" / "train").mkdir(parents=True)
    (tmp_path / "no-test" / "train" / "metadata.csv").write_text("file_name,Colour\na.jpg,Red\n")
    assert moda_main(["recipe", "--output_dir", str(tmp_path / "out"), "--dataset", str(captioned),
                      "--caption_dataset", str(tmp_path / "no-test")]) == 1
    assert "has no test split" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
