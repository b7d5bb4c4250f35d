"""`moda eval` (moda.evaluate.evaluation), the training callback and the LLM judge's plumbing (moda.evaluate.judge)."""

import csv
import json
import re
import shutil

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoTokenizer, TrainerControl, TrainerState, TrainingArguments

from hub_card import prepare_model_folder, write_model_card
from moda.cli.eval import main
from moda.data.attributes import AttributeVocabulary
from moda.data.catalog import load_catalog, sample_rows
from moda.evaluate.describe import describe_images
from moda.evaluate.description_scores import majority_baseline, score_descriptions
from moda.evaluate.judge import JudgeOutputError, build_judge_prompt, judge_descriptions, parse_judge_output
from moda.train.callbacks import AttributeMetricsCallback

from tests.conftest import SHARED_DATA

COLUMNS = ["file_name", "ProductId", "Gender", "Category", "SubCategory", "ProductType", "Colour", "Usage",
           "ProductTitle"]
ITEMS = [
    ("Red", "Women", "Dresses", "Casual", "Apparel", "Dress"),
    ("Blue", "Men", "Shirts", "Formal", "Apparel", "Topwear"),
    ("Green", "Women", "Kurtas", "Ethnic", "Apparel", "Topwear"),
    ("White", "Boys", "Sports Shoes", "Sports", "Footwear", "Shoes"),
]


def write_split(folder, images, items):
    (folder / "images").mkdir(parents=True)
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i, (image, (colour, gender, product_type, usage, category, subcategory)) in enumerate(zip(images, items)):
            image.save(folder / "images" / f"{i}.jpg")
            writer.writerow([f"images/{i}.jpg", i, gender, category, subcategory, product_type, colour, usage,
                             f"Brand {gender} {colour} {product_type}"])


@pytest.fixture
def tiny_catalog(tmp_path, product_images):
    """An imagefolder catalog: train and test splits of the four product pictures."""
    root = tmp_path / "catalog"
    write_split(root / "train", product_images, ITEMS)
    write_split(root / "test", product_images, ITEMS)
    return root


def eval_error(capsys, argv) -> str:
    """The error moda eval gives for argv: exit status 1 and one "moda eval: error:" line, no traceback."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("moda eval: error: ") == 1, err
    message = err.split("moda eval: error: ")[1]
    assert message.count("\n") == 1, message
    return message


def test_eval_command_writes_the_report(tiny_moda_dir, tiny_catalog, tmp_path, capsys):
    output_dir = tmp_path / "eval"
    assert main(["--model_name_or_path", str(tiny_moda_dir), "--dataset", str(tiny_catalog), "--split", "test",
                 "--output_dir", str(output_dir), "--batch_size", "3", "--max_new_tokens", "6"]) == 0
    report = json.loads((output_dir / "report.json").read_text())
    assert report["num_items"] == 4 and report["skipped_items"] == []
    for name in ("report.md", "metrics.png", "confusion_colour.png", "confusion_product_type.png"):
        assert (output_dir / name).stat().st_size > 0, name

    # The report's numbers are the scores of the descriptions it lists.
    rows = load_catalog(str(tiny_catalog))["test"]
    descriptions = [item["description"] for item in report["items"]]
    captions = [item["reference_caption"] for item in report["items"]]
    expected = score_descriptions(descriptions, rows, AttributeVocabulary.from_rows(rows), reference_captions=captions)
    assert report["scores"] == pytest.approx(expected["scores"])
    assert report["text_metrics"] == pytest.approx(expected["text"])
    assert captions[0] == "Red Casual Dresses for Women - Apparel Dress"
    assert report["majority_baseline"]["gender"] == {"value": "Women", "rate": 0.5}

    printed = capsys.readouterr().out
    markdown = (output_dir / "report.md").read_text()
    overall = f"{report['scores']['Overall']:.2f}"
    assert f"Overall{overall:>23}" in printed and overall in markdown
    assert "majority" in printed and "0.50  Women" in printed


def test_eval_command_reports_unreadable_images(tiny_moda_dir, tiny_catalog, tmp_path, capsys):
    (tiny_catalog / "test" / "images" / "2.jpg").write_bytes(b"not a jpeg")
    output_dir = tmp_path / "eval"
    main(["--model_name_or_path", str(tiny_moda_dir), "--dataset", str(tiny_catalog), "--output_dir", str(output_dir),
          "--max_new_tokens", "4"])
    report = json.loads((output_dir / "report.json").read_text())
    assert report["num_items"] == report["split_rows"] - 1
    assert len(report["skipped_items"]) == 1 and "not a readable image" in report["skipped_items"][0]["reason"]
    assert "1 skipped" in capsys.readouterr().out
    assert "Skipped items" in (output_dir / "report.md").read_text()
    assert "not a readable image" in eval_error(capsys, [
        "--model_name_or_path", str(tiny_moda_dir), "--dataset", str(tiny_catalog), "--output_dir", str(output_dir),
        "--on_bad_row", "fail"])


def test_eval_command_names_a_missing_split(tiny_moda_dir, tiny_catalog, tmp_path, capsys):
    error = eval_error(capsys, ["--model_name_or_path", str(tiny_moda_dir), "--dataset", str(tiny_catalog),
                                "--split", "dev", "--output_dir", str(tmp_path / "eval")])
    assert re.search(r"no split 'dev'.*'test'", error)


def test_eval_command_names_a_missing_or_empty_model_folder(tiny_catalog, tmp_path, capsys):
    common = ["--dataset", str(tiny_catalog), "--output_dir", str(tmp_path / "eval")]
    error = eval_error(capsys, ["--model_name_or_path", str(tmp_path / "no-such-model")] + common)
    assert re.match(r"--model '.*no-such-model': no such model folder", error)
    (tmp_path / "empty").mkdir()
    error = eval_error(capsys, ["--model_name_or_path", str(tmp_path / "empty")] + common)
    assert re.match(r"--model '.*empty' is a folder without config.json", error)
    # A name that is no local folder is looked up on the Hub (offline here): one error line that names it too.
    error = eval_error(capsys, ["--model_name_or_path", "no-such-model"] + common)
    assert error.startswith("--model 'no-such-model': no local model folder of that name, and no Hub model")
    # Hub ids may hold dots: looked up, not taken for a missing local file
    error = eval_error(capsys, ["--model_name_or_path", "someone/moda-v1.0"] + common)
    assert error.startswith("--model 'someone/moda-v1.0': no local model folder of that name, and no Hub model")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    error = eval_error(capsys, ["--model_name_or_path", str(tmp_path / "broken")] + common)
    assert re.match(r"--model '.*broken': its config.json cannot be read", error)


def test_eval_command_names_a_missing_model_before_reading_the_images(tiny_catalog, tmp_path, capsys, monkeypatch):
    import moda.evaluate.evaluation

    def no_reading(*args, **kwargs):
        raise AssertionError("the split's images were read before --model was checked")

    monkeypatch.setattr(moda.evaluate.evaluation, "readable_items", no_reading)
    error = eval_error(capsys, ["--model_name_or_path", str(tmp_path / "no-such-model"), "--dataset", str(tiny_catalog),
                                "--output_dir", str(tmp_path / "eval")])
    assert "no such model folder" in error


def test_eval_command_errors_are_one_line_as_build_dataset_gives_them(tiny_moda_dir, tmp_path, capsys):
    from moda.cli import main as moda_main

    common = ["--model_name_or_path", str(tiny_moda_dir), "--output_dir", str(tmp_path / "eval")]
    assert moda_main(["eval", "--dataset", str(tmp_path / "no-such-catalog")] + common) == 1
    assert capsys.readouterr().err == f"moda eval: error: Catalog not found: no file or folder " \
                                      f"'{tmp_path / 'no-such-catalog'}'\n"


@pytest.mark.parametrize("unexpected", [RuntimeError("CUDA out of memory"), KeyError("colour")])
def test_eval_command_keeps_the_traceback_of_an_unexpected_error(tiny_moda_dir, tiny_catalog, tmp_path, monkeypatch,
                                                                 unexpected):
    def fail(*args):
        raise unexpected

    monkeypatch.setattr("moda.evaluate.evaluation.load_model_and_processor", fail)
    with pytest.raises(type(unexpected)):
        main(["--model_name_or_path", str(tiny_moda_dir), "--dataset", str(tiny_catalog),
              "--output_dir", str(tmp_path / "eval")])


@pytest.mark.parametrize("option", ["--max_samples", "--batch_size", "--max_new_tokens", "--judge_limit"])
def test_eval_command_checks_counts_before_reading_anything(option, capsys):
    with pytest.raises(SystemExit):
        main(["--model_name_or_path", "unused", "--dataset", "unused", option, "0"])
    assert f"{option} must be at least 1, got 0" in capsys.readouterr().err


def write_csv_catalog(path, images, items):
    """A CSV catalog file with an image column (paths relative to the file), as a user might keep one."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *COLUMNS[1:]])
        for i, (image, (colour, gender, product_type, usage, category, subcategory)) in enumerate(zip(images, items)):
            image.save(path.parent / f"{i}.png")
            writer.writerow([f"{i}.png", i, gender, category, subcategory, product_type, colour, usage,
                             f"Brand {gender} {colour} {product_type}"])
    return path


def test_eval_command_scores_every_row_of_a_file(tiny_moda_dir, product_images, tmp_path, capsys):
    # Eight rows: load_catalog would set one aside as validation (a tenth, at least one) and leave seven.
    data = write_csv_catalog(tmp_path / "catalog.csv", product_images * 2, ITEMS * 2)
    all_rows = [f"{data} row {i + 2}" for i in range(8)]
    common = ["--model_name_or_path", str(tiny_moda_dir), "--dataset", str(data), "--max_new_tokens", "4"]

    assert main(common + ["--output_dir", str(tmp_path / "default")]) == 0  # no --split: the file's rows
    report = json.loads((tmp_path / "default" / "report.json").read_text())
    assert report["num_items"] == 8 and report["split_rows"] == 8 and report["split"] == "train"
    assert [item["where"] for item in report["items"]] == all_rows
    assert "no 'test' split, so its only split 'train' was scored" in report["split_note"]
    printed = capsys.readouterr().out
    assert "8 items scored of the split's 8 rows" in printed and "note: " in printed

    main(common + ["--split", "train", "--output_dir", str(tmp_path / "train")])
    report = json.loads((tmp_path / "train" / "report.json").read_text())
    assert [item["where"] for item in report["items"]] == all_rows and report["split_note"] is None

    main(common + ["--max_samples", "3", "--output_dir", str(tmp_path / "sample")])
    report = json.loads((tmp_path / "sample" / "report.json").read_text())
    assert report["num_items"] == 3 and report["split_rows"] == 8
    assert report["max_samples"] == 3 and report["seed"] == 42
    assert "3 items scored of the split's 8 rows (a sample of 3, seed 42)" in capsys.readouterr().out
    sample = [item["where"] for item in report["items"]]
    # drawn by the one sampling function (training's and build-dataset's too), kept in the split's order
    assert sample == sample_rows(all_rows, 3, 42) and sample != all_rows[:3]
    main(common + ["--limit", "3", "--output_dir", str(tmp_path / "limit")])  # the old name: the same sample
    again = json.loads((tmp_path / "limit" / "report.json").read_text())
    assert [item["where"] for item in again["items"]] == sample  # the same sample every time
    main(common + ["--max_samples", "3", "--seed", "7", "--output_dir", str(tmp_path / "seed")])
    other = [item["where"] for item in json.loads((tmp_path / "seed" / "report.json").read_text())["items"]]
    assert other == sample_rows(all_rows, 3, 7) and other != sample

    error = eval_error(capsys, common + ["--split", "test", "--output_dir", str(tmp_path / "test")])
    assert re.search(r"catalog.csv' has no split 'test'.*leave out --split", error)
    # A reference column or template the user names must be there (the default template's absence only skips BLEU &c.)
    error = eval_error(capsys, common + ["--caption_column", "ProductTitel", "--output_dir", str(tmp_path / "typo")])
    assert re.search(r"caption column 'ProductTitel' is not a column of .*catalog.csv", error)
    typo = ["--caption_template", "{Color} {Usage}", "--output_dir", str(tmp_path / "typo")]
    assert "uses column(s) 'Color'" in eval_error(capsys, common + typo)
    assert not (tmp_path / "typo").exists()


def test_card_reads_the_report_moda_eval_writes(tiny_moda_dir, tiny_catalog, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_moda_dir, folder)
    # Where the README says the card (and so `moda push`, which writes a missing card) looks for it.
    main(["--model_name_or_path", str(folder), "--dataset", str(tiny_catalog), "--output_dir", str(folder / "eval"),
          "--max_new_tokens", "6"])
    report = json.loads((folder / "eval" / "report.json").read_text())
    expected = {**report["scores"], **{f"{name} hit rate": rate for name, rate in report["hit_rates"].items()},
                **report["text_metrics"]}
    assert len(expected) == 6 + len(report["hit_rates"]) + 3

    card = ModelCard.load(write_model_card(folder, repo_id="someone/moda"))  # what push_model_folder calls
    index = card.data.to_dict()["model-index"][0]["results"][0]
    assert {m["name"]: m["value"] for m in index["metrics"]} == {
        name: value for name, value in expected.items() if value is not None}
    assert index["dataset"]["split"] == "test"
    for name, value in expected.items():
        assert f"| {name} | {'n/a' if value is None else f'{value:.4f}'} |" in card.text
    assert "(4 items)" in card.text and "`moda eval` of `model`" in card.text
    assert "colour 0.25 ('Red')" in card.text  # the majority baseline beside the hit rates

    other = tmp_path / "prepared"
    shutil.copytree(tiny_moda_dir, other)
    prepare_model_folder(other, eval_report=str(folder / "eval" / "report.json"))  # the README's call
    assert (other / "handler.py").is_file()
    assert ModelCard.load(other / "README.md").data.to_dict()["model-index"][0]["results"] == [index]


def test_describe_images_batches_match_one_by_one(tiny_model_and_processor, product_images):
    model, processor = tiny_model_and_processor
    batched = describe_images(model, processor, product_images, batch_size=3, max_new_tokens=5)
    single = [describe_images(model, processor, [image], max_new_tokens=5)[0] for image in product_images]
    assert batched == single and len(batched) == 4


def callback_for(processor, tiny_catalog, **kwargs):
    rows = load_catalog(str(tiny_catalog))["test"]
    return AttributeMetricsCallback(processor, rows, max_new_tokens=5, **kwargs)


def test_callback_logs_metrics_against_estimated_tokens(tiny_model_and_processor, tiny_catalog, tmp_path):
    model, processor = tiny_model_and_processor
    callback = callback_for(processor, tiny_catalog, every=2)
    args = TrainingArguments(str(tmp_path / "run"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             report_to=[])
    state, control = TrainerState(), TrainerControl()
    for step in (10, 20, 30, 40):
        state.global_step = step
        metrics = {"eval_loss": 1.0}
        callback.on_evaluate(args, state, control, model=model, metrics=metrics)
    assert [record["step"] for record in callback.history] == [20, 40]  # every second evaluation
    record = callback.history[-1]
    assert record["tokens_seen"] == round(40 * 8 * callback.tokens_per_example)
    assert record["tokens_seen_source"].startswith("estimated: 40 steps x 8 examples")
    assert "eval_attr_overall" in metrics and "eval_attr_colour_hit_rate" in metrics
    logged = [entry for entry in state.log_history if "eval_attr_overall" in entry]
    assert [entry["step"] for entry in logged] == [20, 40]
    assert logged[-1]["tokens_seen"] == record["tokens_seen"]
    assert model.training is False

    callback.on_train_end(args, state, control, model=model)
    assert (tmp_path / "run" / "attribute_metrics.png").stat().st_size > 0
    saved = json.loads((tmp_path / "run" / "attribute_metrics.json").read_text())
    assert [record["tokens_seen"] for record in saved] == [r["tokens_seen"] for r in callback.history]


def test_callback_uses_counted_tokens_when_the_trainer_counts(tiny_model_and_processor, tiny_catalog, tmp_path):
    model, processor = tiny_model_and_processor
    callback = callback_for(processor, tiny_catalog)
    args = TrainingArguments(str(tmp_path / "run"), include_num_input_tokens_seen=True, report_to=[])
    state = TrainerState(global_step=5, num_input_tokens_seen=1234)
    callback.on_evaluate(args, state, TrainerControl(), model=model, metrics={})
    assert callback.history[0]["tokens_seen"] == 1234
    assert callback.history[0]["tokens_seen_source"] == "counted: state.num_input_tokens_seen"


def test_callback_checks_its_inputs(tiny_model_and_processor, tiny_catalog):
    _, processor = tiny_model_and_processor
    rows = load_catalog(str(tiny_catalog))["test"]
    with pytest.raises(ValueError, match="4 evaluation rows but 1 images"):
        AttributeMetricsCallback(processor, rows, images=[rows[0]["image"]])
    with pytest.raises(ValueError, match="at least one evaluation row"):
        AttributeMetricsCallback(processor, [])


# --- the LLM judge --------------------------------------------------------------------------------------------------

JUDGE_JSON = ('{"Color Accuracy": 9, "Style Recognition": 7, "Category Accuracy": 8, "Gender Accuracy": 10, '
              '"Factual Consistency": 6, "Overall": 8}')


def test_parse_judge_output_reads_the_rubric_json():
    assert parse_judge_output(JUDGE_JSON)["Color Accuracy"] == 9.0
    wrapped = "Sure! Here are my scores: {not json} " + JUDGE_JSON + " Hope this helps."
    assert parse_judge_output(wrapped) == parse_judge_output(JUDGE_JSON)
    variant = ('{"colour_accuracy": "9/10", "style recognition": 7, "CATEGORY ACCURACY": 8.5, "gender_accuracy": 10,'
               ' "factual_consistency": 6}')
    scores = parse_judge_output(variant)
    assert scores["Category Accuracy"] == 8.5 and scores["Overall"] == pytest.approx((9 + 7 + 8.5 + 10 + 6) / 5)


@pytest.mark.parametrize("text, reason", [
    ("", "empty output"),
    ("The description is good, 8/10.", "no JSON object"),
    ('{"Color Accuracy": 9, "Overall": 8}', "lacks"),
    (JUDGE_JSON.replace("9", "11"), "not a number from 0 to 10"),
    (JUDGE_JSON.replace("9", '"nine"'), "not a number"),
    ('{"Color Accuracy": 9, "Style Recognition": 7', "no JSON object"),
])
def test_parse_judge_output_rejects_malformed_answers(text, reason):
    with pytest.raises(JudgeOutputError, match=reason):
        parse_judge_output(text)


def test_judge_prompt_holds_the_item_and_the_rubric():
    row = {"Colour": "Red", "Gender": "Women", "ProductType": "Dresses", "Usage": "", "ProductTitle": "x"}
    prompt = build_judge_prompt("Red dress for women", row)
    assert "- Colour: Red\n- Gender: Women\n- Product type: Dresses" in prompt
    assert "Usage:" not in prompt and '"Red dress for women"' in prompt and '"Factual Consistency"' in prompt


@pytest.fixture
def tiny_judge_dir(tmp_path, tiny_tokenizer):
    """A random tiny GPT-2 text-generation model with the conftest tokenizer, saved locally."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=1024, n_embd=16, n_layer=1, n_head=2,
                        bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    path = tmp_path / "tiny-judge"
    GPT2LMHeadModel(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)  # a copy: the session's tokenizer keeps its 48-token limit
    tokenizer.model_max_length = 1024  # the rubric prompt is long in a 300-token vocabulary
    tokenizer.save_pretrained(path)
    return path


def test_judge_reports_malformed_output_per_item(tiny_judge_dir):
    rows = [{"Colour": "Red", "Gender": "Women", "ProductType": "Dresses", "Usage": "Casual"},
            {"Colour": "Blue", "Gender": "Men", "ProductType": "Shirts", "Usage": "Formal"}]
    judged = judge_descriptions(["Red dress", "Blue shirt"], rows, model=str(tiny_judge_dir), max_new_tokens=8,
                                batch_size=2)
    assert judged["num_items"] == 2 and judged["num_parsed"] == 0 and judged["mean_scores"] == {}
    for item in judged["items"]:
        assert isinstance(item["output"], str) and item["error"]


def test_judge_averages_parsed_items():
    def generator(prompts, **kwargs):  # a text-generation pipeline's output shape, one good and one bad answer
        return [[{"generated_text": JUDGE_JSON}], [{"generated_text": "no idea"}]][: len(prompts)]

    rows = [{"Colour": "Red", "Gender": "Women"}, {"Colour": "Blue", "Gender": "Men"}]
    judged = judge_descriptions(["Red dress", "Blue shirt"], rows, generator=generator)
    assert judged["num_parsed"] == 1 and judged["mean_scores"]["Overall"] == 8.0
    assert judged["items"][1]["error"] == "no JSON object with the rubric's scores"


def test_judge_reads_chat_answers_given_as_content_parts():
    # A chat pipeline may give the assistant's message as a list of parts: the same reading as moda.model.text_generation's.
    def generator(prompts, **kwargs):
        return [[{"generated_text": [{"role": "assistant", "content": [{"type": "text", "text": JUDGE_JSON}]}]}]]

    judged = judge_descriptions(["Red dress"], [{"Colour": "Red", "Gender": "Women"}], generator=generator)
    assert judged["num_parsed"] == 1 and judged["items"][0]["output"] == JUDGE_JSON


# --- real data ------------------------------------------------------------------------------------------------------

FASHION_IMAGES = SHARED_DATA / "fashion-images"


@pytest.mark.skipif(not (FASHION_IMAGES / "test" / "metadata.csv").exists(),
                    reason=f"real catalog not found at {FASHION_IMAGES} (see ../shared/data/README.md)")
def test_majority_baseline_on_fashion_images_test():
    with open(FASHION_IMAGES / "test" / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rates = {attribute: round(entry["rate"], 2) for attribute, entry in majority_baseline(rows).items()}
    assert (rates["gender"], rates["colour"], rates["product_type"], rates["usage"]) == (0.27, 0.19, 0.25, 0.86)
