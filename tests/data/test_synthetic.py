"""The synthetic demo catalog: layout, metadata, determinism, visible cues and argument errors."""

import csv
import itertools
import math

import numpy as np
import pytest
from PIL import Image

from moda.data.synthetic import (CAPTION_TEMPLATE, COLOURS, MARKER, PRODUCTS, SPLITS, draw_examples, main,
                                 make_catalog, split_sizes)

COLUMNS = ["file_name", "ProductId", "Gender", "Category", "SubCategory", "ProductType", "Colour", "Usage",
           "Pattern", "ProductTitle", "caption"]
NUM_ITEMS, IMAGE_SIZE = 150, 32


def read_rows(data_dir, split):
    with open(data_dir / split / "metadata.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def all_rows(data_dir):
    return [row for split in SPLITS for row in read_rows(data_dir, split)]


def folder_bytes(data_dir):
    """Every file under the folder (path relative to it -> bytes)."""
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return make_catalog(tmp_path_factory.mktemp("synthetic") / "data", num_items=NUM_ITEMS, image_size=IMAGE_SIZE,
                        seed=0)


def test_caption_template_is_the_moda_one():
    assert CAPTION_TEMPLATE == "{Colour} {Usage} {ProductType} for {Gender} - {Category} {SubCategory}"


def test_loads_as_imagefolder_with_the_catalog_columns_and_split_sizes(catalog):
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(catalog))
    assert set(loaded) == set(SPLITS)
    expected = dict(zip(SPLITS, split_sizes(NUM_ITEMS, (0.8, 0.1, 0.1))))
    assert expected == {"train": 120, "validation": 15, "test": 15}
    for split in SPLITS:
        assert loaded[split].num_rows == expected[split]
        assert set(loaded[split].column_names) == {"image"} | set(COLUMNS[1:])
    first = loaded["train"][0]
    assert first["image"].size == (IMAGE_SIZE, IMAGE_SIZE)
    assert first["caption"] == CAPTION_TEMPLATE.format(**first)


def test_metadata_columns_and_captions_follow_the_template(catalog):
    ids = []
    for split in SPLITS:
        with open(catalog / split / "metadata.csv", newline="", encoding="utf-8") as handle:
            assert next(csv.reader(handle)) == COLUMNS
        for row in read_rows(catalog, split):
            assert row["caption"] == CAPTION_TEMPLATE.format(**row)
            assert row["file_name"] == f"images/{row['ProductId']}.png"
            assert (catalog / split / row["file_name"]).is_file()
            assert row["Colour"] in row["ProductTitle"] and row["Gender"] in row["ProductTitle"]
            ids.append(row["ProductId"])
    assert len(ids) == len(set(ids)) == NUM_ITEMS


def test_combinations_are_plausible(catalog):
    for row in all_rows(catalog):
        category, subcategory, genders, usages = PRODUCTS[row["ProductType"]]
        assert (row["Category"], row["SubCategory"]) == (category, subcategory)
        assert row["Gender"] in genders and row["Usage"] in usages
        assert row["Pattern"] in ("Solid", "Striped", "Checked", "Dotted")
        if row["ProductType"] in ("Dresses", "Skirts"):
            assert row["Gender"] in ("Women", "Girls")
    assert "Formal" not in PRODUCTS["Flip Flops"][3]
    assert PRODUCTS["Sports Shoes"][3] == ("Sports",)


def test_every_product_type_colour_gender_and_usage_appears(catalog):
    rows = all_rows(catalog)
    assert {row["ProductType"] for row in rows} == set(PRODUCTS)
    assert {row["Colour"] for row in rows} == set(COLOURS)
    assert {row["Gender"] for row in rows} == {"Men", "Women", "Boys", "Girls"}
    assert {row["Usage"] for row in rows} == {"Casual", "Sports", "Formal", "Ethnic"}


def test_images_are_rgb_of_the_requested_size(catalog):
    files = sorted(catalog.glob("*/images/*.png"))
    assert len(files) == NUM_ITEMS
    for path in files:
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_base_colours_are_far_apart():
    # Euclidean RGB distance. Each item's shade jitters by at most 10 per channel (at most 17.3 in all), so two base
    # colours 100 apart stay at least 65 apart after jitter: far beyond what a 64 px picture blurs together (Navy
    # Blue vs Black at the old (20, 30, 95) was 71 apart and hard to tell at 64 px).
    distances = {(a, b): math.dist(COLOURS[a], COLOURS[b]) for a, b in itertools.combinations(COLOURS, 2)}
    closest = min(distances, key=distances.get)
    assert distances[closest] >= 100, f"{closest} only {distances[closest]:.1f} apart"
    assert len(COLOURS) >= 10 and {"Navy Blue", "Blue", "Black", "White"} <= set(COLOURS)


def test_item_colour_is_visible_in_its_picture(catalog):
    # Solid items: among the pixels away from the background (the corner pixel's tint), the most common palette
    # colour is the item's. White items are left out: white on a light background is told apart by the outline.
    checked = 0
    for split in SPLITS:
        for row in read_rows(catalog, split):
            if row["Pattern"] != "Solid" or row["Colour"] == "White":
                continue
            pixels = np.asarray(Image.open(catalog / split / row["file_name"])).reshape(-1, 3).astype(int)
            pixels = pixels[np.linalg.norm(pixels - pixels[0], axis=1) > 30]
            distances = np.stack([np.linalg.norm(pixels - np.array(rgb), axis=1) for rgb in COLOURS.values()], 1)
            nearest = np.array(list(COLOURS))[distances.argmin(1)[distances.min(1) < 25]]
            names, counts = np.unique(nearest, return_counts=True)
            assert names[counts.argmax()] == row["Colour"], row
            checked += 1
    assert checked >= 20


def test_kids_items_are_drawn_smaller(catalog):
    def item_area(split, row):
        pixels = np.asarray(Image.open(catalog / split / row["file_name"])).astype(int)
        background = pixels[0, 0]
        return (np.abs(pixels - background).sum(2) > 40).mean()

    areas = {"adult": [], "kids": []}
    for split in SPLITS:
        for row in read_rows(catalog, split):
            areas["kids" if row["Gender"] in ("Boys", "Girls") else "adult"].append(item_area(split, row))
    assert np.mean(areas["kids"]) < 0.6 * np.mean(areas["adult"])


def test_same_seed_same_bytes_other_seed_different(tmp_path):
    first = make_catalog(tmp_path / "a", num_items=12, image_size=16, seed=3)
    second = make_catalog(tmp_path / "b", num_items=12, image_size=16, seed=3)
    other = make_catalog(tmp_path / "c", num_items=12, image_size=16, seed=4)
    assert first == tmp_path / "a"
    assert folder_bytes(first) == folder_bytes(second)
    assert read_rows(first, "train") != read_rows(other, "train")
    images = [name for name in folder_bytes(first) if name.endswith(".png")]
    assert len(images) == 12
    assert any(folder_bytes(first)[name] != folder_bytes(other).get(name) for name in images)


def test_marker_rules_reuse_and_replace(tmp_path):
    data = make_catalog(tmp_path / "data", num_items=6, image_size=16, seed=0)
    assert (data / MARKER).is_file()
    image = next(data.glob("train/images/*.png"))
    stamp = image.stat().st_mtime_ns
    make_catalog(data, num_items=6, image_size=16, seed=0)  # same settings: kept as it is
    assert image.stat().st_mtime_ns == stamp
    make_catalog(data, num_items=9, image_size=16, seed=1)  # our own folder, other settings: replaced
    assert sum(len(read_rows(data, split)) for split in SPLITS) == 9
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_catalog(empty, num_items=3, image_size=16) == empty


def test_refuses_a_folder_it_did_not_make(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="output_dir.*non-empty folder.*refusing"):
        make_catalog(foreign, num_items=6, image_size=16)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="output_dir.*not a folder"):
        make_catalog(a_file, num_items=6, image_size=16)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(num_items=2), ValueError, "num_items must be at least 3"),
        (dict(num_items=0), ValueError, "num_items must be at least 3"),
        (dict(num_items=10.5), TypeError, "num_items must be an integer"),
        (dict(image_size=8), ValueError, "image_size must be at least 16"),
        (dict(image_size="64"), TypeError, "image_size must be an integer"),
        (dict(seed=None), TypeError, "seed must be an integer"),
        (dict(splits=(0.8, 0.1, 0.2)), ValueError, "splits must sum to 1"),
        (dict(splits=(0.9, 0.1)), ValueError, "splits must be three fractions"),
        (dict(splits=(1.0, 0.0, 0.0)), ValueError, "splits must all be positive"),
        (dict(splits=(1.2, -0.1, -0.1)), ValueError, "splits must all be positive"),
        (dict(splits="abc"), ValueError, "splits must be three fractions"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        make_catalog(tmp_path / "data", **{"num_items": 6, "image_size": 16, **kwargs})
    assert not (tmp_path / "data").exists()


def test_split_sizes_are_exact_and_never_empty():
    assert split_sizes(3000, (0.8, 0.1, 0.1)) == [2400, 300, 300]
    assert split_sizes(3, (0.8, 0.1, 0.1)) == [1, 1, 1]
    assert split_sizes(10, (0.98, 0.01, 0.01)) == [8, 1, 1]
    assert sum(split_sizes(7, (1 / 3, 1 / 3, 1 / 3))) == 7


def test_command_line(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--num_items", "5", "--image_size", "16", "--seed", "2"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and "5 items" in out and "16x16" in out
    assert sum(len(read_rows(tmp_path / "cli", split)) for split in SPLITS) == 5
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad"), "--num_items", "1"])
    assert "num_items must be at least 3" in capsys.readouterr().err


def test_examples_are_products_of_different_types_named_by_their_captions(tmp_path):
    paths = draw_examples(tmp_path / "examples", num_items=5, image_size=48, seed=2)
    assert [path.parent for path in paths] == [tmp_path / "examples"] * 5
    captions = [path.stem for path in paths]
    product_types = {next(name for name in PRODUCTS if f"-{name.lower().replace(' ', '-')}-for-" in caption)
                     for caption in captions}
    assert len(product_types) == 5, captions
    assert all(caption == caption.lower() and " " not in caption for caption in captions)
    with Image.open(paths[0]) as image:
        assert image.mode == "RGB" and image.size == (48, 48)
    again = draw_examples(tmp_path / "again", num_items=5, image_size=48, seed=2)
    assert [path.read_bytes() for path in again] == [path.read_bytes() for path in paths]
    for bad in (0, len(PRODUCTS) + 1, "4", True):
        with pytest.raises(ValueError, match="num_items must be an integer from 1 to"):
            draw_examples(tmp_path / "bad", num_items=bad)
