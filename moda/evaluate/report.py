"""moda eval's report: report.json (every number and every item), report.md, the summary table it prints, and its
charts (metrics.png, confusion_<attribute>.png); `pyplot` draws to files only, for every chart of the package."""

import json
from collections import Counter
from pathlib import Path

from moda.evaluate.description_scores import SCORE_NAMES

CONFUSION_ATTRIBUTES = ("colour", "product_type")


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
        "model": args.model_name_or_path,
        "data": args.dataset,
        "split": selection["split"],
        "split_note": selection["split_note"],
        "split_rows": selection["split_rows"],
        "max_samples": args.max_samples,
        "seed": args.seed,
        "num_items": len(rows),  # the items scored: the split's rows (a --max_samples sample), less the skipped ones
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
             + (f" (a sample of {report['max_samples']}, seed {report['seed']})"
                if report["max_samples"] and report["max_samples"] < report["split_rows"] else "")
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
