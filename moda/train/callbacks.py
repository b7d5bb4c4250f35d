"""Trainer callbacks: the write-up's description scores during training, against training tokens seen."""

import json
from pathlib import Path

from transformers import TrainerCallback

from moda.data.attributes import AttributeVocabulary
from moda.data.catalog import MODA_CAPTION_TEMPLATE, caption_for
from moda.evaluate.describe import describe_images
from moda.evaluate.description_scores import flat_metrics, score_descriptions
from moda.evaluate.report import pyplot
from moda.io.images import load_image


class AttributeMetricsCallback(TrainerCallback):
    """
    At every `every`-th evaluation: describes `images` (one per row of `eval_rows`), scores the descriptions with
    moda.evaluate.description_scores, adds the numbers (prefixed "eval_attr_") to the evaluation metrics and to the Trainer's
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
