"""`moda caption`: one row per item, unreadable items recorded, several prompts, resumable after SIGKILL, sharded."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from moda.catalog.caption import (KILL_AFTER_PARTS_ENV, list_catalog_items, parts_dir_for, prepare_parts_dir,
                                  read_output, run_settings, stream_catalog_items)
from moda.cli.caption import main, parse_arguments

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_GOOD = 10


def caption_error(capsys, argv) -> str:
    """The error moda caption gives for argv: exit status 1 and one "moda caption: error:" line, no traceback."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("moda caption: error: ") == 1, err
    return err.split("moda caption: error: ")[1]


@pytest.fixture
def catalog_dir(tmp_path, product_images):
    """An imagefolder: 10 readable photos, a zero-byte .jpg and a text file named .jpg, with metadata.csv."""
    root = tmp_path / "catalog"
    (root / "images").mkdir(parents=True)
    rows = []
    colours = ["Red", "Blue", "Green", "White"]
    for i in range(NUM_GOOD):
        name = f"images/{i:03d}.jpg"
        product_images[i % 4].rotate(i * 7, fillcolor="white").save(root / name)
        rows.append({"file_name": name, "id": f"p{i}", "Colour": colours[i % 4], "Gender": "Men",
                     "ProductType": "Shirts", "Usage": "Casual"})
    (root / "images/empty.jpg").write_bytes(b"")
    (root / "images/notes.jpg").write_text("this is not a picture")
    rows += [{"file_name": "images/empty.jpg", "id": "empty", "Colour": "Red", "Gender": "Women",
              "ProductType": "Dresses", "Usage": "Party"},
             {"file_name": "images/notes.jpg", "id": "notes", "Colour": "Black", "Gender": "Men",
              "ProductType": "Shoes", "Usage": "Sports"}]
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def run_cli(args, env_extra=None, torchrun=False):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO_ROOT))
    env.update(env_extra or {})
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m"] if torchrun else [sys.executable, "-m"]
    return subprocess.run(launcher + ["moda.cli", "caption"] + args, env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=240)


def assert_complete(rows, catalog_dir):
    expected = [item["id"] for item in list_catalog_items(str(catalog_dir))]
    assert sorted(row["id"] for row in rows) == sorted(expected)
    assert len({row["id"] for row in rows}) == len(rows)
    errors = {row["id"]: row["error"] for row in rows if "error" in row}
    assert set(errors) == {"empty", "notes"}
    assert "empty" in errors["empty"] and "empty.jpg" in errors["empty"]
    assert "notes.jpg" in errors["notes"]
    for row in rows:
        if "error" not in row:
            assert isinstance(row["description"], str) and row["description"]


def test_listing_a_plain_directory_and_an_imagefolder(tmp_path, catalog_dir):
    items = list_catalog_items(str(catalog_dir))
    assert [item["id"] for item in items][:3] == ["p0", "p1", "p2"] and len(items) == NUM_GOOD + 2
    assert items[0]["row"]["Colour"] == "Red"
    plain = list_catalog_items(str(catalog_dir / "images"))
    assert sorted(item["id"] for item in plain) == sorted(p.name for p in (catalog_dir / "images").iterdir())
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_catalog_items(str(tmp_path / "nowhere"))
    (tmp_path / "blank").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        list_catalog_items(str(tmp_path / "blank"))


def test_duplicate_ids_are_an_error(tmp_path, red_image):
    red_image.save(tmp_path / "a.png")
    (tmp_path / "cat.csv").write_text("image,id\na.png,x\na.png,x\n")
    with pytest.raises(ValueError, match="id 'x' is used twice"):
        list_catalog_items(str(tmp_path / "cat.csv"))


def test_an_empty_catalog_is_an_error_not_an_empty_output(tmp_path):
    (tmp_path / "header.csv").write_text("image,id\n")  # an empty output would be a CSV that cannot be read back
    with pytest.raises(ValueError, match=r"header\.csv' lists no items"):
        list_catalog_items(str(tmp_path / "header.csv"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "metadata.csv").write_text("file_name,id\n")  # not "no metadata.csv"
    with pytest.raises(ValueError, match="folder' lists no items"):
        list_catalog_items(str(tmp_path / "folder"))


def test_an_id_missing_from_some_rows_is_an_error_not_ids_from_paths(tmp_path, red_image):
    red_image.save(tmp_path / "a.png")
    red_image.save(tmp_path / "b.png")
    (tmp_path / "cat.csv").write_text("image,ProductId\na.png,17\nb.png,\n")
    with pytest.raises(ValueError, match=r"cat\.csv row 3 has no 'ProductId' \(1 row\(s\) like it\)"):
        list_catalog_items(str(tmp_path / "cat.csv"))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_caption_writes_one_row_per_item_with_attributes_and_errors(tiny_moda_dir, catalog_dir, tmp_path, suffix,
                                                                    capsys):
    output = tmp_path / f"captions{suffix}"
    prompts = ["", "What colour is this item?"]
    assert main(["--model", str(tiny_moda_dir), "--images", str(catalog_dir), "--output", str(output),
                 "--batch_size", "4", "--max_new_tokens", "6", "--prompt", prompts[0], "--prompt", prompts[1]]) == 0
    rows = read_output(output)
    assert_complete(rows, catalog_dir)
    assert [row["id"] for row in rows] == [item["id"] for item in list_catalog_items(str(catalog_dir))]
    described = [row for row in rows if "error" not in row]
    for row in described:
        assert sorted(row["descriptions"]) == sorted(prompts)
        assert all(text in row["description"] for text in row["descriptions"].values() if text)
        assert set(row["attributes"]) >= {"colour", "gender", "product_type", "usage"}
    assert not parts_dir_for(output).exists()
    assert "2 unreadable" in capsys.readouterr().out


def test_prefetched_batches_give_the_captions_of_describing_each_batch_in_turn(tiny_moda_dir, catalog_dir, tmp_path):
    """moda caption prepares batch i+1 in a background thread while batch i generates: the same captions, in the
    same order, as reading and describing each batch in turn (describe_images, with no thread)."""
    from moda.evaluate.describe import describe_images
    from moda.io.images import load_image
    from moda.model.loading import load_captioner

    output = tmp_path / "captions.jsonl"
    prompts = ["", "What colour is this item?"]
    assert main(["--model", str(tiny_moda_dir), "--images", str(catalog_dir), "--output", str(output),
                 "--batch_size", "4", "--max_new_tokens", "6", "--prompt", prompts[0], "--prompt", prompts[1]]) == 0
    rows = [row for row in read_output(output) if "error" not in row]
    captioner = load_captioner(str(tiny_moda_dir))
    items = list_catalog_items(str(catalog_dir))[:NUM_GOOD]  # the unreadable two come last: batches hold the same
    images = [load_image(item["image"], item["file"]) for item in items]
    for prompt in prompts:
        expected = describe_images(captioner.model, captioner.processor, images, batch_size=4, max_new_tokens=6,
                                   prompt=prompt)
        assert [row["descriptions"][prompt] for row in rows] == expected
    assert len({row["description"] for row in rows}) > 1  # the images are told apart: a real comparison


def test_a_failure_while_preparing_a_batch_names_its_items(catalog_dir):
    """prepare_batch runs in moda caption's background thread: its error reaches the main thread naming the items."""
    from moda.catalog.caption import prepare_batch

    def broken_processor(**inputs):
        raise RuntimeError("the image processor failed")

    items = list_catalog_items(str(catalog_dir))[:4]
    with pytest.raises(RuntimeError, match="the image processor failed") as raised:
        prepare_batch(broken_processor, items, [""])
    assert raised.value.__notes__ == ["while preparing the batch of items 'p0' to 'p3'"]
    # a batch of unreadable items only never reaches the processor: its rows carry their errors
    rows, readable, inputs = prepare_batch(broken_processor, list_catalog_items(str(catalog_dir))[-2:], [""])
    assert [row["id"] for row in rows] == ["empty", "notes"] and all("error" in row for row in rows)
    assert readable == [] and inputs == {}


def test_a_batch_stops_reading_its_items_once_the_run_stops(catalog_dir, monkeypatch):
    """Ctrl-C during moda caption: the batch being prepared in the background reads no further item."""
    import threading

    import moda.catalog.caption
    from moda.catalog.caption import prepare_batch

    stopping, read = threading.Event(), []

    def load_image(image, name):  # the run is stopped while the second item is read
        read.append(name)
        if len(read) == 2:
            stopping.set()
        return Image.new("RGB", (8, 8))

    monkeypatch.setattr(moda.catalog.caption, "load_image", load_image)
    assert prepare_batch(lambda **inputs: inputs, list_catalog_items(str(catalog_dir))[:4], [""], stopping) is None
    assert len(read) == 2


def test_caption_resumes_after_sigkill_with_every_item_once(tiny_moda_dir, catalog_dir, tmp_path):
    output = tmp_path / "captions.jsonl"
    args = ["--model", str(tiny_moda_dir), "--images", str(catalog_dir), "--output", str(output),
            "--batch_size", "3", "--max_new_tokens", "4"]
    killed = run_cli(args, {KILL_AFTER_PARTS_ENV: "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    parts = sorted(parts_dir_for(output).glob("part-*.jsonl"))
    assert len(parts) == 2 and not output.exists()
    first_rows = [json.loads(line) for part in parts for line in part.read_text().splitlines()]
    # A write killed half way leaves only a temp file, which the next run throws away.
    (parts_dir_for(output) / ".part-00000-000009.jsonl.tmp-1").write_text('{"id": "p9", "descr')

    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"described {NUM_GOOD + 2 - 6} item(s)" in resumed.stderr  # only what the killed run had not done
    rows = read_output(output)
    assert_complete(rows, catalog_dir)
    by_id = {row["id"]: row for row in rows}
    assert all(by_id[row["id"]] == row for row in first_rows)
    assert not parts_dir_for(output).exists()

    again = run_cli(args)  # a finished output: only its two unreadable items are read again, and still fail
    assert again.returncode == 0 and "reading 2 item(s) again" in again.stderr and "described 2 item(s)" in again.stderr
    assert read_output(output) == rows


def test_a_rerun_reads_fixed_images_again_and_names_files_by_absolute_path(tiny_moda_dir, catalog_dir, tmp_path,
                                                                              product_images, monkeypatch):
    monkeypatch.chdir(catalog_dir.parent)  # the catalog named relative to the working folder, as in the README
    output = tmp_path / "captions.jsonl"
    args = ["--model", str(tiny_moda_dir), "--images", catalog_dir.name, "--output", str(output), "--max_new_tokens", "4"]
    assert main(args) == 0
    first = {row["id"]: row for row in read_output(output)}
    assert all(os.path.isabs(row["file"]) and os.path.isfile(row["file"]) for row in first.values())
    product_images[0].save(catalog_dir / "images/empty.jpg", format="JPEG")  # the empty file, fixed
    assert main(args) == 0
    second = {row["id"]: row for row in read_output(output)}
    assert "error" in first["empty"] and "error" not in second["empty"] and second["empty"]["description"]
    assert "error" in second["notes"] and {k: v for k, v in second.items() if k not in ("empty", "notes")} == {
        k: v for k, v in first.items() if k not in ("empty", "notes")}


def test_resuming_with_other_settings_is_refused(tiny_moda_dir, catalog_dir, tmp_path, capsys):
    output = tmp_path / "captions.jsonl"
    args = ["--model", str(tiny_moda_dir), "--images", str(catalog_dir), "--output", str(output), "--batch_size", "4"]
    assert run_cli(args, {KILL_AFTER_PARTS_ENV: "1"}).returncode == -signal.SIGKILL
    assert "other settings" in caption_error(capsys, args + ["--prompt", "What colour is this item?"])
    assert main(args + ["--prompt", "What colour is this item?", "--overwrite"]) == 0
    rows = read_output(output)
    assert all(list(row["descriptions"]) == ["What colour is this item?"] for row in rows if "error" not in row)


def test_a_finished_output_is_not_reused_for_another_model(tiny_moda_dir, catalog_dir, tmp_path, capsys):
    import shutil

    output = tmp_path / "captions.jsonl"
    args = ["--images", str(catalog_dir), "--output", str(output), "--batch_size", "8", "--max_new_tokens", "4"]
    assert main(["--model", str(tiny_moda_dir), *args]) == 0
    first = read_output(output)
    other_model = shutil.copytree(tiny_moda_dir, tmp_path / "other-model")
    # not "already done" with the first model's captions
    assert "other model" in caption_error(capsys, ["--model", str(other_model), *args])
    assert "other max_new_tokens" in caption_error(capsys, ["--model", str(tiny_moda_dir), *args[:-1], "5"])
    assert read_output(output) == first
    assert main(["--model", str(other_model), *args, "--overwrite"]) == 0
    assert json.loads(output.with_name("captions.jsonl.run.json").read_text())["model"] == str(other_model)


def test_a_run_with_another_vocabulary_is_refused_not_mixed_into_the_output(tiny_moda_dir, catalog_dir, tmp_path,
                                                                           capsys):
    other = tmp_path / "other.csv"  # another catalog, so another attribute vocabulary
    other.write_text(f"image,Colour,Gender,ProductType,Usage\n{catalog_dir / 'images/000.jpg'},Olive,Women,Kurtas,"
                     "Ethnic\n")
    output = tmp_path / "captions.jsonl"
    args = ["--model", str(tiny_moda_dir), "--images", str(catalog_dir), "--output", str(output), "--batch_size", "8",
            "--max_new_tokens", "4"]
    assert main(args) == 0
    first = read_output(output)
    # A rerun captions the two unreadable items again: their attributes would come from the other vocabulary.
    error = caption_error(capsys, args + ["--vocabulary", str(other)])
    assert "other vocabulary ({'vocabulary': None}): pass --overwrite" in error
    assert read_output(output) == first

    # An unfinished run (its parts folder) is resumed only with the vocabulary it started with, too.
    unfinished = tmp_path / "unfinished.jsonl"
    args[args.index(str(output))] = str(unfinished)
    prepare_parts_dir(unfinished, parts_dir_for(unfinished), run_settings(parse_arguments(args), "fp32"), overwrite=False)
    with pytest.raises(ValueError, match="unfinished run with other settings"):
        prepare_parts_dir(unfinished, parts_dir_for(unfinished),
                          run_settings(parse_arguments(args + ["--vocabulary", str(other)]), "fp32"), overwrite=False)


@pytest.mark.parametrize("streaming", [[], ["--streaming"]])
def test_two_processes_split_the_catalog_and_merge_it_complete(tiny_moda_dir, catalog_dir, tmp_path, streaming):
    output = tmp_path / "captions.jsonl"
    result = run_cli(["--model", str(tiny_moda_dir), "--images", str(catalog_dir), "--output", str(output),
                      "--batch_size", "2", "--max_new_tokens", "4", *streaming], torchrun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0: described 6 item(s)" in result.stderr and "rank 1: described 6 item(s)" in result.stderr
    rows = read_output(output)
    assert_complete(rows, catalog_dir)

    single = tmp_path / "single.jsonl"
    assert main(["--model", str(tiny_moda_dir), "--images", str(catalog_dir), "--output", str(single),
                 "--batch_size", "2", "--max_new_tokens", "4"]) == 0
    assert read_output(single) == rows  # sharding changes nothing in the result


def test_streaming_captions_as_rows_arrive_resumes_after_sigkill_and_writes_the_same_output(tiny_moda_dir,
                                                                                            catalog_dir, tmp_path):
    output = tmp_path / "streamed.jsonl"
    args = ["--model", str(tiny_moda_dir), "--images", str(catalog_dir), "--output", str(output), "--batch_size", "3",
            "--max_new_tokens", "4", "--streaming"]
    killed = run_cli(args, {KILL_AFTER_PARTS_ENV: "2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(list(parts_dir_for(output).glob("part-*.jsonl"))) == 2 and not output.exists()
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"described {NUM_GOOD + 2 - 6} item(s)" in resumed.stderr
    rows = read_output(output)
    assert_complete(rows, catalog_dir)

    whole = tmp_path / "whole.jsonl"
    assert main(args[:5] + [str(whole)] + args[6:-1]) == 0
    assert read_output(whole) == rows  # in catalog order, as without streaming


def test_a_streamed_catalog_checks_its_ids_as_they_arrive(tmp_path):
    (tmp_path / "ids.csv").write_text("image,id\na.png,1\nb.png,2\nc.png,\n")
    items = stream_catalog_items(str(tmp_path / "ids.csv"))
    assert [next(items)["id"], next(items)["id"]] == ["1", "2"]
    with pytest.raises(ValueError, match=r"ids\.csv row 4 has no 'id' while other rows have one"):
        next(items)
    (tmp_path / "late.csv").write_text("image,ProductId\na.png,\nb.png,7\n")
    with pytest.raises(ValueError, match=r"late\.csv row 3 fills 'ProductId' while the first row has none"):
        list(stream_catalog_items(str(tmp_path / "late.csv")))
    (tmp_path / "twice.csv").write_text("image,id\na.png,1\nb.png,1\n")
    with pytest.raises(ValueError, match="id '1' is used twice"):
        list(stream_catalog_items(str(tmp_path / "twice.csv")))


def test_a_run_saved_before_a_setting_existed_resumes_when_the_setting_is_unused(tmp_path):
    from moda.io.records import check_or_save_settings

    settings_file = tmp_path / "run.json"
    settings_file.write_text(json.dumps({"model": "m", "prompts": [""]}))  # written before "vocabulary" was kept
    check_or_save_settings(settings_file, {"model": "m", "prompts": [""], "vocabulary": None}, str)
    with pytest.raises(ValueError):
        check_or_save_settings(settings_file, {"model": "m", "prompts": [""], "vocabulary": "other.csv"}, str)
    with pytest.raises(ValueError):  # a setting the file has and this run lacks is a difference too
        check_or_save_settings(settings_file, {"model": "m"}, str)


def test_a_vocabulary_catalog_is_read_for_its_attributes_only(tmp_path):
    """Item ids play no part in a vocabulary: repeated or partly missing ids are no reason to refuse it."""
    from moda.catalog.caption import catalog_vocabulary

    (tmp_path / "vocabulary.csv").write_text("image,ProductId,Colour,Gender,ProductType,Usage\n"
                                             "a.png,1,Olive,Women,Kurtas,Ethnic\na.png,1,Teal,Men,Shirts,Casual\n"
                                             "b.png,,Mustard,Women,Tops,Casual\n")
    vocabulary = catalog_vocabulary(str(tmp_path / "vocabulary.csv"))
    assert {"Olive", "Teal", "Mustard"} <= set(vocabulary.values["colour"])


def test_caption_errors_are_one_line(tmp_path, tiny_moda_dir, capsys):
    (tmp_path / "header.csv").write_text("image,id\n")
    error = caption_error(capsys, ["--model", str(tiny_moda_dir), "--images", str(tmp_path / "header.csv"),
                                   "--output", str(tmp_path / "out.jsonl")])
    assert "header.csv' lists no items" in error
