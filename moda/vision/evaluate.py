"""How well a tower meets its text side on a catalog's test split, with no decoder: zero-shot attribute accuracy
(the test photos read out against the captions of the catalog's train split) and text-to-image retrieval over the
test photos (attribute queries such as "black sports shoes for men": precision@10; product titles: recall@10).
"""

from collections import Counter

import torch
import torch.nn.functional as F

from moda.data.catalog import BadRows
from moda.data.features import FeatureCache, compute_features, model_fingerprint
from moda.vision.pairs import SCORED_ATTRIBUTES, cached_text_embeddings, load_pairs

TITLE_COLUMNS = ("ProductTitle", "productDisplayName")
READOUTS = ("nearest", "marginal")
DEFAULT_LOGIT_SCALE = 100.0  # a pretrained CLIP's temperature, for a tower saved without vision_adaptation.json


def tower_encoder(tower, image_processor):
    """encode_batch for compute_features: PIL images -> L2-normalised tower embeddings."""

    @torch.no_grad()
    def encode(images):
        pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
        return F.normalize(tower(pixel_values=pixel_values).image_embeds.float(), dim=-1)

    return encode


def image_embeddings(tower, image_processor, examples, cache_dir, bad_rows):
    """The examples whose image could be read, and their (N, d) embeddings (cached by the tower's weights)."""
    namespace = "tower-" + model_fingerprint(tower, image_processor.to_dict())
    kept = compute_features(examples, tower_encoder(tower, image_processor), FeatureCache(cache_dir, namespace),
                            bad_rows, desc="tower embeddings")
    return kept, torch.stack([example["features"] for example in kept]).float()


def attribute_readout(image_embeds, caption_embeds, caption_attributes: list, scale: float, readout: str) -> list:
    """
    Each image's attribute values read out from the candidate captions: `nearest` takes the attributes of the most
    similar caption; `marginal` adds up, per attribute value, the softmax probability (at the tower's temperature) of
    every caption naming it, and takes the most probable value of each attribute on its own.
    """
    similarity = image_embeds @ caption_embeds.T
    if readout == "nearest":
        return [dict(caption_attributes[i]) for i in similarity.argmax(1).tolist()]
    if readout != "marginal":
        raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
    probabilities = torch.softmax(scale * similarity, dim=1)
    predictions = [{} for _ in range(len(image_embeds))]
    for attribute in SCORED_ATTRIBUTES:
        values = sorted({attributes[attribute] for attributes in caption_attributes if attribute in attributes})
        if not values:
            continue
        membership = torch.zeros(len(caption_attributes), len(values))
        for i, attributes in enumerate(caption_attributes):
            if attribute in attributes:
                membership[i, values.index(attributes[attribute])] = 1
        for prediction, best in zip(predictions, (probabilities @ membership).argmax(1).tolist()):
            prediction[attribute] = values[best]
    return predictions


def attribute_accuracy(predictions: list, truths: list) -> dict:
    """{attribute: share of the items with a true value whose predicted value is it}."""
    accuracy = {}
    for attribute in SCORED_ATTRIBUTES:
        pairs = [(prediction.get(attribute), truth[attribute]) for prediction, truth in zip(predictions, truths)
                 if attribute in truth]
        if pairs:
            accuracy[attribute] = round(sum(p == t for p, t in pairs) / len(pairs), 4)
    return accuracy


def attribute_queries(truths: list, min_relevant: int = 5) -> list:
    """("black sports shoes for men", [indices of the items that are all three]) for every colour, product type and
    gender that at least `min_relevant` items share."""
    keys = [(t.get("colour"), t.get("product_type"), t.get("gender")) for t in truths]
    counts = Counter(key for key in keys if None not in key)
    return [(f"{colour} {product_type} for {gender}", [i for i, k in enumerate(keys) if k == key])
            for key in sorted(counts) if counts[key] >= min_relevant for colour, product_type, gender in [key]]


def precision_at_k(image_embeds, query_embeds, relevant: list, k: int = 10) -> float:
    """Mean over queries of (relevant items in the top k) / min(k, relevant items): 1.0 is a perfect ranking even
    for a query with fewer than k relevant items."""
    top = (query_embeds @ image_embeds.T).topk(min(k, len(image_embeds)), dim=1).indices.tolist()
    scores = [len(set(hits) & set(wanted)) / min(k, len(wanted)) for hits, wanted in zip(top, relevant)]
    return round(sum(scores) / max(1, len(scores)), 4)


def recall_at_k(image_embeds, query_embeds, k: int = 10) -> float:
    """Share of queries (query i describes image i) whose own image is among the top k."""
    top = (query_embeds @ image_embeds.T).topk(min(k, len(image_embeds)), dim=1).indices
    return round((top == torch.arange(len(query_embeds))[:, None]).any(1).float().mean().item(), 4)


@torch.no_grad()
def embed_pixel_values(tower, examples, batch_size: int = 256) -> torch.Tensor:
    """(N, d) L2-normalised embeddings of examples that carry preprocessed pixel_values as their features."""
    chunks = []
    for start in range(0, len(examples), batch_size):
        pixel_values = torch.stack([example["features"] for example in examples[start:start + batch_size]]).float()
        chunks.append(F.normalize(tower(pixel_values=pixel_values).image_embeds.float(), dim=-1))
    return torch.cat(chunks)


def label_captions(dataset: str, bad_rows) -> dict:
    """{caption: its attribute values} of the catalog's train split: the labels a zero-shot readout chooses from."""
    return {example["description"]: example["row"]["_attributes"]
            for example in load_pairs([dataset], "train", bad_rows)}


def score_embeddings(image_embeds, examples, candidates: dict, encoder, cache_dir, scale: float, k: int = 10,
                     min_relevant: int = 5) -> dict:
    """Zero-shot accuracy by both readouts over `candidates`, attribute-query precision@k and title recall@k of the
    examples' image embeddings."""
    truths = [example["row"]["_attributes"] for example in examples]
    caption_embeds = cached_text_embeddings(list(candidates), encoder, cache_dir)
    result = {"items": len(examples), "candidate_captions": len(candidates)}
    for readout in READOUTS:
        predictions = attribute_readout(image_embeds, caption_embeds, list(candidates.values()), scale, readout)
        result[f"zero_shot_{readout}"] = attribute_accuracy(predictions, truths)
    queries = attribute_queries(truths, min_relevant)
    if queries:
        query_embeds = cached_text_embeddings([query for query, _ in queries], encoder, cache_dir)
        result[f"attribute_query_precision@{k}"] = precision_at_k(image_embeds, query_embeds,
                                                                  [wanted for _, wanted in queries], k)
        result["attribute_queries"] = len(queries)
    title_column = next((c for c in TITLE_COLUMNS if all(c in example["row"] for example in examples)), None)
    if title_column:
        titles = [" ".join(str(example["row"][title_column]).split()) for example in examples]
        result[f"title_recall@{k}"] = recall_at_k(image_embeds, cached_text_embeddings(titles, encoder, cache_dir), k)
    return result


def evaluate_tower(tower, image_processor, adaptation: dict, dataset: str, encoder, cache_dir, split: str = "test",
                   k: int = 10, min_relevant: int = 5) -> dict:
    """The tower on `dataset`'s `split` (score_embeddings), read out against its train split's captions.
    `encoder`: the text side the tower was trained to meet."""
    bad_rows = BadRows("skip")
    examples, image_embeds = image_embeddings(tower, image_processor, load_pairs([dataset], split, bad_rows),
                                              cache_dir, bad_rows)
    scale = adaptation.get("logit_scale", DEFAULT_LOGIT_SCALE)
    result = score_embeddings(image_embeds, examples, label_captions(dataset, bad_rows), encoder, cache_dir, scale, k,
                              min_relevant)
    return {"dataset": dataset, "split": split, **result}
