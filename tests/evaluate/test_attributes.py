"""The attribute extractor and the write-up's deterministic description scores (moda.data.attributes,
moda.evaluate.description_scores, the fashion_attributes evaluate metric)."""

import json
from pathlib import Path

import pytest

from moda.data.attributes import AttributeVocabulary, columns_for, extract_attributes
from moda.evaluate.description_scores import (attribute_scores, majority_baseline, score_descriptions,
                                              text_overlap_scores)

METRIC_DIR = Path(__file__).resolve().parents[2] / "moda" / "metrics" / "fashion_attributes"


def myntra_row(colour, gender, product_type, usage, category="Apparel", subcategory="Topwear"):
    return {"Colour": colour, "Gender": gender, "ProductType": product_type, "Usage": usage,
            "Category": category, "SubCategory": subcategory, "ProductTitle": "x"}


ROWS = [
    myntra_row("Navy Blue", "Men", "Trousers", "Formal", subcategory="Bottomwear"),
    myntra_row("Blue", "Women", "Tshirts", "Casual"),
    myntra_row("Grey", "Boys", "Shirts", "Casual"),
    myntra_row("Off White", "Girls", "Kurtas", "Ethnic"),
    myntra_row("Maroon", "Women", "Dresses", "Party", subcategory="Dress"),
    myntra_row("Black", "Men", "Sports Shoes", "Sports", category="Footwear", subcategory="Shoes"),
    myntra_row("White", "Men", "Casual Shoes", "Casual", category="Footwear", subcategory="Shoes"),
    myntra_row("Red", "Women", "Flip Flops", "Casual", category="Footwear", subcategory="Flip Flops"),
    myntra_row("Black and White", "Unisex", "Shorts", "Sports", subcategory="Bottomwear"),
]


@pytest.fixture(scope="module")
def vocabulary():
    return AttributeVocabulary.from_rows(ROWS)


def named(text, vocabulary):
    return {attribute: values for attribute, values in extract_attributes(text, vocabulary).items() if values}


@pytest.mark.parametrize("text, expected", [
    ("Navy Blue Formal Trousers for Men - Apparel Bottomwear",
     {"colour": ["Navy Blue"], "usage": ["Formal"], "product_type": ["Trousers"], "gender": ["Men"],
      "category": ["Apparel"], "subcategory": ["Bottomwear"]}),
    ("A gray and off-white striped T-Shirt for ladies",
     {"colour": ["Grey", "Off White"], "product_type": ["Tshirts"], "gender": ["Women"]}),
    ("Men's burgundy kurta", {"gender": ["Men"], "colour": ["Maroon"], "product_type": ["Kurtas"]}),
    ("navy shirt for a boy", {"colour": ["Navy Blue"], "product_type": ["Shirts"], "gender": ["Boys"]}),
    ("Kids-Girls red dress", {"gender": ["Girls"], "colour": ["Red"], "product_type": ["Dresses"],
                              "subcategory": ["Dress"]}),
    ("Black Sports Sports Shoes for Male", {"colour": ["Black"], "usage": ["Sports"],
                                            "product_type": ["Sports Shoes"], "gender": ["Men"]}),
    ("White Casual Shoes", {"colour": ["White"], "product_type": ["Casual Shoes"]}),
    ("Black shorts for men and women", {"colour": ["Black"], "product_type": ["Shorts"], "gender": ["Unisex"]}),
    ("blue flip-flop, unisex", {"colour": ["Blue"], "product_type": ["Flip Flops"], "subcategory": ["Flip Flops"],
                                "gender": ["Unisex"]}),
    ("short sleeves in black and white", {"colour": ["Black", "White"]}),
    ("Women WOMEN women", {"gender": ["Women"]}),
    ("a nice thing", {}),
])
def test_extract_attributes(vocabulary, text, expected):
    assert named(text, vocabulary) == expected


def test_navy_blue_is_not_also_blue(vocabulary):
    assert extract_attributes("Navy Blue jeans", vocabulary)["colour"] == ["Navy Blue"]
    assert extract_attributes("Navy and Blue", vocabulary)["colour"] == ["Navy Blue", "Blue"]


def test_build_dataset_template_descriptions_score_full_marks(vocabulary):
    # moda.catalog.build_dataset writes Unisex as "for men and women" and leaves out a usage the product type holds
    # ("White casual shoes"): the scores must read both as the item's own values.
    from moda.catalog.build_dataset import item_attributes, template_description

    descriptions = [template_description(item_attributes(row)) for row in ROWS]
    assert "White casual shoes for men. Category: Footwear, Shoes." in descriptions
    result = attribute_scores(descriptions, ROWS, vocabulary)
    assert [item["wrong_details"] for item in result["items"]] == [[]] * len(ROWS)
    assert set(result["scores"].values()) == {10.0}


def test_a_product_type_names_its_own_usage_only(vocabulary):
    scores = scores_of("Black casual shoes for men", ROWS[5], vocabulary)  # Sports Shoes, usage Sports
    assert scores["Style Recognition"] == 0.0 and scores["Category Accuracy"] == 0.0
    # The usage it holds does not make a wrong product type a right detail.
    wrong = attribute_scores(["White casual shoes"], [dict(ROWS[2], Colour="White")], vocabulary)["items"][0]
    assert wrong["wrong_details"] == ["product_type=Casual Shoes"] and wrong["scores"]["Style Recognition"] == 10.0


def test_synonym_that_is_a_catalog_value_keeps_its_meaning():
    vocabulary = AttributeVocabulary.from_values({"colour": ["Maroon", "Burgundy", "Grey", "Grey Melange"]})
    assert named("burgundy and maroon", vocabulary) == {"colour": ["Burgundy", "Maroon"]}
    assert named("gray melange", vocabulary) == {"colour": ["Grey Melange"]}


def test_small_set_columns_are_found_by_name():
    rows = [{"baseColour": "Black", "gender": "Men", "articleType": "Watches", "masterCategory": "Accessories",
             "subCategory": "Watches", "usage": "Casual", "productDisplayName": "Titan Men Black Watch"}]
    vocabulary = AttributeVocabulary.from_rows(rows)
    assert vocabulary.columns["colour"] == "baseColour"
    assert named("Titan Men Black Watch", vocabulary) == {
        "gender": ["Men"], "colour": ["Black"], "product_type": ["Watches"], "subcategory": ["Watches"]}


def test_columns_come_from_every_row_not_only_the_first():
    # JSON references (the evaluate metric's, a JSONL catalog's) may leave out an empty cell's key.
    rows = [{"Colour": "Red"}, {"Colour": "Blue", "Usage": "Casual"}, {"Colour": "Blue", "Usage": "Formal"}]
    assert AttributeVocabulary.from_rows(rows).columns == {"colour": "Colour", "usage": "Usage"}
    assert majority_baseline(rows)["usage"] == {"value": "Casual", "rate": 0.5}
    assert attribute_scores(["red", "blue casual", "blue casual"], rows)["hit_rates"]["usage"] == 0.5


def test_column_errors_name_the_problem():
    with pytest.raises(ValueError, match="none of the attribute columns"):
        columns_for(["file_name", "title"])
    with pytest.raises(ValueError, match="Unknown column layout 'amazon'"):
        columns_for(["Colour"], "amazon")
    with pytest.raises(ValueError, match="Unknown attribute"):
        columns_for(["Colour"], {"fabric": "Colour"})
    with pytest.raises(ValueError, match="no rows"):
        AttributeVocabulary.from_rows([])


def test_reference_reads_several_colours_and_leaves_out_empty_cells(vocabulary):
    row = dict(ROWS[-1], Usage="", ProductType="NA")
    assert vocabulary.reference(row) == {"colour": ["Black", "White"], "gender": ["Unisex"], "category": ["Apparel"],
                                         "subcategory": ["Bottomwear"]}


def scores_of(text, row, vocabulary):
    return attribute_scores([text], [row], vocabulary)["scores"]


def test_perfect_description_scores_ten(vocabulary):
    scores = scores_of("Navy Blue Formal Trousers for Men - Apparel Bottomwear", ROWS[0], vocabulary)
    assert scores == {"Color Accuracy": 10.0, "Style Recognition": 10.0, "Category Accuracy": 10.0,
                      "Gender Accuracy": 10.0, "Factual Consistency": 10.0, "Overall": 10.0}


def test_wrong_colour(vocabulary):
    # 6 details named, 1 wrong (the colour): consistency 5/6.
    scores = scores_of("Black Formal Trousers for Men - Apparel Bottomwear", ROWS[0], vocabulary)
    assert scores["Color Accuracy"] == 0.0
    assert scores["Factual Consistency"] == pytest.approx(10 * 5 / 6)
    assert scores["Overall"] == pytest.approx((0 + 10 + 10 + 10 + 10 * 5 / 6) / 5)


def test_partial_and_missing_details(vocabulary):
    two_colours = ROWS[-1]
    assert scores_of("Black Sports Shorts for Unisex", two_colours, vocabulary)["Color Accuracy"] == 5.0
    scores = scores_of("Blue Tshirts for Men", ROWS[1], vocabulary)  # gender wrong, usage not named
    assert (scores["Gender Accuracy"], scores["Style Recognition"], scores["Category Accuracy"]) == (0.0, 0.0, 10.0)
    assert scores["Factual Consistency"] == pytest.approx(10 * 2 / 3)
    assert scores_of("a nice thing", ROWS[1], vocabulary)["Factual Consistency"] == 0.0


def test_a_phrase_naming_several_attributes_is_one_detail():
    rows = [myntra_row("Black", "Men", "Sports Sandals", "Casual", category="Footwear", subcategory="Sandal"),
            myntra_row("Brown", "Women", "Sandals", "Casual", category="Footwear", subcategory="Sandal")]
    vocabulary = AttributeVocabulary.from_rows(rows)
    # "Sandal" names the subcategory Sandal and the product type Sandals: right as a subcategory.
    result = attribute_scores(["Black Casual Sports Sandals for Men - Footwear Sandal"], rows[:1], vocabulary)
    assert result["scores"]["Factual Consistency"] == 10.0 and result["items"][0]["wrong_details"] == []
    wrong = attribute_scores(["Black sandal for men"], [myntra_row("Black", "Men", "Tops", "Casual")], vocabulary)
    assert wrong["items"][0]["wrong_details"] == ["product_type=Sandals, subcategory=Sandal"]
    assert wrong["scores"]["Factual Consistency"] == pytest.approx(10 * 2 / 3)


def test_items_without_a_value_are_left_out_of_that_score(vocabulary):
    rows = [dict(ROWS[1], Usage=""), ROWS[2]]
    result = attribute_scores(["Blue Casual Tshirts for Women", "Grey Formal Shirts for Boys"], rows, vocabulary)
    assert result["counts"]["Style Recognition"] == 1
    assert result["scores"]["Style Recognition"] == 0.0  # only the second item has a usage, and it is wrong
    assert result["hit_rates"]["usage"] == 0.0
    assert result["hit_rates"]["colour"] == 1.0


def test_category_falls_back_to_the_most_specific_level_present():
    rows = [{"Colour": "Red", "Category": "Footwear", "SubCategory": "Sandal"}]
    assert attribute_scores(["red sandals"], rows)["scores"]["Category Accuracy"] == 10.0
    assert attribute_scores(["red footwear"], rows)["scores"]["Category Accuracy"] == 0.0


def test_mismatched_lengths_are_an_error(vocabulary):
    with pytest.raises(ValueError, match="2 descriptions but 1 item rows"):
        attribute_scores(["a", "b"], ROWS[:1], vocabulary)
    with pytest.raises(TypeError, match="must be a string"):
        attribute_scores([None], ROWS[:1], vocabulary)


def test_majority_baseline():
    baseline = majority_baseline(ROWS)
    assert baseline["gender"] == {"value": "Men", "rate": 3 / 9}
    assert baseline["usage"] == {"value": "Casual", "rate": 4 / 9}


def test_text_overlap_scores():
    refs = ["Navy Blue Formal Trousers for Men", "Red Casual Dresses for Women", "Black Sports Shoes for Men"]
    same = text_overlap_scores(refs, refs)
    assert same["BLEU"] == pytest.approx(100.0)
    assert same["ROUGE-L"] == pytest.approx(1.0)
    different = text_overlap_scores(["green hat", "blue scarf", "white socks"], refs)
    assert different["ROUGE-L"] == 0.0 and different["CIDEr"] == 0.0 < same["CIDEr"]
    assert text_overlap_scores(refs[:1], refs[:1])["CIDEr"] is None  # CIDEr's IDF needs a corpus
    with pytest.raises(ValueError, match="Reference caption 0 is empty"):
        text_overlap_scores(["a"], [""])


def test_evaluate_metric_loads_offline_and_matches_the_function(vocabulary):
    import evaluate

    metric = evaluate.load(str(METRIC_DIR))
    predictions = ["Navy Blue Formal Trousers for Men", "Black Casual Tshirts for Women"]
    captions = ["Navy Blue Formal Trousers for Men - Apparel Bottomwear", "Blue Casual Tshirts for Women - Apparel Topwear"]
    result = metric.compute(predictions=predictions, references=[json.dumps(row) for row in ROWS[:2]],
                            vocabulary_rows=[json.dumps(row) for row in ROWS], reference_captions=captions)
    expected = score_descriptions(predictions, ROWS[:2], vocabulary, reference_captions=captions)
    assert result["Color Accuracy"] == 5.0
    assert result["Overall"] == pytest.approx(expected["scores"]["Overall"])
    assert result["colour_hit_rate"] == 0.5
    assert result["BLEU"] == pytest.approx(expected["text"]["BLEU"])
    with pytest.raises(ValueError, match=r"references\[0\] is not a JSON object string"):
        metric.compute(predictions=["x"], references=["Colour: Red"])
