"""`moda eval`: caption a catalog split with a model, score the descriptions against the item metadata, report.

    moda eval --model ./moda-demo --data ../shared/data/fashion-images --split test --output_dir eval

`--split` defaults to test, else to the catalog's only split (a CSV/JSONL file is one split: all its rows are scored,
and the summary and report say so). It writes eval/report.json (every number and every item), eval/report.md,
eval/metrics.png (the write-up's five scores) and eval/confusion_colour.png, eval/confusion_product_type.png, and
prints a summary with the majority-class baseline. The scores are those of moda.description_scores (the MODA
write-up's rubric, computed from metadata); `--judge MODEL` adds an LLM judge's scores (moda.judge) for the first
`--judge_limit` items.

`AttributeMetricsCallback` computes the same scores during training, at every evaluation, against tokens seen.
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from transformers import TrainerCallback

from moda.data.attributes import AttributeVocabulary
from moda.data.catalog import (MODA_CAPTION_TEMPLATE, BadRowError, BadRows, caption_for, read_catalog_splits,
                               require_caption_columns, sample_rows)
from moda.description_scores import SCORE_NAMES, flat_metrics, majority_baseline, score_descriptions
from moda.io.errors import run_command
from moda.io.images import load_image
from moda.model.loading import eval_model_type, load_model_and_processor

CONFUSION_ATTRIBUTES = ("colour", "product_type")
DEFAULT_SPLIT = "test"


# --- models and images ------------------------------------------------------------------------------------------

@torch.no_grad()
def describe_images(model, processor, images, batch_size: int = 16, max_new_tokens: int = 32, progress: bool = False,
                    prompt: str = None):
    """
    Greedy descriptions for PIL images, in batches (processor + model.generate; no pipeline), answering `prompt` when
    one is given. `max_new_tokens=None` leaves the length to the model's generation config.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    texts = []
    starts = range(0, len(images), batch_size)
    try:
        for start in tqdm(starts, desc="describing", unit="batch", disable=not progress):
            inputs = processor(images=list(images[start:start + batch_size]), text=prompt or None, return_tensors="pt")
            inputs = {key: value.to(device) for key, value in inputs.items()}
            # None is left out rather than passed: generate would take it as a value.
            limits = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
            ids = model.generate(**inputs, **limits)
            texts += [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return texts


# --- the eval command ---------------------------------------------------------------------------------------------

def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(prog="moda eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a MODA model folder or Hub id (or a BLIP baseline folder)")
    parser.add_argument("--data", required=True,
                        help="an imagefolder directory (<split>/metadata.csv), a CSV/JSONL file or a Hub dataset")
    parser.add_argument("--split", default=None,
                        help=f"the split to score (default: {DEFAULT_SPLIT!r}, else the catalog's only split, e.g. "
                             "all rows of a CSV/JSONL file)")
    parser.add_argument("--output_dir", default="eval")
    parser.add_argument("--limit", type=int, default=None,
                        help="score N items of the split, drawn at random (seed 0) in the split's order: a catalog "
                             "file is often grouped, so its first N would be a skewed sample")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--image_column", default="image", help="the image column of a CSV/JSONL or Hub dataset")
    parser.add_argument("--columns", default=None, choices=["myntra", "small"],
                        help="the catalog's attribute columns (default: found by name)")
    parser.add_argument("--caption_template", default=MODA_CAPTION_TEMPLATE,
                        help="reference captions for BLEU/ROUGE-L/CIDEr, filled from each item's metadata")
    parser.add_argument("--caption_column", default=None,
                        help="take reference captions from this column instead (e.g. ProductTitle)")
    parser.add_argument("--on_bad_row", default="skip", choices=["skip", "fail"],
                        help="items without a readable image: skip them (listed in the report) or stop")
    parser.add_argument("--judge", default=None, help="also score with an LLM judge (a text-generation model)")
    parser.add_argument("--judge_limit", type=int, default=20, help="how many items the judge scores")
    parser.add_argument("--revision", default=None, help="a Hub revision of --model to pin")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    args = parser.parse_args(argv)
    # Checked here, not after the catalog's images are read and the model is loaded.
    for name in ("limit", "batch_size", "max_new_tokens", "judge_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    return args


def choose_split(catalog: dict, split: str = None, data: str = "the catalog") -> tuple:
    """
    (split name, note or None): `split` when given; else "test"; else the catalog's only split (a CSV/JSONL file's
    rows are one "train" split), with a note, since that split may hold the items the model was trained on.
    """
    if split is not None:
        if split not in catalog:
            one_split = len(catalog) == 1
            hint = " (a CSV/JSONL file is one split: leave out --split to score all its rows)" if one_split else ""
            raise ValueError(f"{data!r} has no split {split!r}; it has {sorted(catalog)}{hint}.")
        return split, None
    if DEFAULT_SPLIT in catalog:
        return DEFAULT_SPLIT, None
    if len(catalog) == 1:
        (only,) = catalog
        return only, (f"{data!r} has no {DEFAULT_SPLIT!r} split, so its only split {only!r} was scored "
                      "(it may hold items the model was trained on)")
    raise ValueError(f"{data!r} has no split {DEFAULT_SPLIT!r}; it has {sorted(catalog)}: pick one with --split.")


def split_rows(catalog: dict, split: str, limit: int = None) -> list:
    rows = sample_rows(catalog[split], limit, seed=0)
    if not rows:
        raise ValueError(f"Split {split!r} of the catalog is empty.")
    return rows


def readable_items(rows: list, bad_rows: BadRows):
    """(rows, PIL images) for the rows whose image can be read; the others go to bad_rows with their reason."""
    kept, images = [], []
    for i, row in enumerate(rows):
        where = row.get("_where", f"row {i}")
        try:
            images.append(load_image(row.get("image"), where))
        except ValueError as err:
            bad_rows.report(where, str(err))
            continue
        kept.append(row)
    return kept, images


def reference_captions_for(rows, caption_column=None, caption_template=MODA_CAPTION_TEMPLATE):
    """(captions, None), or (None, reason) when some row cannot give one (text metrics are then not computed)."""
    captions = []
    for i, row in enumerate(rows):
        try:
            captions.append(caption_for(row, caption_column, caption_template))
        except BadRowError as err:
            source = f"column {caption_column!r}" if caption_column else f"template {caption_template!r}"
            return None, f"no reference caption from {source} for {row.get('_where', f'row {i}')}: {err}"
    return captions, None


def main(argv=None) -> int:
    args = parse_arguments(argv)
    return run_command("moda eval", evaluate, args)


def evaluate(args) -> int:
    output_dir = Path(args.output_dir)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    eval_model_type(args.model, args.revision)  # before the split's images are read

    # The splits as the data holds them: load_catalog would set aside a random tenth of a lone train split as
    # validation (for training), and scoring a file would then leave rows out unsaid.
    catalog = read_catalog_splits(args.data, image_column=args.image_column)
    if args.caption_column or args.caption_template != MODA_CAPTION_TEMPLATE:  # named by the user: must exist (the
        # default template only skips the text metrics on catalogs without its columns, with the reason printed)
        require_caption_columns(catalog, args.data, args.caption_column, args.caption_template)
    split, split_note = choose_split(catalog, args.split, args.data)
    rows = split_rows(catalog, split, args.limit)
    # The vocabulary covers every split: a value named in a description but absent from this split is still a fact.
    vocabulary = AttributeVocabulary.from_rows([row for part in catalog.values() for row in part], args.columns)
    bad_rows = BadRows(args.on_bad_row)
    rows, images = readable_items(rows, bad_rows)
    if not rows:
        raise ValueError(f"No item of split {split!r} has a readable image:\n{bad_rows.summary()}")

    model, processor = load_model_and_processor(args.model, args.revision)
    model.to(device)
    descriptions = describe_images(model, processor, images, args.batch_size, args.max_new_tokens, progress=True)

    captions, no_text_reason = reference_captions_for(rows, args.caption_column, args.caption_template)
    result = score_descriptions(descriptions, rows, vocabulary=vocabulary, reference_captions=captions)
    selection = {"split": split, "split_note": split_note, "split_rows": len(catalog[split])}
    report = build_report(args, selection, rows, descriptions, captions, result,
                          majority_baseline(rows, vocabulary.columns), bad_rows, no_text_reason)
    if args.judge:
        from moda.judge import judge_descriptions

        n = min(args.judge_limit, len(rows))
        report["judge"] = judge_descriptions(descriptions[:n], rows[:n], args.judge, vocabulary=vocabulary,
                                             device=device)
    write_report(report, output_dir)
    print(summary_table(report))
    print(f"\nreport: {output_dir / 'report.json'}, {output_dir / 'report.md'}")
    return 0


# --- reports ------------------------------------------------------------------------------------------------------

def build_report(args, selection, rows, descriptions, captions, result, baseline, bad_rows,
                 no_text_reason=None) -> dict:
    """`selection`: {"split", "split_note", "split_rows" (how many rows the split has)} as main chose them."""
    items = []
    for i, (row, description, item) in enumerate(zip(rows, descriptions, result["items"])):
        items.append({
            "where": row.get("_where", f"row {i}"),
            "description": description,
            "reference_caption": captions[i] if captions else None,
            "reference": item["reference"],
            "named": item["named"],
            "scores": item["scores"],
            "wrong_details": item["wrong_details"],
        })
    return {
        "model": args.model,
        "data": args.data,
        "split": selection["split"],
        "split_note": selection["split_note"],
        "split_rows": selection["split_rows"],
        "limit": args.limit,
        "num_items": len(rows),  # the items scored: the split's rows (a --limit sample of them), less the skipped ones
        "skipped_items": [{"where": where, "reason": reason} for where, reason in bad_rows.rows],
        "reference_captions": f"column {args.caption_column}" if args.caption_column else args.caption_template,
        "scores": result["scores"],
        "score_counts": result["counts"],
        "hit_rates": result["hit_rates"],
        "majority_baseline": baseline,
        "text_metrics": result.get("text"),
        "text_metrics_not_computed": no_text_reason,
        "items": items,
    }


def _number(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_table(report: dict) -> str:
    lines = [f"{report['model']} on {report['data']} [{report['split']}], {report['num_items']} items scored of "
             f"the split's {report['split_rows']} rows"
             + (f" (a sample of {report['limit']})" if report["limit"] and report["limit"] < report["split_rows"] else "")
             + (f" ({len(report['skipped_items'])} skipped: see report.json)" if report["skipped_items"] else "")]
    if report["split_note"]:
        lines.append(f"note: {report['split_note']}")
    lines += ["", f"{'score (0-10)':<22}{'model':>8}"]
    for name in SCORE_NAMES + ("Overall",):
        lines.append(f"{name:<22}{_number(report['scores'][name]):>8}")
    lines += ["", f"{'attribute hit rate':<22}{'model':>8}{'majority':>10}  majority value"]
    for attribute, rate in report["hit_rates"].items():
        base = report["majority_baseline"].get(attribute)
        lines.append(f"{attribute:<22}{_number(rate):>8}{_number(base and base['rate']):>10}  "
                     f"{base['value'] if base else ''}")
    if report["text_metrics"]:
        lines += ["", "text overlap with " + report["reference_captions"]]
        lines += [f"{name:<22}{_number(value):>8}" for name, value in report["text_metrics"].items()]
    elif report["text_metrics_not_computed"]:
        lines += ["", "text overlap not computed: " + report["text_metrics_not_computed"]
                  + " (pass --caption_column or --caption_template)"]
    judge = report.get("judge")
    if judge:
        lines += ["", f"LLM judge ({judge['model']}): {judge['num_parsed']} of {judge['num_items']} outputs parsed"]
        lines += [f"{name:<22}{_number(value):>8}" for name, value in judge["mean_scores"].items()]
    return "\n".join(lines)


def write_report(report: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    plot_scores(report["scores"], output_dir / "metrics.png")
    charts = ["metrics.png"]
    for attribute in CONFUSION_ATTRIBUTES:
        pairs = [(item["reference"][attribute][0], (item["named"].get(attribute) or ["(none)"])[0])
                 for item in report["items"] if attribute in item["reference"]]
        if pairs:
            plot_confusion(pairs, output_dir / f"confusion_{attribute}.png", title=f"{attribute}: true vs named")
            charts.append(f"confusion_{attribute}.png")
    lines = ["# MODA evaluation", "", "```", summary_table(report), "```", ""]
    lines += [f"![{chart}]({chart})" for chart in charts]
    lines += ["", "## First items", "", "| item | description | reference | wrong details |", "| --- | --- | --- | --- |"]
    for item in report["items"][:20]:
        cells = [item["where"], item["description"], item["reference_caption"] or json.dumps(item["reference"]),
                 ", ".join(item["wrong_details"])]
        lines.append("| " + " | ".join(str(cell).replace("|", "/") for cell in cells) + " |")
    if report["skipped_items"]:
        lines += ["", "## Skipped items", ""] + [f"- {s['where']}: {s['reason']}" for s in report["skipped_items"]]
    (output_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def pyplot():
    """matplotlib's pyplot drawing to files only (no window, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scores(scores: dict, path: Path) -> None:
    plt = pyplot()
    names = [name for name in SCORE_NAMES + ("Overall",) if scores.get(name) is not None]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar(names, [scores[name] for name in names], color=["#4c72b0"] * (len(names) - 1) + ["#dd8452"])
    ax.bar_label(bars, fmt="%.2f")
    ax.set_ylim(0, 10.5)
    ax.set_ylabel("score (0-10)")
    ax.set_title("MODA description scores")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(pairs, path: Path, title: str, max_labels: int = 15) -> None:
    """Counts of (true value, first value named) pairs; rare true values and unknown names fold into "(other)"."""
    plt = pyplot()
    labels = [value for value, _ in Counter(true for true, _ in pairs).most_common(max_labels)]
    extra = ["(other)"] if len({true for true, _ in pairs}) > len(labels) or any(
        named not in labels and named != "(none)" for _, named in pairs) else []
    rows, columns = labels + extra, labels + extra + ["(none)"]
    counts = [[0] * len(columns) for _ in rows]
    for true, named in pairs:
        true = true if true in labels else "(other)"
        named = named if named in columns else "(other)"
        counts[rows.index(true)][columns.index(named)] += 1
    size = 3 + 0.45 * len(columns)
    fig, ax = plt.subplots(figsize=(size, size * len(rows) / len(columns) + 1))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for r, row in enumerate(counts):
        for c, count in enumerate(row):
            if count:
                ax.text(c, r, str(count), ha="center", va="center", fontsize=7)
    ax.set_xlabel("named in the description (first)")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- during training ----------------------------------------------------------------------------------------------

class AttributeMetricsCallback(TrainerCallback):
    """
    At every `every`-th evaluation: describes `images` (one per row of `eval_rows`), scores the descriptions with
    moda.description_scores, adds the numbers (prefixed "eval_attr_") to the evaluation metrics and to the Trainer's
    log history, and keeps them keyed by training tokens seen. At the end of training it writes
    attribute_metrics.json and attribute_metrics.png (every metric against tokens seen) into the output folder.

    Tokens seen: `state.num_input_tokens_seen` when TrainingArguments(include_num_input_tokens_seen=...) counts them;
    otherwise an estimate, optimizer steps x examples per step x `tokens_per_example` (by default the mean token
    length of the rows' template captions with BOS and EOS), and each record says which it is.
    """

    def __init__(self, processor, eval_rows, images=None, vocabulary=None, every: int = 1, batch_size: int = 16,
                 max_new_tokens: int = 32, tokens_per_example: float = None, caption_template=MODA_CAPTION_TEMPLATE,
                 chart_name: str = "attribute_metrics"):
        self.processor = processor
        self.rows = list(eval_rows)
        if not self.rows:
            raise ValueError("AttributeMetricsCallback needs at least one evaluation row.")
        images = [row.get("image") for row in self.rows] if images is None else list(images)
        if len(images) != len(self.rows):
            raise ValueError(f"Got {len(self.rows)} evaluation rows but {len(images)} images.")
        self.images = [load_image(image, row.get("_where", f"evaluation row {i}"))
                       for i, (image, row) in enumerate(zip(images, self.rows))]
        self.vocabulary = vocabulary or AttributeVocabulary.from_rows(self.rows)
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}.")
        self.every, self.batch_size, self.max_new_tokens = every, batch_size, max_new_tokens
        self.tokens_per_example = tokens_per_example or self._mean_caption_tokens(caption_template)
        self.chart_name = chart_name
        self.evaluations = 0
        self.history = []  # {"tokens_seen", "tokens_seen_source", "step", "metrics"}

    def _mean_caption_tokens(self, caption_template) -> float:
        captions = [caption_for(row, None, caption_template) for row in self.rows]
        lengths = [len(ids) for ids in self.processor.tokenizer(captions)["input_ids"]]  # with special tokens
        return sum(lengths) / len(lengths)

    def tokens_seen(self, args, state):
        """(tokens, how they were counted)."""
        if args.include_num_input_tokens_seen not in (False, None, "no") and state.num_input_tokens_seen:
            return int(state.num_input_tokens_seen), "counted: state.num_input_tokens_seen"
        examples_per_step = args.per_device_train_batch_size * max(1, args.world_size) * args.gradient_accumulation_steps
        tokens = state.global_step * examples_per_step * self.tokens_per_example
        return int(round(tokens)), (f"estimated: {state.global_step} steps x {examples_per_step} examples x "
                                    f"{self.tokens_per_example:.1f} tokens per example")

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        self.evaluations += 1
        if model is None or self.evaluations % self.every:
            return
        descriptions = describe_images(model, self.processor, self.images, self.batch_size, self.max_new_tokens)
        result = score_descriptions(descriptions, self.rows, vocabulary=self.vocabulary)
        numbers = flat_metrics(result, prefix="eval_attr_")
        tokens, source = self.tokens_seen(args, state)
        self.history.append({"tokens_seen": tokens, "tokens_seen_source": source, "step": state.global_step,
                             "metrics": numbers, "examples": descriptions[:3]})
        if metrics is not None:
            metrics.update(numbers)  # evaluate() returns this dict
        # on_evaluate runs after the Trainer logged its metrics: add ours as a log entry of their own.
        state.log_history.append({**numbers, "tokens_seen": tokens, "step": state.global_step})

    def on_train_end(self, args, state, control, **kwargs):
        if not self.history or not state.is_world_process_zero:
            return
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / f"{self.chart_name}.json").write_text(json.dumps(self.history, indent=2), encoding="utf-8")
        plot_metrics_against_tokens(self.history, output_dir / f"{self.chart_name}.png")


def plot_metrics_against_tokens(history: list, path: Path) -> None:
    """One panel for the 0-10 scores and one for the 0-1 rates (hit rates, ROUGE-L), against tokens seen."""
    plt = pyplot()
    names = sorted({name for record in history for name in record["metrics"]})
    rates = [name for name in names if name.endswith("hit_rate") or name.endswith("rouge_l")]
    panels = [("score (0-10)", [name for name in names if name not in rates]), ("rate (0-1)", rates)]
    panels = [(label, group) for label, group in panels if group]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.5 * len(panels)), squeeze=False)
    tokens = [record["tokens_seen"] for record in history]
    for ax, (label, group) in zip(axes[:, 0], panels):
        for name in group:
            points = [(t, r["metrics"][name]) for t, r in zip(tokens, history) if name in r["metrics"]]
            ax.plot(*zip(*points), marker="o", label=name.removeprefix("eval_attr_"))
        ax.set_ylabel(label)
        ax.legend(fontsize=7, ncol=2)
    source = history[-1]["tokens_seen_source"].split(":")[0]
    axes[-1, 0].set_xlabel(f"training tokens seen ({source})")
    axes[0, 0].set_title("MODA attribute metrics during training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
