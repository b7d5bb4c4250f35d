"""moda.io.options: each option under its snake_case name, its kebab-case spelling and its aliases, one attribute;
help that shows defaults; the sample options; the count checks."""

import pytest

from moda.io.options import (add_dataset_option, add_model_option, add_option, add_sample_options, command_parser,
                             option_strings, require_at_least_one)


def test_option_strings_are_each_name_in_both_spellings_without_repeats():
    assert option_strings("max_samples", "limit") == ["--max_samples", "--max-samples", "--limit"]
    assert option_strings("model_name_or_path", "model", "image_model") == [
        "--model_name_or_path", "--model-name-or-path", "--model", "--image_model", "--image-model"]
    assert option_strings("seed") == ["--seed"]


@pytest.mark.parametrize("flag", ["--batch_size", "--batch-size", "--images_per_step", "--images-per-step"])
def test_every_spelling_sets_the_canonical_attribute(flag):
    parser = command_parser("demo", "a demo")
    add_option(parser, "batch_size", "images_per_step", type=int, default=8)
    assert parser.parse_args([flag, "3"]).batch_size == 3
    assert parser.parse_args([]).batch_size == 8


def test_dest_may_name_another_attribute():
    parser = command_parser("demo", "a demo")
    add_model_option(parser, help="the model", dest="model")
    assert vars(parser.parse_args(["--model-name-or-path", "m"])) == {"model": "m"}


def test_the_vocabulary_options_and_their_older_names():
    parser = command_parser("demo", "a demo")
    add_model_option(parser, "image_model", help="the model")
    add_dataset_option(parser, "images", help="the data")
    add_sample_options(parser)
    expected = {"model_name_or_path": "m", "dataset": "d", "max_samples": 5, "seed": 42}
    for argv in (["--model_name_or_path", "m", "--dataset", "d", "--max_samples", "5"],
                 ["--model-name-or-path", "m", "--dataset-name", "d", "--max-samples", "5"],
                 ["--model", "m", "--dataset_name", "d", "--limit", "5"],
                 ["--image-model", "m", "--images", "d", "--limit", "5"]):
        assert vars(parser.parse_args(argv)) == expected, argv
    assert parser.parse_args(["--model", "m", "--dataset", "d", "--seed", "7"]).seed == 7


def test_help_shows_prog_and_defaults_but_not_unset_ones(capsys):
    parser = command_parser("demo", "A demo.\n\n    moda demo --model m    # kept as written")
    add_model_option(parser, help="the model")
    add_sample_options(parser)
    add_option(parser, "output_dir", default="out", help="where to write")
    add_option(parser, "overwrite", action="store_true", help="start again")
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: moda demo ")
    assert "moda demo --model m # kept as written" in text
    assert "--output_dir OUTPUT_DIR, --output-dir OUTPUT_DIR where to write (default: out)" in text
    assert "the random seed of --max_samples (default: 42)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_a_count_below_one_is_one_error_naming_the_option(capsys):
    parser = command_parser("demo", "a demo")
    add_sample_options(parser)
    add_option(parser, "batch_size", type=int, default=8)
    require_at_least_one(parser, parser.parse_args(["--limit", "2"]), "max_samples", "batch_size")  # no error
    with pytest.raises(SystemExit) as raised:
        require_at_least_one(parser, parser.parse_args(["--limit", "0"]), "max_samples", "batch_size")
    assert raised.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "moda demo: error: --max_samples must be at least 1, got 0"
