"""An optional LLM judge: a text-generation model scores each description with the MODA write-up's rubric.

    from moda.evaluate.judge import judge_descriptions
    judged = judge_descriptions(descriptions, rows, "Qwen/Qwen2.5-1.5B-Instruct")   # any local folder or Hub id
    judged["mean_scores"], judged["items"][0]

The judge sees the item's metadata and the description and answers with a JSON object of 0-10 scores. Output that
is not such an object is reported on its item ("error", with the raw output) and left out of the means; nothing is
retried or guessed. The deterministic scores of moda.evaluate.description_scores need no model; this is the write-up's
other way of scoring.
"""

import re

from moda.data.attributes import columns_for, is_missing
from moda.evaluate.description_scores import SCORE_NAMES
from moda.io.records import json_objects
from moda.model.text_generation import generated_text, load_text_generator

JUDGE_KEYS = SCORE_NAMES + ("Overall",)
ATTRIBUTE_LABELS = {"colour": "Colour", "gender": "Gender", "product_type": "Product type", "category": "Category",
                    "subcategory": "Subcategory", "usage": "Usage"}

JUDGE_PROMPT = """You are a fashion expert judging an AI-generated product description against the product's catalog data.

Product data:
{details}

Generated description: "{description}"

Score the description from 0 (completely wrong) to 10 (perfect) on each criterion:
- Color Accuracy: does it name the product's colour(s) correctly?
- Style Recognition: does it recognise the style and usage (casual, formal, sports, ethnic, party)?
- Category Accuracy: does it name the right kind of product and category?
- Gender Accuracy: does it name the right gender (men, women, boys, girls, unisex)?
- Factual Consistency: is everything it states consistent with the product data (nothing invented or wrong)?
- Overall: the overall quality of the description.

Answer with only a JSON object, no other text:
{{"Color Accuracy": <0-10>, "Style Recognition": <0-10>, "Category Accuracy": <0-10>, "Gender Accuracy": <0-10>, "Factual Consistency": <0-10>, "Overall": <0-10>}}"""


class JudgeOutputError(ValueError):
    """The judge's answer holds no usable JSON object of scores."""


def _key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower()).replace("colour", "color")


KEY_BY_NORMALISED = {_key(name): name for name in JUDGE_KEYS}


def build_judge_prompt(description: str, row: dict, columns=None) -> str:
    """The rubric prompt for one item: its metadata (the attribute columns it has) and the description."""
    details = [f"- {ATTRIBUTE_LABELS[attribute]}: {str(row[column]).strip()}"
               for attribute, column in columns_for(row.keys(), columns).items() if not is_missing(row.get(column))]
    return JUDGE_PROMPT.format(details="\n".join(details), description=description)


def _score(value, name: str) -> float:
    if isinstance(value, bool):
        raise JudgeOutputError(f"{name!r} is {value!r}, not a number")
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*", value)
        if not match:
            raise JudgeOutputError(f"{name!r} is {value!r}, not a number")
        value = float(match.group(1))
    if not isinstance(value, (int, float)) or not 0 <= value <= 10:
        raise JudgeOutputError(f"{name!r} is {value!r}, not a number from 0 to 10")
    return float(value)


def parse_judge_output(text: str) -> dict:
    """
    The six scores from a judge's answer: the first JSON object in it that has rubric keys (spelling and case of
    the keys are forgiven: "color_accuracy", "Colour Accuracy"). Overall, when left out, is the mean of the five.
    Raises JudgeOutputError saying what is wrong.
    """
    if not isinstance(text, str) or not text.strip():
        raise JudgeOutputError("empty output")
    for found in json_objects(text):
        scores = {KEY_BY_NORMALISED[_key(k)]: v for k, v in found.items() if _key(k) in KEY_BY_NORMALISED}
        if not scores:
            continue
        missing = [name for name in SCORE_NAMES if name not in scores]
        if missing:
            raise JudgeOutputError(f"the JSON object lacks {missing}")
        scores = {name: _score(value, name) for name, value in scores.items()}
        if "Overall" not in scores:
            scores["Overall"] = sum(scores[name] for name in SCORE_NAMES) / len(SCORE_NAMES)
        return {name: scores[name] for name in JUDGE_KEYS}
    raise JudgeOutputError("no JSON object with the rubric's scores")


def load_judge(model: str, device=None):
    """A text-generation pipeline for a local folder or Hub id, set up for batched greedy answers."""
    return load_text_generator(model, device=device)


def judge_descriptions(descriptions, rows, model=None, generator=None, vocabulary=None, device=None,
                       max_new_tokens: int = 128, batch_size: int = 4) -> dict:
    """
    Judges each description against its row. Give `model` (a folder or Hub id) or a ready `generator`
    (a text-generation pipeline). Returns {"model", "num_items", "num_parsed", "mean_scores", "items"}, each item
    with the raw "output" and either "scores" or "error".
    """
    descriptions, rows = list(descriptions), list(rows)
    if len(descriptions) != len(rows):
        raise ValueError(f"Got {len(descriptions)} descriptions but {len(rows)} rows.")
    if generator is None:
        if model is None:
            raise ValueError("Give the judge's model (a folder or Hub id) or a text-generation pipeline.")
        generator = load_judge(model, device=device)
    columns = vocabulary.columns if vocabulary is not None else None
    prompts = [build_judge_prompt(text, row, columns) for text, row in zip(descriptions, rows)]
    tokenizer = getattr(generator, "tokenizer", None)
    if getattr(tokenizer, "chat_template", None):
        prompts = [[{"role": "user", "content": prompt}] for prompt in prompts]
    outputs = generator(prompts, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False,
                        batch_size=batch_size)
    items = []
    for description, output in zip(descriptions, outputs):
        answer = generated_text(output)
        item = {"description": description, "output": answer}
        try:
            item["scores"] = parse_judge_output(answer)
        except JudgeOutputError as err:
            item["error"] = str(err)
        items.append(item)
    parsed = [item["scores"] for item in items if "scores" in item]
    means = {name: sum(s[name] for s in parsed) / len(parsed) for name in JUDGE_KEYS} if parsed else {}
    name = model or getattr(getattr(generator, "model", None), "name_or_path", "judge")
    return {"model": str(name), "num_items": len(items), "num_parsed": len(parsed), "mean_scores": means,
            "items": items}
