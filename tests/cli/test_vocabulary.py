"""The commands' one vocabulary (README, "The `moda` command"): the canonical snake_case names, their kebab-case
spellings and the older names all set the same option; --help shows prog and defaults. The work each command hands
its options to is replaced here by a recorder: what is checked is what the command hands over."""

import pytest

import moda.cli.caption_image
import moda.cli.index
import moda.cli.search
from moda.cli import COMMANDS, main
from moda.cli.build_dataset import parse_arguments as build_dataset_arguments
from moda.cli.caption import parse_arguments as caption_arguments
from moda.cli.eval import parse_arguments as eval_arguments


def chosen(args, names):
    return {name: getattr(args, name) for name in names}


@pytest.mark.parametrize("argv", [
    ["--model_name_or_path", "m", "--dataset", "d", "--output_dir", "o", "--max_samples", "3", "--seed", "7",
     "--batch_size", "2", "--image_column", "photo"],
    ["--model-name-or-path", "m", "--dataset-name", "d", "--output-dir", "o", "--max-samples", "3", "--seed", "7",
     "--batch-size", "2", "--image-column", "photo"],
    ["--model", "m", "--data", "d", "--output_dir", "o", "--limit", "3", "--seed", "7", "--batch_size", "2",
     "--image_column", "photo"],
], ids=["canonical", "kebab-case", "older names"])
def test_eval_options(argv):
    assert chosen(eval_arguments(argv), ["model_name_or_path", "dataset", "output_dir", "max_samples", "seed",
                                         "batch_size", "image_column"]) == {
        "model_name_or_path": "m", "dataset": "d", "output_dir": "o", "max_samples": 3, "seed": 7, "batch_size": 2,
        "image_column": "photo"}


def test_eval_and_build_dataset_sample_with_seed_42_unless_told():
    assert chosen(eval_arguments(["--model", "m", "--dataset", "d"]), ["max_samples", "seed"]) == {
        "max_samples": None, "seed": 42}
    assert chosen(build_dataset_arguments(["--dataset", "d", "--output_dir", "o"]), ["max_samples", "seed"]) == {
        "max_samples": None, "seed": 42}


@pytest.mark.parametrize("argv", [
    ["--dataset", "d", "--output_dir", "o", "--max_samples", "3", "--teacher_model", "t"],
    ["--dataset-name", "d", "--output-dir", "o", "--max-samples", "3", "--teacher-model", "t"],
    ["--images", "d", "--output_dir", "o", "--limit", "3", "--teacher_model", "t"],
], ids=["canonical", "kebab-case", "older names"])
def test_build_dataset_options(argv):
    assert chosen(build_dataset_arguments(argv), ["dataset", "output_dir", "max_samples", "teacher_model"]) == {
        "dataset": "d", "output_dir": "o", "max_samples": 3, "teacher_model": "t"}


@pytest.mark.parametrize("argv", [
    ["--model_name_or_path", "m", "--dataset", "d", "--output_file", "c.jsonl", "--max_new_tokens", "5"],
    ["--model-name-or-path", "m", "--dataset-name", "d", "--output-file", "c.jsonl", "--max-new-tokens", "5"],
    ["--model", "m", "--images", "d", "--output", "c.jsonl", "--max_new_tokens", "5"],
], ids=["canonical", "kebab-case", "older names"])
def test_caption_options(argv):
    # the attributes moda.catalog.caption reads (and its settings files hold): model, images, output
    assert chosen(caption_arguments(argv), ["model", "images", "output", "max_new_tokens"]) == {
        "model": "m", "images": "d", "output": "c.jsonl", "max_new_tokens": 5}


def test_caption_checks_its_counts_and_output_name_before_any_work(capsys):
    common = ["--model", "m", "--dataset", "d"]
    for argv, message in (
            (["--output_file", "c.jsonl", "--max_new_tokens", "0"], "--max_new_tokens must be at least 1"),
            (["--output_file", "c.txt"], "--output_file 'c.txt': the name must end in")):
        with pytest.raises(SystemExit) as raised:
            caption_arguments(common + argv)
        assert raised.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1].startswith(f"moda caption: error: {message}")


@pytest.fixture
def described(monkeypatch):
    """The arguments moda caption-image hands to its work."""
    seen = []
    monkeypatch.setattr(moda.cli.caption_image, "describe", lambda args: seen.append(args) or 0)
    return seen


@pytest.mark.parametrize("argv", [
    ["--model_name_or_path", "m", "a.png", "b.png"],
    ["a.png", "--model-name-or-path", "m", "b.png"],   # options may stand between the images
    ["--model", "m", "a.png", "b.png", "--revision", "abc"],
    ["m", "a.png", "b.png"],                             # the older form: the model first
], ids=["canonical", "kebab-case between images", "alias", "positional model"])
def test_caption_image_takes_the_model_as_an_option_or_first(described, argv):
    assert main(["caption-image", *argv]) == 0
    (args,) = described
    assert args.model_name_or_path == "m" and args.images == ["a.png", "b.png"]
    assert args.revision == ("abc" if "--revision" in argv else None)


def test_caption_image_without_a_model_is_one_error(described, capsys):
    with pytest.raises(SystemExit) as raised:
        main(["caption-image", "a.png"])
    assert raised.value.code == 2 and not described
    assert capsys.readouterr().err.splitlines()[-1] == (
        "moda caption-image: error: no model given: moda caption-image --model_name_or_path MODEL IMAGE... "
        "(or MODEL IMAGE...)")


@pytest.mark.parametrize("argv", [
    ["--captions", "c.jsonl", "--output_dir", "ix", "--model_name_or_path", "m", "--revision", "r", "--dataset", "d",
     "--image_column", "photo", "--exact_up_to", "9"],
    ["--captions", "c.jsonl", "--output-dir", "ix", "--model-name-or-path", "m", "--revision", "r",
     "--dataset-name", "d", "--image-column", "photo", "--exact-up-to", "9"],
    ["--captions", "c.jsonl", "--output", "ix", "--image_model", "m", "--revision", "r", "--catalog", "d",
     "--image_column", "photo", "--exact_up_to", "9"],
], ids=["canonical", "kebab-case", "older names"])
def test_index_options(monkeypatch, capsys, argv):
    calls = []

    def update_index(captions, output, **options):
        calls.append((captions, output, options))
        return {"added": 0, "already": 0, "unreadable": 0, "undescribed": 0, "total": 0, "kind": "empty",
                "embedder": "e"}

    monkeypatch.setattr(moda.cli.index, "update_index", update_index)
    assert main(["index", *argv]) == 0
    (captions, output, options), = calls
    assert (captions, output) == ("c.jsonl", "ix")
    assert {name: options[name] for name in ("image_model", "revision", "catalog", "image_column", "exact_up_to")} == {
        "image_model": "m", "revision": "r", "catalog": "d", "image_column": "photo", "exact_up_to": 9}
    assert capsys.readouterr().out.startswith("ix: added 0 item(s)")


@pytest.mark.parametrize("argv", [
    ["--vision_model", "t", "--dataset", "d", "--split", "test", "--output_dir", "ix", "--image_column", "photo",
     "--exact_up_to", "9"],
    ["--vision-model", "t", "--dataset-name", "d", "--split", "test", "--output-dir", "ix", "--image-column", "photo",
     "--exact-up-to", "9"],
    ["--vision_model", "t", "--catalog", "d", "--split", "test", "--output", "ix", "--image_column", "photo",
     "--exact_up_to", "9"],
], ids=["canonical", "kebab-case", "older names"])
def test_photo_index_options(monkeypatch, capsys, argv):
    import moda.vision.photo_index

    calls = []

    def update_photo_index(tower, catalog, output, **options):
        calls.append((tower, catalog, output, options))
        return {"added": 0, "already": 0, "unreadable": [], "total": 0, "kind": "empty", "embedder": "e",
                "tower": {"fingerprint": "f"}}

    monkeypatch.setattr(moda.vision.photo_index, "update_photo_index", update_photo_index)
    assert main(["index", *argv]) == 0
    (tower, catalog, output, options), = calls
    assert (tower, catalog, output) == ("t", "d", "ix")
    assert options == {"split": "test", "image_column": "photo", "exact_up_to": 9, "rebuild": False}
    assert capsys.readouterr().out.startswith("ix: added 0 photo(s)")


@pytest.mark.parametrize("model_option", ["--model_name_or_path", "--model-name-or-path", "--model", "--image_model",
                                          "--image-model"])
def test_search_options(monkeypatch, model_option):
    embedded = []

    class IndexWithImages:
        images = [[1.0]]

        @classmethod
        def load(cls, directory):
            return cls()

        def search_by_image_embedding(self, embedding, k):
            return []

    def image_embeddings_for(images, model, revision=None, trust_remote_code=False):
        embedded.append((images, model, revision, trust_remote_code))
        return [[1.0]]

    monkeypatch.setattr(moda.cli.search, "CatalogIndex", IndexWithImages)
    monkeypatch.setattr(moda.cli.search, "image_embeddings_for", image_embeddings_for)
    assert main(["search", "ix", "--image", "q.png", model_option, "m", "--revision", "r"]) == 0
    assert embedded == [(["q.png"], "m", "r", False)]


@pytest.mark.parametrize("argv", [
    ["--revision", "exp", "--commit_message", "msg", "--training_info", "t.json", "--private"],
    ["--revision", "exp", "--commit-message", "msg", "--training-info", "t.json", "--private"],
    ["--branch", "exp", "--commit_message", "msg", "--training_info", "t.json", "--private"],
], ids=["canonical", "kebab-case", "older names"])
def test_push_options(monkeypatch, argv):
    import hub_card.push

    pushed = []
    monkeypatch.setattr(hub_card.push, "push", lambda args: pushed.append(args) or 0)
    assert main(["push", "folder", "me/moda", *argv]) == 0
    (args,) = pushed
    assert chosen(args, ["folder", "repo_id", "revision", "commit_message", "training_info", "private"]) == {
        "folder": "folder", "repo_id": "me/moda", "revision": "exp", "commit_message": "msg",
        "training_info": "t.json", "private": True}


@pytest.mark.parametrize("argv", [
    ["--output_dir", "o", "--dataset", "a", "--dataset", "b", "--caption_dataset", "a", "--adapt_epochs", "2",
     "--tune_vision_tower", "true", "--max_train_samples", "5"],
    ["--output-dir", "o", "--dataset-name", "a", "--dataset", "b", "--caption-dataset", "a", "--adapt-epochs", "2",
     "--tune-vision-tower", "true", "--max-train-samples", "5"],
], ids=["canonical", "kebab-case"])
def test_recipe_options(argv):
    from moda.cli.recipe import parse_arguments as recipe_arguments

    assert chosen(recipe_arguments(argv), ["output_dir", "dataset", "caption_dataset", "adapt_epochs",
                                           "tune_vision_tower", "max_train_samples"]) == {
        "output_dir": "o", "dataset": ["a", "b"], "caption_dataset": "a", "adapt_epochs": 2,
        "tune_vision_tower": True, "max_train_samples": 5}


def test_recipe_defaults_are_the_calibrated_run():
    """BENCHMARKS.md, "The recipe in one command": both catalogs for the tower, 32 epochs; tiny MODA, 40 epochs,
    on the frozen tower, fashion-images."""
    from moda.cli.recipe import parse_arguments as recipe_arguments

    args = recipe_arguments(["--output_dir", "o"])
    assert chosen(args, ["dataset", "caption_dataset", "adapt_epochs", "caption_epochs", "tune_vision_tower",
                         "model_size", "tower_size", "overwrite"]) == {
        "dataset": ["../shared/data/fashion-images", "../shared/data/fashion-product-images-small"],
        "caption_dataset": "../shared/data/fashion-images", "adapt_epochs": 32, "caption_epochs": 40,
        "tune_vision_tower": False, "model_size": "tiny", "tower_size": "tiny", "overwrite": False}


@pytest.mark.parametrize("command, shown", [
    ("eval", "the random seed of --max_samples (default: 42)"),
    ("build-dataset", "--max_samples N, --max-samples N, --limit N"),
    ("caption", "--output_file FILE, --output-file FILE, --output FILE"),
    ("caption-image", "--model_name_or_path MODEL, --model-name-or-path MODEL, --model MODEL"),
    ("index", "--output_dir OUTPUT_DIR, --output-dir OUTPUT_DIR, --output OUTPUT_DIR"),
    ("search", "how many hits (default: 5)"),
    ("push", "--revision REVISION, --branch REVISION"),
    ("space", "--output_dir OUTPUT_DIR, --output-dir OUTPUT_DIR"),
    ("adapt-vision", "passes over the pairs (default: 10)"),
    ("adapt-vision", "the measured winner, BENCHMARKS.md); catalog: every caption of the catalogs (default: batch)"),
    ("eval-vision", "(default: .cache/moda-features)"),
    ("recipe", "passes of the tower stage over the pairs (default: 32)"),
])
def test_help_names_the_command_and_shows_defaults(command, shown, capsys):
    with pytest.raises(SystemExit) as raised:
        main([command, "--help"])
    assert raised.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width
    assert text.startswith(f"usage: moda {command} ")
    assert shown in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_every_command_but_train_is_covered_here():
    """`moda train` is train_hf.py's parser (HfArgumentParser), with its own names; a new command belongs above."""
    covered = {"eval", "build-dataset", "caption", "caption-image", "index", "search", "push", "space", "adapt-vision", "eval-vision",
               "recipe"}
    assert set(COMMANDS) - {"train"} == covered


@pytest.mark.parametrize("argv", [
    ["me/moda", "me/space", "--revision", "r", "--output_dir", "out"],
    ["me/space", "--model-name-or-path", "me/moda", "--revision", "r", "--output-dir", "out"],
    ["me/space", "--model", "me/moda", "--revision", "r", "--output_dir", "out"],
], ids=["positional", "kebab-case", "alias"])
def test_space_options(monkeypatch, argv):
    import moda.cli.space

    made = []
    monkeypatch.setattr(moda.cli.space, "space", lambda args: made.append(args) or 0)
    assert main(["space", *argv]) == 0
    (args,) = made
    assert (args.model or args.model_option, args.space_id, args.revision, args.output_dir) == (
        "me/moda", "me/space", "r", "out")
