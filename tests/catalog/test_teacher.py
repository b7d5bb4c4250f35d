"""`moda build-dataset`: template text, teacher and refiner answers, tiny local models, resume, bad rows."""

import copy
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moda.catalog.build_dataset import (EXIT_AFTER_ITEMS_ENV, PROGRESS_FILE, brand_names, describe_with_models,
                                        item_attributes, kept_words, load_models, parse_teacher_answer, read_progress,
                                        remove_printed_text, template_description)
from moda.cli.build_dataset import main
from moda.data.catalog import BadRowError, BadRows, examples_from_rows, load_catalog, sample_rows

REPO_ROOT = Path(__file__).resolve().parents[2]
MYNTRA_ROWS = [
    {"file_name": "images/0.jpg", "ProductId": "10", "Gender": "Men", "Category": "Apparel", "SubCategory": "Topwear",
     "ProductType": "Shirts", "Colour": "Navy Blue", "Usage": "Casual", "ProductTitle": "Peter England Men Navy Shirt"},
    {"file_name": "images/1.jpg", "ProductId": "11", "Gender": "Women", "Category": "Footwear", "SubCategory": "Shoes",
     "ProductType": "Casual Shoes", "Colour": "White", "Usage": "Casual", "ProductTitle": "Nike Women White Shoes"},
    {"file_name": "images/2.jpg", "ProductId": "12", "Gender": "Girls", "Category": "Apparel", "SubCategory": "Topwear",
     "ProductType": "Tops", "Colour": "Red", "Usage": "", "ProductTitle": "Gini and Jony Girls Knit Red Top"},
    {"file_name": "images/3.jpg", "ProductId": "13", "Gender": "Boys", "Category": "Apparel",
     "SubCategory": "Bottomwear", "ProductType": "Shorts", "Colour": "Green", "Usage": "Sports",
     "ProductTitle": "Puma Boys Green Shorts"},
]
EXPECTED_TEMPLATES = [
    "Navy Blue casual shirts for men. Category: Apparel, Topwear.",
    "White casual shoes for women. Category: Footwear, Shoes.",
    "Red tops for girls. Category: Apparel, Topwear.",
    "Green sports shorts for boys. Category: Apparel, Bottomwear.",
]
OUTPUT_COLUMNS = ["description", "description_source", "teacher_model", "refiner_model", "error"]


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: an input imagefolder, tiny local teacher and refiner models
# ---------------------------------------------------------------------------------------------------------------

def write_csv(path: Path, rows: list) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def catalog_dir(tmp_path, product_images):
    """An imagefolder split folder: four product photos with Myntra metadata."""
    root = tmp_path / "catalog"
    (root / "images").mkdir(parents=True)
    for row, image in zip(MYNTRA_ROWS, product_images):
        image.save(root / row["file_name"])
    write_csv(root / "metadata.csv", MYNTRA_ROWS)
    return root


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny random LLaVA (CLIP vision tower + Llama) with a chat template: an image-text-to-text chat model."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.model_max_length = 2048  # the write-up's prompt is long in a 300-token vocabulary
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    chat_template = (
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %} Answer:{% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=chat_template,
    )
    path = tmp_path_factory.mktemp("tiny-teacher")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_refiner_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny random OPT text-generation model with the tests' tokenizer (no chat template: a plain prompt)."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.model_max_length = 2048
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=16, word_embed_proj_dim=16, ffn_dim=32,
                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=2048,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-refiner")
    OPTForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# The template
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row, expected", list(zip(MYNTRA_ROWS, EXPECTED_TEMPLATES)) + [
    ({"baseColour": "Black", "usage": "Sports", "articleType": "Sports Shoes", "gender": "Unisex",
      "masterCategory": "Footwear", "subCategory": "Shoes", "productDisplayName": "Nike Unisex Black Shoes"},
     "Black sports shoes for men and women. Category: Footwear, Shoes."),
    ({"baseColour": "Gold", "usage": "NA", "articleType": "", "gender": "Women", "masterCategory": "Accessories",
      "subCategory": "Jewellery"}, "Gold jewellery for women. Category: Accessories, Jewellery."),
    ({"Colour": "", "Usage": "Ethnic", "ProductType": "Kurtas", "Gender": "", "Category": "Apparel",
      "SubCategory": "apparel"}, "Ethnic kurtas. Category: Apparel."),
    ({"Colour": "Beige", "Gender": "Men"}, "Beige item for men."),
])
def test_template_description_is_exact(row, expected):
    assert template_description(item_attributes(row)) == expected


def test_template_needs_some_metadata():
    with pytest.raises(BadRowError, match="no metadata to describe"):
        template_description(item_attributes({"file_name": "a.jpg", "Colour": "nan", "ProductTitle": "X"}))


# ---------------------------------------------------------------------------------------------------------------
# Reading answers, leaving out printed text
# ---------------------------------------------------------------------------------------------------------------

def test_teacher_answer_is_the_first_json_object():
    answer = 'Sure! ```json\n{"Gender": "Men", "category": "shirt", "color": "navy  blue", "usage": "", "x": 1}\n```'
    assert parse_teacher_answer(answer) == {"gender": "Men", "category": "shirt", "colour": "navy blue"}
    assert parse_teacher_answer('{bad} then {"usage": "casual"}') == {"usage": "casual"}


def test_teacher_answer_skips_objects_without_its_keys_and_reads_braces_in_strings():
    assert parse_teacher_answer('{"note": "see {below}"} {"gender": "Men"}') == {"gender": "Men"}
    assert parse_teacher_answer('{"colour": "red }", "usage": "casual"}') == {"colour": "red }", "usage": "casual"}
    assert parse_teacher_answer('{"answer": {"category": "shirt"}}') == {"category": "shirt"}


@pytest.mark.parametrize("answer, message", [
    ("\x01\x15nd\x15 random tokens", "no JSON object"),
    ('{"gender": "Men", "colour": ', "no JSON object"),
    ('{"brand": "NIKE"}', "names none of"),
    (None, "no JSON object"),
])
def test_malformed_teacher_answers_raise_with_the_text(answer, message):
    with pytest.raises(ValueError, match=message):
        parse_teacher_answer(answer)


def test_brands_and_printed_words_are_removed():
    row = MYNTRA_ROWS[2]
    brands, keep = brand_names(row), kept_words(item_attributes(row))
    assert brands == ["Gini and Jony"]
    text = 'A RED top for girls by Gini and Jony, with the text "HELLO SUNSHINE" and a NASA badge. Jony\'s best.'
    assert remove_printed_text(text, brands, keep) == "A RED top for girls, and a badge. best."
    assert brand_names({"productDisplayName": "Levi's Men Printed Green Tshirts", "brand": "Levis"}) == \
        ["Levis", "Levi's"]


def test_a_brand_made_of_item_words_stays():
    row = {"productDisplayName": "Red Tape Men Brown Shoes", "baseColour": "Brown", "articleType": "Casual Shoes"}
    brands, keep = brand_names(row), kept_words(item_attributes(row))
    assert remove_printed_text("Brown Red Tape casual shoes with a red sole.", brands, keep) == \
        "Brown casual shoes with a red sole."
    assert remove_printed_text("Red shoes for men.", ["Red"], keep) == "Red shoes for men."


# ---------------------------------------------------------------------------------------------------------------
# Teacher + refiner answers -> descriptions (answers given as text: what the models would have said)
# ---------------------------------------------------------------------------------------------------------------

GOOD_TEACHER = '{"gender": "boys", "category": "shorts", "colour": "green", "usage": "sports"}'


def test_teacher_and_refiner_answers_become_clean_descriptions():
    refined = ['Green sports shorts for boys by Puma, printed with the word "PUMA".\n\nHope this helps!']
    results = describe_with_models([GOOD_TEACHER], [MYNTRA_ROWS[3]], refine=lambda prompts: refined)
    assert results[0]["description"] == "Green sports shorts for boys."
    assert results[0]["description_source"] == "teacher+refiner"
    assert results[0]["error"] == "" and results[0]["refined"]


def test_refiner_prompt_holds_the_teacher_answer_and_the_metadata():
    seen = []
    describe_with_models([GOOD_TEACHER], [MYNTRA_ROWS[3]], refine=lambda prompts: seen.extend(prompts) or ["x"])
    assert '"colour": "green"' in seen[0] and '"product_type": "Shorts"' in seen[0]
    assert "brand" in seen[0].lower()


@pytest.mark.parametrize("refiner_answer, reason", [
    ("\x01\x15 v\ufffd\ufffd 12 11 1", "not a description"),
    ("The weather is nice today in the park.", "names none of the item's attributes"),
    ("PUMA PUMA PUMA", "not a description"),
])
def test_unusable_refiner_answer_keeps_the_teacher_description(refiner_answer, reason):
    results = describe_with_models([GOOD_TEACHER], [MYNTRA_ROWS[3]], refine=lambda prompts: [refiner_answer])
    assert results[0]["description"] == "Green sports shorts for boys."
    assert results[0]["description_source"] == "teacher"
    assert reason in results[0]["error"] and "used the teacher's description" in results[0]["error"]


def test_gibberish_teacher_answer_falls_back_to_the_template():
    results = describe_with_models(["\x01\x15nd gibberish"], [MYNTRA_ROWS[0]], refine=lambda prompts: 1 / 0)
    assert results[0]["description"] == EXPECTED_TEMPLATES[0]
    assert results[0]["description_source"] == "template-fallback"
    assert "no JSON object" in results[0]["error"] and "gibberish" in results[0]["error"]


# ---------------------------------------------------------------------------------------------------------------
# The command: template mode, the imagefolder it writes, resume, bad rows
# ---------------------------------------------------------------------------------------------------------------

def test_template_mode_writes_an_imagefolder_train_hf_reads(catalog_dir, tmp_path):
    output = tmp_path / "out"
    assert main(["--dataset", str(catalog_dir), "--output_dir", str(output)]) == 0
    rows = read_csv(output / "metadata.csv")
    assert list(rows[0]) == list(MYNTRA_ROWS[0]) + OUTPUT_COLUMNS
    assert [row["description"] for row in rows] == EXPECTED_TEMPLATES
    assert {row["description_source"] for row in rows} == {"template"}
    assert all(row["teacher_model"] == row["refiner_model"] == row["error"] == "" for row in rows)
    for row, original in zip(rows, MYNTRA_ROWS):
        assert row["file_name"] == original["file_name"]
        assert (output / row["file_name"]).read_bytes() == (catalog_dir / original["file_name"]).read_bytes()
        assert {k: row[k] for k in original if k != "file_name"} == {k: v for k, v in original.items()
                                                                     if k != "file_name"}
    # what train_hf.py --dataset <output> --caption_column description does with it
    catalog = load_catalog(str(output))
    examples = examples_from_rows(catalog["train"] + catalog["validation"], BadRows("fail"), "description")
    assert sorted(example["description"] for example in examples) == sorted(EXPECTED_TEMPLATES)
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(output), split="train")
    assert sorted(loaded["description"]) == sorted(EXPECTED_TEMPLATES)
    assert loaded[0]["image"].size == (48, 64)


def test_images_folder_with_a_separate_metadata_csv(tmp_path, product_images):
    photos = tmp_path / "photos"
    photos.mkdir()
    rows = [{"file_name": f"p{i}.png", "baseColour": colour, "articleType": "Tshirts", "gender": "Men"}
            for i, colour in enumerate(["Black", "White"])]
    for row, image in zip(rows, product_images):
        image.save(photos / row["file_name"])
    write_csv(tmp_path / "items.csv", rows)
    output = tmp_path / "out"
    assert main(["--dataset", str(photos), "--metadata", str(tmp_path / "items.csv"), "--output_dir", str(output)]) == 0
    written = read_csv(output / "metadata.csv")
    assert sorted((row["file_name"], row["description"]) for row in written) == [
        ("images/p0.png", "Black tshirts for men."), ("images/p1.png", "White tshirts for men.")]


def test_max_samples_draws_the_rows_at_random_as_eval_and_training_do(catalog_dir, tmp_path):
    """--max_samples N (alias --limit): N rows drawn by moda.data.catalog.sample_rows with --seed, in catalog order,
    not the first N (a catalog file is often grouped)."""
    all_names = [row["file_name"] for row in MYNTRA_ROWS]

    def written(*options):
        output = tmp_path / "-".join(options)
        assert main(["--dataset", str(catalog_dir), "--output_dir", str(output), *options]) == 0
        return [row["file_name"] for row in read_csv(output / "metadata.csv")]

    sample = written("--max_samples", "2")
    assert sample == sample_rows(all_names, 2, 42) and sample != all_names[:2]
    assert written("--limit", "2") == sample
    assert written("--max-samples", "2", "--seed", "0") == sample_rows(all_names, 2, 0) != sample


def test_metadata_columns_of_every_jsonl_row_are_kept(tmp_path, product_images):
    photos = tmp_path / "photos"
    photos.mkdir()
    rows = [{"file_name": "p0.png", "baseColour": "Black", "gender": "Men"},
            {"file_name": "p1.png", "baseColour": "White", "gender": "Men", "articleType": "Tshirts"}]
    for row, image in zip(rows, product_images):
        image.save(photos / row["file_name"])
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out"
    assert main(["--dataset", str(photos), "--metadata", str(tmp_path / "items.jsonl"),
                 "--output_dir", str(output)]) == 0
    written = read_csv(output / "metadata.csv")
    assert [(row["articleType"], row["description"]) for row in written] == [("", "Black item for men."),
                                                                              ("Tshirts", "White tshirts for men.")]


def run_cli(args, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO_ROOT))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "moda.cli", "build-dataset"] + args, env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_a_killed_run_resumes_with_each_item_once(catalog_dir, tmp_path):
    output = tmp_path / "out"
    args = ["--dataset", str(catalog_dir), "--output_dir", str(output), "--batch_size", "3"]
    killed = run_cli(args, {EXIT_AFTER_ITEMS_ENV: "2"})
    assert killed.returncode == 137, killed.stderr
    assert not (output / "metadata.csv").exists()
    assert sorted(read_progress(output / PROGRESS_FILE)) == ["images/0.jpg", "images/1.jpg"]
    with open(output / PROGRESS_FILE, "a") as handle:
        handle.write('{"key": "images/2.jpg", "row": {"desc')  # a line cut off by the kill
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr
    assert "4 item(s), 2 already done" in resumed.stderr
    lines = (output / PROGRESS_FILE).read_text().splitlines()
    assert sorted(json.loads(line)["key"] for line in lines) == [row["file_name"] for row in MYNTRA_ROWS]
    assert [row["description"] for row in read_csv(output / "metadata.csv")] == EXPECTED_TEMPLATES


def test_other_settings_do_not_resume(catalog_dir, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["--dataset", str(catalog_dir), "--output_dir", str(output), "--limit", "1"]) == 0
    assert main(["--dataset", str(catalog_dir), "--output_dir", str(output), "--teacher_model", "x"]) == 1
    assert "other settings" in capsys.readouterr().err


@pytest.fixture
def catalog_with_bad_rows(catalog_dir):
    rows = MYNTRA_ROWS + [
        dict(MYNTRA_ROWS[0], file_name="images/missing.jpg", ProductId="20"),
        dict(MYNTRA_ROWS[0], file_name="images/notes.jpg", ProductId="21"),
        dict({k: "" for k in MYNTRA_ROWS[0]}, file_name="images/0.jpg", ProductId="22"),
    ]
    rows[-1]["file_name"] = "images/blank.jpg"
    (catalog_dir / "images/notes.jpg").write_text("this is not a picture")
    (catalog_dir / "images/blank.jpg").write_bytes((catalog_dir / "images/0.jpg").read_bytes())
    write_csv(catalog_dir / "metadata.csv", rows)
    return catalog_dir


def test_bad_rows_are_skipped_and_listed(catalog_with_bad_rows, tmp_path):
    output = tmp_path / "out"
    assert main(["--dataset", str(catalog_with_bad_rows), "--output_dir", str(output)]) == 0
    assert [row["description"] for row in read_csv(output / "metadata.csv")] == EXPECTED_TEMPLATES
    bad = read_csv(output / "bad_rows.csv")
    assert len(bad) == 3
    assert "missing.jpg" in bad[0]["where"] and "image cannot be used" in bad[0]["reason"]
    assert "notes.jpg" in bad[1]["where"] and "image cannot be used" in bad[1]["reason"]
    assert "blank.jpg" in bad[2]["where"] and "no metadata to describe" in bad[2]["reason"]
    assert "metadata.csv row 8" in bad[2]["where"]


def test_bad_rows_stop_the_run_with_fail(catalog_with_bad_rows, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["--dataset", str(catalog_with_bad_rows), "--output_dir", str(output), "--on_bad_row", "fail",
                 "--batch_size", "2"]) == 1
    err = capsys.readouterr().err
    assert "missing.jpg" in err and "metadata.csv row 6" in err
    assert len(read_progress(output / PROGRESS_FILE)) == 4  # the good items before it are kept for a rerun


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nowhere"], "is not a folder"),
    (["--metadata", "nowhere.csv"], "does not exist"),
])
def test_missing_inputs_are_named(catalog_dir, tmp_path, capsys, args, message):
    full = ["--dataset", str(catalog_dir), "--output_dir", str(tmp_path / "out")] + args
    assert main(full) == 1
    assert message in capsys.readouterr().err


def test_a_root_with_split_folders_asks_for_one(tmp_path, catalog_dir, capsys):
    root = tmp_path / "root"
    root.mkdir()
    catalog_dir.rename(root / "train")
    assert main(["--dataset", str(root), "--output_dir", str(tmp_path / "out")]) == 1
    assert "split folders ['train']" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# The model path with tiny random local models
# ---------------------------------------------------------------------------------------------------------------

def test_tiny_teacher_and_refiner_run_end_to_end(catalog_dir, tmp_path, tiny_teacher_dir, tiny_refiner_dir):
    output = tmp_path / "out"
    args = ["--dataset", str(catalog_dir), "--output_dir", str(output), "--teacher_model", str(tiny_teacher_dir),
            "--refiner_model", str(tiny_refiner_dir), "--batch_size", "2", "--max_new_tokens", "8",
            "--device", "cpu"]
    assert main(args) == 0
    rows = read_csv(output / "metadata.csv")
    assert [row["file_name"] for row in rows] == [row["file_name"] for row in MYNTRA_ROWS]
    for row, expected in zip(rows, EXPECTED_TEMPLATES):
        assert row["teacher_model"] == str(tiny_teacher_dir)
        # random weights write no JSON: every row falls back to the template and says why, quoting the answer
        assert row["description_source"] == "template-fallback"
        assert row["description"] == expected
        assert row["error"].startswith("teacher answer has no JSON object: '")
        assert row["refiner_model"] == ""  # the refiner was never asked
    records = [json.loads(line) for line in (output / PROGRESS_FILE).read_text().splitlines()]
    assert all(isinstance(record["teacher_answer"], str) for record in records)
    # a rerun finds everything done and does not load the models again
    assert main(args) == 0
    assert read_csv(output / "metadata.csv") == rows


def test_tiny_models_answer_through_the_pipelines(tiny_teacher_dir, tiny_refiner_dir, product_images):
    from moda.catalog.build_dataset import ask_refiner, ask_teacher

    teacher, refiner = load_models(str(tiny_teacher_dir), str(tiny_refiner_dir), device="cpu")
    answers = ask_teacher(teacher, product_images[:3], max_new_tokens=6, batch_size=2)
    assert len(answers) == 3 and all(isinstance(answer, str) and answer for answer in answers)
    refined = ask_refiner(refiner, ["Item metadata: red shirt. Description:"] * 3, max_new_tokens=6, batch_size=2)
    assert len(refined) == 3 and all(isinstance(answer, str) and answer for answer in refined)
    results = describe_with_models([GOOD_TEACHER] * 2, [MYNTRA_ROWS[3]] * 2,
                                   refine=lambda prompts: ask_refiner(refiner, prompts, 6, 2))
    assert [result["description_source"] for result in results] == ["teacher", "teacher"]
    assert all(result["refined"] and "used the teacher's description" in result["error"] for result in results)


def test_a_teacher_without_a_chat_template_is_refused(tiny_moda_dir):
    with pytest.raises(ValueError, match="no chat template"):
        load_models(str(tiny_moda_dir), None, device="cpu", trust_remote_code=True)
