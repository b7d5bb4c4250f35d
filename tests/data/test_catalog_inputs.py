"""Wrong catalog inputs as a new user types them: a wrong column name, a mistyped path, every row bad, no metadata.

Each must stop with an error that names the input and the problem, never drop every row as "bad" and go on.
"""

import csv
import os
from pathlib import Path

import pytest

import train_hf
from moda.catalog.caption import list_catalog_items
from moda.cli import build_dataset as build_dataset_command
from moda.data.catalog import BadRowError, BadRows, read_splits
from moda.io.images import load_image

pytestmark = pytest.mark.filterwarnings("ignore")

ROW = {"Colour": "Red", "Usage": "Casual", "ProductType": "Tshirts", "Gender": "Men", "Category": "Apparel",
       "SubCategory": "Topwear"}


def write_csv(path: Path, rows: list) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def small_csv(tmp_path, product_images):
    """A CSV catalog of four readable product images, with caption and template columns."""
    rows = []
    for i, image in enumerate(product_images):
        image.save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "description": f"Red shirt {i}", **ROW})
    return write_csv(tmp_path / "small.csv", rows)


def train(dataset, tmp_path, *extra):
    return train_hf.main(["--dataset", str(dataset), "--output_dir", str(tmp_path / "out"), "--model_size", "test",
                          "--feature_cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true", *extra])


# ---------------------------------------------------------------------------------------------------------------
# A wrong column name
# ---------------------------------------------------------------------------------------------------------------

def test_a_wrong_image_column_is_named_with_the_file_and_its_columns(small_csv):
    for read in (read_splits, list_catalog_items):
        with pytest.raises(ValueError) as info:
            read(str(small_csv), "img")
        message = str(info.value)
        assert "'img'" in message and "small.csv" in message and "'image', 'description', 'Colour'" in message


def test_an_imagefolder_without_a_file_name_column_is_an_error(tmp_path):
    write_csv(tmp_path / "metadata.csv", [{"path": "a.png", **ROW}])
    with pytest.raises(ValueError, match=r"image column 'file_name' is not a column of .*metadata\.csv"):
        read_splits(str(tmp_path))


@pytest.mark.parametrize("args, named", [
    (["--caption_column", "Nope"], "caption column 'Nope'"),
    (["--caption_template", "{Color} {Usage}"], "uses column(s) 'Color'"),
    (["--image_column", "img"], "image column 'img'"),
])
def test_training_with_a_wrong_column_stops_before_any_row_is_read(small_csv, tmp_path, args, named):
    with pytest.raises(ValueError) as info:
        train(small_csv, tmp_path, *args)
    assert named in str(info.value) and "small.csv" in str(info.value) and "'Colour'" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_training_with_no_usable_train_row_says_why(small_csv, tmp_path):
    write_csv(small_csv, [dict(row, description="") for row in read_csv(small_csv)])  # the column is there, every cell empty
    with pytest.raises(ValueError, match=r"No training examples in .*small\.csv.*empty caption in column"):
        train(small_csv, tmp_path, "--caption_column", "description")


# ---------------------------------------------------------------------------------------------------------------
# A mistyped path
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["nothere/", "nothere.csv", "./nothere", "a/b/c", "no such folder"])
def test_a_mistyped_local_path_is_not_looked_up_on_the_hub(tmp_path, monkeypatch, name):
    import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail(f"{name!r} was looked up on the Hub"))
    with pytest.raises(FileNotFoundError, match="Catalog not found") as info:
        read_splits(name)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("name", ["nonexistent_data", "someone/fashion-v1.0"])  # Hub ids may hold dots
def test_an_unreachable_hub_name_says_neither_place_has_it(tmp_path, monkeypatch, name):
    import datasets

    def offline(name, *args, **kwargs):
        raise ConnectionError(f"Couldn't reach {name!r} on the Hub (OfflineModeIsEnabled)")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match="no local file or folder of that name, and no Hub dataset") as info:
        read_splits(name)
    assert repr(name) in str(info.value) and isinstance(info.value.__cause__, ConnectionError)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_hub_datasets_image_paths_must_be_files_it_downloaded(tmp_path, monkeypatch, streaming):
    """A Hub dataset's cells may name any path: bytes, URLs and files in the Hugging Face caches are read; a local path
    elsewhere (a private file) is refused naming the row, before anything reads it. Streamed alike."""
    import datasets

    cache = tmp_path / "hf-datasets"
    downloaded = cache / "downloads" / "0.jpg"
    downloaded.parent.mkdir(parents=True)
    downloaded.write_bytes(b"jpeg")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    cells = [{"bytes": b"png", "path": None}, {"bytes": None, "path": "https://example.com/1.jpg"},
             {"bytes": None, "path": str(downloaded)}]

    def hub(cells):
        features = datasets.Features({"image": datasets.Image(), "id": datasets.Value("int64")})
        table = datasets.Dataset.from_dict({"image": cells, "id": list(range(len(cells)))}, features=features)
        if streaming:
            return lambda name, *args, **kwargs: datasets.IterableDatasetDict({"train": table.to_iterable_dataset()})
        return lambda name, *args, **kwargs: datasets.DatasetDict({"train": table})

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", hub(cells))
    rows = list(read_splits("someone/catalog", streaming=streaming)["train"])
    assert [row["image"] for row in rows] == [b"png", "https://example.com/1.jpg", str(downloaded.resolve())]

    private = tmp_path / "private" / "passport.jpg"
    monkeypatch.setattr(datasets, "load_dataset", hub(cells + [{"bytes": None, "path": str(private)}]))
    with pytest.raises(ValueError, match=r"someone/catalog\[train\] row 3: its image names the local path"):
        list(read_splits("someone/catalog", streaming=streaming)["train"])


def test_an_existing_relative_folder_is_read_locally(tmp_path, monkeypatch, small_csv):
    monkeypatch.chdir(tmp_path.parent)
    assert len(read_splits(f"{tmp_path.name}/small.csv")["train"]) == 4


# ---------------------------------------------------------------------------------------------------------------
# A bad row's location, once
# ---------------------------------------------------------------------------------------------------------------

def test_a_bad_rows_location_is_given_once(small_csv):
    row = dict(read_splits(str(small_csv))["train"][0], image=str(small_csv.parent / "gone.png"))
    with pytest.raises(ValueError) as info:
        load_image(row["image"], row["_where"])
    skip = BadRows("skip")
    skip.report(row["_where"], str(info.value))
    assert skip.summary().count("small.csv row 2") == 1 and "gone.png" in skip.summary()
    with pytest.raises(BadRowError) as failed:
        BadRows("fail").report(row["_where"], str(info.value))
    assert str(failed.value).count("small.csv row 2") == 1


# ---------------------------------------------------------------------------------------------------------------
# moda build-dataset with nothing to describe
# ---------------------------------------------------------------------------------------------------------------

def test_build_dataset_on_images_without_metadata_is_an_error(tmp_path, product_images, capsys):
    photos = tmp_path / "catalog"
    photos.mkdir()
    product_images[0].save(photos / "a.png")
    assert build_dataset_command.main(["--images", str(photos), "--output_dir", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert str(photos) in error and "no metadata" in error and "--teacher_model" in error


def test_build_dataset_with_every_row_bad_is_an_error_and_lists_them(tmp_path, capsys):
    write_csv(tmp_path / "metadata.csv", [{"file_name": f"gone{i}.png", **ROW} for i in range(2)])
    output = tmp_path / "out"
    assert build_dataset_command.main(["--images", str(tmp_path), "--output_dir", str(output)]) == 1
    error = capsys.readouterr().err
    assert "could be described: all 2 were bad rows" in error and "gone0.png" in error
    bad = read_csv(output / "bad_rows.csv")
    assert len(bad) == 2 and not (output / "metadata.csv").exists()
    # the reason does not repeat the location that the `where` column holds
    assert all(row["where"] not in row["reason"] and "image cannot be used" in row["reason"] for row in bad)


def test_image_urls_in_a_table_stay_urls(tmp_path):
    """A CSV's http(s) image column is read as URLs, not joined to the CSV's folder as paths."""
    url = "https://example.com/shirts/a.jpg"
    table = write_csv(tmp_path / "urls.csv", [{"image": url, **ROW}, {"image": "local.png", **ROW}])
    rows = read_splits(str(table), "image")["train"]
    assert [row["image"] for row in rows] == [url, str(tmp_path / "local.png")]
    items = list_catalog_items(str(table))
    assert (items[0]["id"], items[0]["file"], items[0]["image"]) == (url, url, url)
    assert items[1]["id"] == "local.png"


@pytest.mark.parametrize("row, template, answers", [
    (ROW, None, ["Red", "Tshirts", "Men", "Casual"]),
    ({"baseColour": "Navy Blue", "articleType": "Shirts", "gender": "Men", "usage": "Formal", "masterCategory": "Apparel",
      "subCategory": "Topwear"}, "{baseColour} {usage} {articleType} for {gender} - {masterCategory} {subCategory}",
     ["Navy Blue", "Shirts", "Men", "Formal"]),
])
def test_qa_from_metadata_asks_about_each_catalogs_own_columns(row, template, answers):
    from moda.data.catalog import MODA_CAPTION_TEMPLATE, QUESTIONS, examples_from_rows

    examples = examples_from_rows([{"image": "a.png", **row}], BadRows(), caption_template=template or MODA_CAPTION_TEMPLATE,
                                  qa_from_metadata=True)
    assert [(e["prompt"], e["description"]) for e in examples[1:]] == list(zip(QUESTIONS.values(), answers))


# ---------------------------------------------------------------------------------------------------------------
# Catalog files read through datasets
# ---------------------------------------------------------------------------------------------------------------

def test_csv_cells_are_read_as_the_text_they_hold(tmp_path):
    """datasets' csv builder would guess types: "007" would become 7 and "NA" or an empty cell None."""
    (tmp_path / "cat.csv").write_text("image,ProductId,Usage,year\na.png,007,NA,2012\nb.png,8,,\n")
    rows = read_splits(str(tmp_path / "cat.csv"))["train"]
    assert [(row["ProductId"], row["Usage"], row["year"]) for row in rows] == [("007", "NA", "2012"), ("8", "", "")]


def test_an_edited_catalog_file_is_read_again_even_with_its_old_mtime(tmp_path, monkeypatch):
    """datasets' cache takes a local file to be unchanged while its mtime is; a catalog rewritten within the file
    system's timestamp tick, or copied with its times, must still be read anew. And no Arrow cache is left behind."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    table = tmp_path / "cat.csv"
    table.write_text("image,Colour\na.png,Red\n")
    assert read_splits(str(table))["train"][0]["Colour"] == "Red"
    times = table.stat().st_atime_ns, table.stat().st_mtime_ns
    table.write_text("image,Colour\na.png,Blue\n")
    os.utime(table, ns=times)
    assert read_splits(str(table))["train"][0]["Colour"] == "Blue"
    assert list((tmp_path / "hf-cache").rglob("*.arrow")) == []


@pytest.mark.parametrize("name, text", [("cat.csv", "image,id\nb.png,\"1\n"), ("cat.jsonl", '{"image": \n')])
def test_a_malformed_catalog_file_is_one_error_naming_it(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=rf"Catalog file .*{name}' cannot be read as"):
        read_splits(str(tmp_path / name))


def test_streaming_reads_the_same_rows_as_they_are_taken(tmp_path, small_csv):
    import types

    (tmp_path / "split" / "train").mkdir(parents=True)
    write_csv(tmp_path / "split" / "train" / "metadata.csv", [{"file_name": "a.png", **ROW}, {"file_name": "b.png", **ROW}])
    for source in (str(small_csv), str(tmp_path / "split")):
        streamed = read_splits(source, streaming=True)
        assert all(isinstance(rows, types.GeneratorType) for rows in streamed.values())
        assert {split: list(rows) for split, rows in streamed.items()} == read_splits(source)


def test_a_sample_is_seeded_and_in_catalog_order():
    from moda.data.catalog import sample_rows

    rows = [{"n": i} for i in range(50)]
    sample = sample_rows(rows, 10, seed=3)
    assert sample == sample_rows(rows, 10, seed=3) != sample_rows(rows, 10, seed=4)
    assert len(sample) == 10 and sample == sorted(sample, key=lambda row: row["n"]) and sample != rows[:10]
    assert sample_rows(rows, 60) == rows and sample_rows(rows) == rows


def test_validation_is_a_seeded_tenth_of_train_and_one_row_cannot_be_split():
    from moda.data.catalog import split_off_validation

    rows = [{"n": i} for i in range(40)]
    splits = split_off_validation({"train": rows}, 0.1, seed=0)
    assert len(splits["validation"]) == 4 and len(splits["train"]) == 36
    assert sorted(row["n"] for row in splits["train"] + splits["validation"]) == list(range(40))
    assert split_off_validation({"train": rows}, 0.1, seed=0) == splits != split_off_validation({"train": rows}, 0.1, 1)
    with pytest.raises(ValueError, match=r"cannot be carved out of 1 train row"):
        split_off_validation({"train": rows[:1]}, 0.1, seed=0)
