"""Image-text pairs from catalogs, and the locked text side: caption embeddings computed once and cached on disk.

A catalog's caption is MODA's template in that catalog's own column names ("{Colour} {Usage} {ProductType} for
{Gender} - {Category} {SubCategory}" in fashion-images, baseColour, usage, articleType, ... in
fashion-product-images-small), so that captions of several catalogs of one domain share one language.
"""

import hashlib

import numpy as np
import torch

from moda.catalog.search import DEFAULT_EMBEDDER, embed_texts, load_embedder
from moda.data.attributes import columns_for, is_missing
from moda.data.catalog import columns_of, examples_from_rows, read_catalog_splits, require_caption_columns, sample_rows
from moda.data.features import FeatureCache, model_fingerprint

CAPTION_ATTRIBUTES = "{colour} {usage} {product_type} for {gender} - {category} {subcategory}"
SCORED_ATTRIBUTES = ("colour", "product_type", "gender", "usage")
TEXT_ENCODERS = ("minilm", "clip")


def caption_template_for(rows: list, source: str) -> str:
    """MODA's caption template in the catalog's own column names (moda.data.attributes knows both layouts)."""
    columns = columns_for(columns_of(rows))
    missing = [attribute for attribute in ("colour", "usage", "product_type", "gender", "category", "subcategory")
               if attribute not in columns]
    if missing:
        raise ValueError(f"{source!r} lacks the column(s) for {', '.join(missing)} that a caption names: give "
                         "--caption_template")
    return CAPTION_ATTRIBUTES.format(**{attribute: "{" + column + "}" for attribute, column in columns.items()})


def split_rows(dataset: str, split: str) -> list:
    """The rows of one split as the catalog stores it (no validation carved out of train: the tower uses it all)."""
    splits = read_catalog_splits(dataset)
    if split not in splits:
        raise ValueError(f"{dataset!r} has no {split} split (it has {', '.join(sorted(splits))}).")
    return splits[split]


def load_pairs(datasets: list, split: str, bad_rows, caption_template: str = None, max_items: int = None,
               seed: int = 0) -> list:
    """
    Examples ({image, description, row, prompt: None}) of `split` of each catalog, at most `max_items` of each
    (drawn at random), each row with its catalog's attribute values under `row["_attributes"]`.
    """
    examples = []
    for dataset in datasets:
        rows = sample_rows(split_rows(dataset, split), max_items, seed)
        if not rows:
            raise ValueError(f"{dataset!r}: its {split} split has no rows.")
        template = caption_template or caption_template_for(rows, dataset)
        require_caption_columns({split: rows}, dataset, caption_template=template)
        columns = columns_for(columns_of(rows))
        for row in rows:
            row["_attributes"] = row_attributes(row, columns)
        examples += examples_from_rows(rows, bad_rows, caption_template=template)
    return examples


def row_attributes(row: dict, columns: dict) -> dict:
    """{attribute: value, lower case} of the scored attributes the row has a value for."""
    return {attribute: str(row[column]).strip().lower() for attribute, column in columns.items()
            if attribute in SCORED_ATTRIBUTES and not is_missing(row.get(column))}


def text_encoder(kind: str, model_name_or_path: str = None):
    """
    The locked text side: (encode(texts) -> L2-normalised float32 array, key of what encodes). `minilm`: the
    sentence embedder of moda search (all-MiniLM-L6-v2, 384-d); `clip`: the text tower of the CLIP checkpoint
    `model_name_or_path`.
    """
    if kind == "minilm":
        embedder = load_embedder(DEFAULT_EMBEDDER)
        return (lambda texts: embed_texts(embedder, texts)), f"minilm-{model_fingerprint(embedder)}"
    if kind == "clip":
        if not model_name_or_path:
            raise ValueError("--text_encoder clip needs --model_name_or_path: a CLIP checkpoint with its text tower")
        return clip_text_encoder(model_name_or_path)
    raise ValueError(f"--text_encoder must be one of {', '.join(TEXT_ENCODERS)}, got {kind!r}")


def clip_text_encoder(model_name_or_path: str):
    from transformers import AutoConfig, AutoTokenizer, CLIPModel

    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=False)
    if config.model_type != "clip":
        raise ValueError(f"--text_encoder clip: {model_name_or_path!r} is a {config.model_type!r} checkpoint, not a "
                         "full CLIP model with a text tower")
    model = CLIPModel.from_pretrained(model_name_or_path, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=False)
    max_length = model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def encode(texts):
        chunks = []
        for start in range(0, len(texts), 256):
            inputs = tokenizer(list(texts[start:start + 256]), padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt")
            features = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            chunks.append(torch.nn.functional.normalize(features.pooler_output, dim=-1))
        return torch.cat(chunks).float().numpy()

    return encode, "clip-" + model_fingerprint(model)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cached_text_embeddings(texts: list, encoder, cache_dir) -> torch.Tensor:
    """(len(texts), dim) embeddings of `texts`, each computed once (per encoder) and cached on disk."""
    encode, key = encoder
    cache = FeatureCache(cache_dir, "text-" + key)
    found = {text: cache.get(text_key(text)) for text in dict.fromkeys(texts)}
    missing = [text for text, vector in found.items() if vector is None]
    if missing:
        for text, vector in zip(missing, encode(missing)):
            vector = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float32))
            cache.put(text_key(text), vector)
            found[text] = vector
    return torch.stack([found[text] for text in texts]).float()
