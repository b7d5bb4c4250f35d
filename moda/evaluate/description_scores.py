"""Scoring generated descriptions against item metadata, the way the MODA write-up does, but deterministically.

The write-up's five scores, each on 0-10 and averaged over items:

- Color Accuracy: the share of the item's colours that the description names.
- Style Recognition: the item's usage (Casual, Formal, Sports, ...) is named, alone or in the product type named
  ("casual shoes").
- Category Accuracy: the item's most specific category is named: its product type (Shirts), or where a catalog has
  none its subcategory (Topwear), else its category (Apparel).
- Gender Accuracy: the item's gender is named.
- Factual Consistency: the share of the details (distinct attribute phrases) the description states that are right
  for the item. A phrase naming values of several attributes ("Sandal": the subcategory Sandal and the product type
  Sandals) is one detail, right when one of its values is. A description stating nothing checkable earns 0.

Overall is the mean of the five. An item without a value for an attribute (an empty cell) is left out of that
score's mean, and the counts say how many items each score covers. Per-attribute hit rates (0-1) are the share of
items whose value for that attribute is named, comparable with the majority-class baseline.
Text overlap with reference captions: BLEU (sacrebleu, 0-100), ROUGE-L F1 (rouge-score, 0-1), CIDEr (pycocoevalcap's
scorer, corpus-level: it needs two or more items, since its IDF comes from the references themselves).
"""

import re
from collections import Counter

from moda.data.attributes import AttributeVocabulary, columns_for, extract_attributes, find_mentions, is_missing

SCORE_NAMES = ("Color Accuracy", "Style Recognition", "Category Accuracy", "Gender Accuracy", "Factual Consistency")
CATEGORY_LEVELS = ("product_type", "subcategory", "category")  # most specific first


def item_scores(description: str, row: dict, vocabulary: AttributeVocabulary) -> dict:
    """One item: what the description names, the item's values, hits per attribute and the five 0-10 scores."""
    if not isinstance(description, str):
        raise TypeError(f"A description must be a string, got {type(description).__name__}.")
    named = extract_attributes(description, vocabulary)
    if "usage" in named:  # "casual shoes" names the usage Casual (moda.catalog.build_dataset writes it so, not "casual casual shoes")
        implied = [usage for value in named.get("product_type", []) for usage in vocabulary.usages_in(value)]
        named["usage"] += [usage for usage in dict.fromkeys(implied) if usage not in named["usage"]]
    reference = vocabulary.reference(row)
    hits = {attribute: set(values) <= set(named[attribute]) for attribute, values in reference.items()}
    scores = dict.fromkeys(SCORE_NAMES)
    if "colour" in reference:
        colours = reference["colour"]
        scores["Color Accuracy"] = 10.0 * sum(colour in named["colour"] for colour in colours) / len(colours)
    if "usage" in reference:
        scores["Style Recognition"] = 10.0 * hits["usage"]
    category_level = next((level for level in CATEGORY_LEVELS if level in reference), None)
    if category_level:
        scores["Category Accuracy"] = 10.0 * hits[category_level]
    if "gender" in reference:
        scores["Gender Accuracy"] = 10.0 * hits["gender"]
    details = {frozenset((a, v) for a, v in names if a in reference) for _, names in find_mentions(description, vocabulary)}
    details.discard(frozenset())  # phrases naming only attributes this item has no value for cannot be checked
    wrong = sorted(", ".join(f"{a}={v}" for a, v in sorted(detail)) for detail in details
                   if not any(v in reference[a] for a, v in detail))
    scores["Factual Consistency"] = 10.0 * (len(details) - len(wrong)) / len(details) if details else 0.0
    return {"named": named, "reference": reference, "hits": hits, "scores": scores, "wrong_details": wrong}


def attribute_scores(descriptions, rows, vocabulary: AttributeVocabulary = None, columns=None) -> dict:
    """
    The five 0-10 scores and Overall over all items, per-attribute hit rates (0-1), how many items each covers,
    and the per-item details. `vocabulary` defaults to one built from `rows` (pass one built from the whole
    catalog so that values seen only in other splits are recognised too).
    """
    descriptions, rows = list(descriptions), list(rows)
    if len(descriptions) != len(rows):
        raise ValueError(f"Got {len(descriptions)} descriptions but {len(rows)} item rows: give one row per description.")
    if not rows:
        raise ValueError("No descriptions to score.")
    vocabulary = vocabulary or AttributeVocabulary.from_rows(rows, columns=columns)
    items = [item_scores(text, row, vocabulary) for text, row in zip(descriptions, rows)]
    scores, counts = {}, {}
    for name in SCORE_NAMES:
        values = [item["scores"][name] for item in items if item["scores"][name] is not None]
        counts[name] = len(values)
        scores[name] = sum(values) / len(values) if values else None
    known = [scores[name] for name in SCORE_NAMES if scores[name] is not None]
    scores["Overall"] = sum(known) / len(known) if known else None
    hit_rates = {}
    for attribute in vocabulary.columns:
        hits = [item["hits"][attribute] for item in items if attribute in item["hits"]]
        if hits:
            hit_rates[attribute] = sum(hits) / len(hits)
    return {"scores": scores, "hit_rates": hit_rates, "counts": counts, "items": items}


def majority_baseline(rows, columns=None) -> dict:
    """
    {attribute: {"value", "rate"}}: how often always answering the most common value of each attribute column would
    be right on these rows (rows with an empty cell are left out of that attribute).
    """
    rows = list(rows)
    if not rows:
        raise ValueError("No rows to compute a majority baseline on.")
    baseline = {}
    for attribute, column in columns_for({key for row in rows for key in row}, columns).items():
        values = Counter(str(row[column]).strip() for row in rows if not is_missing(row.get(column)))
        if values:
            value, count = values.most_common(1)[0]
            baseline[attribute] = {"value": value, "rate": count / sum(values.values())}
    return baseline


def _caption_tokens(text: str) -> str:
    # pycocoevalcap's PTBTokenizer needs Java; lower-cased word tokens are what it would give for captions like ours.
    return " ".join(re.findall(r"\w+", text.lower()))


def text_overlap_scores(descriptions, reference_captions) -> dict:
    """BLEU (0-100), ROUGE-L F1 (0-1) and CIDEr of descriptions against one reference caption each."""
    import sacrebleu
    from pycocoevalcap.cider.cider import Cider
    from rouge_score import rouge_scorer

    descriptions, reference_captions = list(descriptions), list(reference_captions)
    if len(descriptions) != len(reference_captions):
        raise ValueError(f"Got {len(descriptions)} descriptions but {len(reference_captions)} reference captions.")
    if not descriptions:
        raise ValueError("No descriptions to score.")
    for i, caption in enumerate(reference_captions):
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"Reference caption {i} is empty or not a string: {caption!r}.")
    bleu = sacrebleu.corpus_bleu(descriptions, [reference_captions]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge_l = [scorer.score(ref, hyp)["rougeL"].fmeasure for ref, hyp in zip(reference_captions, descriptions)]
    cider = None
    if len(descriptions) > 1:
        references = {i: [_caption_tokens(ref)] for i, ref in enumerate(reference_captions)}
        hypotheses = {i: [_caption_tokens(hyp)] for i, hyp in enumerate(descriptions)}
        cider = float(Cider().compute_score(references, hypotheses)[0])
    return {"BLEU": float(bleu), "ROUGE-L": sum(rouge_l) / len(rouge_l), "CIDEr": cider}


def score_descriptions(descriptions, rows, vocabulary=None, columns=None, reference_captions=None) -> dict:
    """Attribute scores (see attribute_scores) and, with reference captions, text overlap scores under "text"."""
    result = attribute_scores(descriptions, rows, vocabulary=vocabulary, columns=columns)
    if reference_captions is not None:
        result["text"] = text_overlap_scores(descriptions, reference_captions)
    return result


def flat_metrics(result: dict, prefix: str = "") -> dict:
    """The numbers of a score_descriptions result as one flat {name: float} dict (for logs and charts)."""
    flat = {}
    for name, value in result["scores"].items():
        flat[prefix + name.lower().replace(" ", "_")] = value
    for attribute, rate in result["hit_rates"].items():
        flat[f"{prefix}{attribute}_hit_rate"] = rate
    for name, value in result.get("text", {}).items():
        flat[prefix + name.lower().replace("-", "_")] = value
    return {name: value for name, value in flat.items() if value is not None}
