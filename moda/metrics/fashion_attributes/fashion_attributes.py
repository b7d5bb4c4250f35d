"""fashion_attributes: the MODA write-up's description scores as an `evaluate` metric, computed from item metadata.

    metric = evaluate.load("moda/metrics/fashion_attributes")        # a local folder: works offline
    metric.compute(predictions=["Navy Blue Formal Trousers for Men"],
                   references=[json.dumps({"Colour": "Navy Blue", "Gender": "Men", "ProductType": "Trousers", ...})])

`moda` must be importable (pip install -e . or run from the repository root).
"""

import json

import datasets
import evaluate

from moda.data.attributes import AttributeVocabulary
from moda.evaluate.description_scores import SCORE_NAMES, score_descriptions

_DESCRIPTION = """
Scores fashion item descriptions against the item's catalog metadata, on 0-10 as the MODA write-up's judge rubric:
Color Accuracy (share of the item's colours named), Style Recognition (usage named), Category Accuracy (product
type named), Gender Accuracy, Factual Consistency (share of the attribute values named that are right), and Overall
(their mean); plus per-attribute hit rates (0-1) and, given reference captions, BLEU, ROUGE-L and CIDEr.
Attribute values are found by whole-word, longest-first matching against a vocabulary built from the metadata
(with synonyms such as gray/grey, ladies/Women, t-shirt/Tshirts, and singular/plural forms).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str, the generated descriptions.
    references: list of str, one per prediction: the item's metadata row as a JSON object string, e.g.
        '{"Colour": "Navy Blue", "Gender": "Men", "ProductType": "Trousers", "Category": "Apparel",
          "SubCategory": "Bottomwear", "Usage": "Formal"}'. Myntra columns (Colour, Gender, ProductType, Category,
        SubCategory, Usage) and the small set's (baseColour, gender, articleType, masterCategory, subCategory, usage)
        are recognised by name; other layouts need `columns`.
    columns: optional {attribute: column} mapping ("colour", "gender", "product_type", "category", "subcategory",
        "usage"), or "myntra" / "small".
    vocabulary_rows: optional list of metadata JSON strings to build the vocabulary from (e.g. the whole catalog,
        so that values absent from these references are still recognised); default: the references.
    reference_captions: optional list of str, one per prediction (e.g. ProductTitle or the template caption):
        adds BLEU (0-100), ROUGE-L (0-1) and CIDEr (two or more items).
Returns:
    {"Color Accuracy", "Style Recognition", "Category Accuracy", "Gender Accuracy", "Factual Consistency",
     "Overall"} on 0-10, "<attribute>_hit_rate" on 0-1, and with reference captions "BLEU", "ROUGE-L", "CIDEr".
Example:
    >>> metric = evaluate.load("moda/metrics/fashion_attributes")
    >>> row = {"Colour": "Red", "Gender": "Women", "ProductType": "Dresses", "Usage": "Casual"}
    >>> metric.compute(predictions=["Red Casual Dresses for Women"], references=[json.dumps(row)])["Overall"]
    10.0
"""


def _parse_rows(strings, what):
    rows = []
    for i, text in enumerate(strings):
        try:
            row = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{what}[{i}] is not a JSON object string ({err}): {str(text)[:80]!r}") from err
        if not isinstance(row, dict):
            raise ValueError(f"{what}[{i}] must be a JSON object (the item's metadata), got {type(row).__name__}.")
        rows.append(row)
    return rows


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FashionAttributes(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, columns=None, vocabulary_rows=None, reference_captions=None):
        rows = _parse_rows(references, "references")
        vocabulary = None
        if vocabulary_rows is not None:
            vocabulary = AttributeVocabulary.from_rows(_parse_rows(vocabulary_rows, "vocabulary_rows"), columns=columns)
        result = score_descriptions(predictions, rows, vocabulary=vocabulary, columns=columns,
                                    reference_captions=reference_captions)
        output = {name: result["scores"][name] for name in SCORE_NAMES + ("Overall",)}
        output.update({f"{attribute}_hit_rate": rate for attribute, rate in result["hit_rates"].items()})
        output.update(result.get("text", {}))
        return output
