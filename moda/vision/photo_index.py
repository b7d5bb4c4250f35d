"""A search index over a catalog's photos, with no captions (`moda index --vision_model`): a tower adapted by
`moda adapt-vision` against a locked all-MiniLM-L6-v2 meets MiniLM's space, so its photo embeddings are searched by a
MiniLM embedding of a text query, as moda.catalog.search searches caption embeddings.

    moda index --vision_model tower --dataset ../shared/data/fashion-images --split test --output_dir photos/
    moda search photos/ "black sports shoes for men" -k 10

moda.catalog.search stores and searches the vectors; this module (above it) reads the tower and embeds the photos.
"""

from pathlib import Path

import numpy as np

from moda.catalog.caption import list_catalog_items
from moda.catalog.search import (DEFAULT_EMBEDDER, PACKAGED_EMBEDDERS, embedding_dimension, index_counts, load_embedder,
                                 locked_index, open_photo_index)
from moda.data.catalog import without_location
from moda.data.features import model_fingerprint
from moda.io.images import load_image
from moda.vision.evaluate import tower_encoder
from moda.vision.tower import ADAPTATION_FILE, load_tower, read_adaptation


def require_text_space(tower_path, adaptation: dict) -> str:
    """
    The sentence embedder whose space the tower was adapted to (its vision_adaptation.json), which must embed the
    queries; a ValueError naming the tower when it records none (a plain CLIP checkpoint: its projection meets CLIP's
    own text tower) or one that moda search cannot embed queries with (CLIP's text tower).
    """
    where = f"--vision_model {str(tower_path)!r}"
    if not adaptation:
        raise ValueError(f"{where} has no {ADAPTATION_FILE} recording which text space its projection was trained to "
                         f"meet (a plain CLIP checkpoint's is CLIP's own text tower, not {DEFAULT_EMBEDDER}'s): adapt "
                         "it with moda adapt-vision first")
    if adaptation.get("text_encoder") != "minilm" or adaptation.get("text_model") not in PACKAGED_EMBEDDERS:
        raise ValueError(f"{where} was adapted to {adaptation.get('text_encoder')!r} "
                         f"({adaptation.get('text_model')!r}), not to {DEFAULT_EMBEDDER}: moda search embeds queries "
                         "with a sentence embedder; adapt the tower with --text_encoder minilm")
    return adaptation["text_model"]


def tower_identity(tower_path, tower, image_processor, adaptation: dict) -> dict:
    """What meta.json records of the tower: its folder, a fingerprint of its weights, config and preprocessing
    (moda.data.features.model_fingerprint, as eval-vision's cache keys it) and the text side it was adapted to."""
    return {"path": str(Path(tower_path).resolve()), "fingerprint": model_fingerprint(tower, image_processor.to_dict()),
            "text_encoder": adaptation["text_encoder"], "text_model": adaptation["text_model"]}


def photo_embeddings(tower, image_processor, items: list, batch_size: int = 64):
    """
    The items whose photo could be read, their (N, d) L2-normalised tower embeddings, and the others as (item,
    reason) pairs: each photo read through moda.io.images (the one decoding policy), embedded as eval-vision does.
    """
    encode = tower_encoder(tower, image_processor)
    kept, chunks, unreadable = [], [], []
    for start in range(0, len(items), batch_size):
        batch, images = [], []
        for item in items[start:start + batch_size]:
            where = f"item {item['id']!r}"
            try:
                images.append(load_image(item["image"], where))
                batch.append(item)
            except ValueError as err:
                unreadable.append((item, without_location(str(err), where)))
        if images:
            kept += batch
            chunks.append(encode(images).numpy())
    dim = tower.config.projection_dim
    return kept, np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32), unreadable


def update_photo_index(tower_path, catalog: str, output, split: str = None, image_column: str = None,
                       exact_up_to: int = None, rebuild: bool = False, batch_size: int = 64) -> dict:
    """
    Builds the photo index `output` over the photos of `catalog` (its `split`, or every split) embedded by the tower
    folder `tower_path`, or adds the catalog's new ids to the photo index there (unless `rebuild`). Refuses (a
    ValueError naming the input) a tower without a recorded MiniLM text space, an index of captions or of another
    tower, before the folder changes. Unreadable photos are left out and listed, so that a later run tries them
    again. Returns the counts: added, already, unreadable ([(id, reason)]), total, kind, embedder and the tower.
    """
    embedder_name = require_text_space(tower_path, read_adaptation(tower_path))
    items = list_catalog_items(catalog, image_column or "image", split)
    tower, image_processor, adaptation = load_tower(tower_path)
    dim = embedding_dimension(load_embedder(embedder_name))
    if tower.config.projection_dim != dim:  # its record is wrong: its vectors cannot be in the embedder's space
        raise ValueError(f"--vision_model {str(tower_path)!r} projects to {tower.config.projection_dim} dimensions, "
                         f"not the {dim} of {embedder_name} that its {ADAPTATION_FILE} names")
    tower_record = tower_identity(tower_path, tower, image_processor, adaptation)
    with locked_index(output):
        index = open_photo_index(output, tower_record, embedder_name, exact_up_to, rebuild)
        new_items = [item for item in items if item["id"] not in index.positions]
        kept, vectors, unreadable = photo_embeddings(tower, image_processor, new_items, batch_size)
        added = index.add_photos(kept, vectors)
        if len(index):
            index.save(output)
    return {"added": added, "already": len(items) - len(new_items), "tower": tower_record,
            "unreadable": [(item["id"], reason) for item, reason in unreadable], **index_counts(index)}
