"""The held-out evaluation at the end of a run: descriptions next to the truth, exact matches, attribute scores."""

import torch

from moda.evaluate.description_scores import attribute_scores
from moda.model.auto_classes import MODAProcessor
from moda.train.model import unwrap


@torch.no_grad()
def describe_examples(model, processor, examples, feature_name, batch_size=64, max_new_tokens=32):
    """Greedy descriptions for examples with cached features (no image decoding)."""
    model = unwrap(model).eval()
    texts = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        inputs = {feature_name: torch.stack([example["features"] for example in chunk]).float()}
        if isinstance(processor, MODAProcessor):
            inputs.update(processor(text=[example["prompt"] for example in chunk]))
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens)
        texts += [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]
    return texts


def report_held_out(model, processor, splits, feature_name, vocabulary) -> dict:
    """
    Describes the held-out split (test, else validation), prints a few descriptions next to the truth, the exact
    matches and the per-attribute scores; returns them for the training summary.
    """
    test_split = "test" if "test" in splits else "validation"
    test_examples = [example for example in splits[test_split] if example["prompt"] is None]
    descriptions = describe_examples(model, processor, test_examples, feature_name)
    for example, text in list(zip(test_examples, descriptions))[:8]:
        print(f"  truth: {example['description']}\n  model: {text}\n")
    result = {"hit_rates": None, "scores": None}
    if vocabulary is not None:
        result = attribute_scores(descriptions, [example["row"] for example in test_examples], vocabulary)
    exact = sum(t == e["description"] for t, e in zip(descriptions, test_examples)) / max(1, len(test_examples))
    print(f"{test_split} items: {len(test_examples)}  exact caption match: {exact:.3f}")
    for attribute, rate in (result["hit_rates"] or {}).items():
        print(f"  {attribute:<12} named correctly: {rate:.3f}")
    for name, score in (result["scores"] or {}).items():
        print(f"  {name:<20} {score:.2f} / 10" if score is not None else f"  {name:<20} -")
    return {"eval_split": test_split, "num_eval_items": len(test_examples), "attribute_accuracy": result["hit_rates"],
            "scores": result["scores"], "exact_match": exact}
