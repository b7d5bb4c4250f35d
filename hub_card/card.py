"""The model card (README.md) and Inference Endpoints handler (handler.py) written into every MODA model folder.

    prepare_model_folder("moda-demo")                     # card + handler, from what the folder holds
    prepare_model_folder("out", training_info={...}, eval_report={...}, repo_id="user/name")

What the card reads, first found wins:

- the model: `config.json` (shapes, parameter counts, frozen vision tower) and the weights' parameter count;
- the backbones: `training_info["vision_model"/"text_model"]`, else the `_name_or_path` that `from_backbones`
  leaves in the sub-configs; only Hub ids (`namespace/name`) become `base_model` in the YAML;
- training: the `training_info` dict, over `moda_training.json` in the folder, else over train_hf.py's
  `training_summary.json` + `training_args.json`. `TRAINING_INFO_KEYS` lists the keys read;
- evaluation: the `eval_report` dict (or JSON path), else `eval/report.json` in the folder, else the held-out
  scores in `training_summary.json`. A report is what `moda eval` writes (its rubric scores, attribute hit rates,
  text-overlap and judge scores become the metrics; its model, data, split and item counts the text), or
  `{"metrics": {name: value}, "dataset": ..., "split": ..., "num_items": ...}`, or just `{name: value}`; nested
  dicts of numbers become `name/sub` rows.
"""

import io
import json
import math
import random
import re
from pathlib import Path

import image_io_moda
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from moda import __version__
from moda.data.synthetic import draw_item
from moda.io.paths import confined_path, write_atomically

TEMPLATE_PATH = Path(__file__).with_name("template.md")
HANDLER_SOURCE = Path(__file__).with_name("handler.py")
# The handler reads every image through image_io_moda.py from its own folder (save_pretrained also copies it there,
# with processing_moda.py, but a folder saved by an older MODA may lack it).
IMAGE_IO_SOURCE = Path(image_io_moda.__file__)
CARD_NAME = "README.md"
HANDLER_NAME = "handler.py"
IMAGE_IO_NAME = "image_io_moda.py"
TRAINING_INFO_NAME = "moda_training.json"
EVAL_REPORT_PATH = Path("eval") / "report.json"
# The score groups of a `moda eval` report (moda/evaluate/report.py build_report); its other fields describe the run.
MODA_EVAL_SCORE_KEYS = ("scores", "hit_rates")
# The names a card's snippets use until the repository is known, and until a push knows its commit (hub_card.push
# names it in a second commit).
PLACEHOLDER_REPO_ID = "your-username/moda"
PLACEHOLDER_REVISION = "<commit hash>"

TAGS = ["fashion", "e-commerce", "vision-language", "image-captioning", "moda", "custom_code"]
HUB_URL = "https://huggingface.co"
# The Hub widget's example photos, written into the folder (examples/) with the card: products drawn as the offline
# demo catalog draws them (moda/data/synthetic.py), at the vision tower's input size.
EXAMPLES_DIR = "examples"
EXAMPLE_SIZE = 224
EXAMPLE_PRODUCTS = {
    "shirt.jpg": {"ProductType": "Shirts", "Colour": "Blue", "Gender": "Men", "Usage": "Formal", "Pattern": "Solid"},
    "sports-shoes.jpg": {"ProductType": "Sports Shoes", "Colour": "Black", "Gender": "Men", "Usage": "Sports",
                         "Pattern": "Solid"},
    "dress.jpg": {"ProductType": "Dresses", "Colour": "Red", "Gender": "Women", "Usage": "Casual", "Pattern": "Dotted"},
}
# OPT-125m's weights come under Meta's OPT-175B licence agreement (non-commercial research use), and so do weights
# trained from them: the licence of a MODA whose decoder started from OPT's. The Hub asks `other` for a name and link.
OPT_LICENSE = {"license": "other", "license_name": "opt-175b-license",
               "license_link": "https://github.com/facebookresearch/metaseq/blob/main/projects/OPT/MODEL_LICENSE.md"}
CODE_LICENSE = "apache-2.0"  # MODA's code (LICENSE), and weights trained from scratch

TRAINING_INFO_KEYS = {
    "vision_model": "CLIP checkpoint the vision tower started from (Hub id or folder); None: from scratch",
    "text_model": "OPT checkpoint the decoder started from (Hub id or folder); None: from scratch",
    "model_size": "size name of a from-scratch model ('tiny'), if any",
    "dataset": "training catalog (Hub id or folder)",
    "num_train_items": "training examples",
    "num_eval_items": "held-out examples evaluated",
    "hyperparameters": "dict of hyper-parameter name -> value",
    "train_runtime_s": "wall-clock training time in seconds",
    "hardware": "what it trained on, e.g. '1x NVIDIA H100' (see describe_hardware())",
    "license": "licence of the weights, as the Hub names it (default: 'other', the OPT-175B licence, for a decoder "
               "started from OPT's weights; 'apache-2.0' for one trained from scratch)",
    "license_name": "for a license 'other': its short name (the Hub asks for it)",
    "license_link": "for a license 'other': a link to its text (the Hub asks for it)",
    "widget_images": "http(s) URLs of example photos for the Hub widget (default: examples/ in the folder)",
}
# train_hf.py's TrainingArguments / ModelArguments worth a row in the card (lr_step_size and lr_gamma: StepLR's,
# lr_scheduler_type step_lr).
HYPERPARAMETER_NAMES = (
    "optim", "lr_scheduler_type", "learning_rate", "lr_step_size", "lr_gamma", "num_train_epochs", "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "seed", "bf16", "fp16",
    "train_projector_only",
    "use_lora", "lora_r", "lora_alpha", "lora_dropout", "num_image_tokens",
)
# LoRA's settings have defaults in every run: they are rows only where use_lora is true.
LORA_SETTINGS = ("lora_r", "lora_alpha", "lora_dropout")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def prepare_model_folder(model_dir, training_info=None, eval_report=None, repo_id=None) -> Path:
    """Writes README.md (the card) and handler.py into a MODA folder. Same inputs, same files: safe to re-run."""
    card_path = write_model_card(model_dir, training_info, eval_report, repo_id=repo_id)
    write_handler(model_dir)
    return card_path


def write_handler(model_dir) -> Path:
    """Copies the Inference Endpoints handler (hub_card/handler.py) into the folder (replaced whole, or not at all),
    with the image_io_moda.py it imports."""
    target = Path(model_dir) / HANDLER_NAME
    source = HANDLER_SOURCE.read_bytes()
    write_atomically(target, lambda handle: handle.write(source))
    write_image_io(model_dir)
    return target


def write_image_io(model_dir) -> Path:
    """Copies image_io_moda.py (MODA's URL and image-decoding policies, which the handler imports) into the folder
    (replaced whole, or not at all)."""
    target = Path(model_dir) / IMAGE_IO_NAME
    source = IMAGE_IO_SOURCE.read_bytes()
    write_atomically(target, lambda handle: handle.write(source))
    return target


def write_model_card(model_dir, training_info=None, eval_report=None, repo_id=None) -> Path:
    """Fills hub_card/template.md from the folder (see the module docstring) and writes it as README.md (replaced
    whole, or not at all: an earlier card is never left half-written), with the widget's example photos."""
    card = build_model_card(model_dir, training_info, eval_report, repo_id=repo_id)
    write_example_images(model_dir)
    path = Path(model_dir) / CARD_NAME
    write_atomically(path, lambda handle: handle.write(str(card).encode("utf-8")))
    return path


def write_example_images(model_dir) -> list:
    """Draws the widget's example photos into examples/ (each replaced whole; the same bytes every time). An examples
    folder that leads out of the model folder (a symbolic link) is refused: nothing is written through it."""
    paths = [confined_path(model_dir, f"{EXAMPLES_DIR}/{name}", "example photo") for name in EXAMPLE_PRODUCTS]
    (Path(model_dir) / EXAMPLES_DIR).mkdir(exist_ok=True)
    for path, product in zip(paths, EXAMPLE_PRODUCTS.values()):
        buffer = io.BytesIO()
        draw_item(product, EXAMPLE_SIZE, random.Random(path.name)).save(buffer, format="JPEG", quality=90)
        write_atomically(path, lambda handle: handle.write(buffer.getvalue()))
    return paths


def example_widget(repo_id: str) -> list:
    """The widget entries of the example photos, by their address in the repository."""
    return [{"src": f"{HUB_URL}/{repo_id}/resolve/main/{EXAMPLES_DIR}/{name}",
             "example_title": "{Colour} {ProductType} for {Gender}".format(**product)}
            for name, product in EXAMPLE_PRODUCTS.items()]


def license_fields(info: dict, text_model) -> dict:
    """The weights' licence: the one training_info gives, else OPT's terms for a decoder started from OPT's weights,
    else the code's."""
    if "license" not in info:
        return dict(OPT_LICENSE) if text_model else {"license": CODE_LICENSE}
    fields = {key: info[key] for key in ("license", "license_name", "license_link") if info.get(key)}
    if fields.get("license") == "other" and not {"license_name", "license_link"} <= set(fields):
        raise ValueError("training_info's license 'other' needs license_name and license_link too: the Hub asks "
                         "for them.")
    return fields


def license_text(fields: dict, vision_model, text_model) -> str:
    """What the card's Licence section says of the weights."""
    if fields == OPT_LICENSE:
        text = (f"The decoder started from {_source_text(text_model)}, whose weights Meta releases under the "
                f"[OPT-175B licence agreement]({OPT_LICENSE['license_link']}): non-commercial research use only. "
                "These weights are trained from them, so the same terms apply to them: read the agreement before "
                "you use or share this model.")
    elif fields == {"license": CODE_LICENSE}:
        text = "The weights were trained from scratch, from no pretrained weights, and come under Apache-2.0 too."
    else:
        link = f" ({fields['license_link']})" if fields.get("license_link") else ""
        text = f"The weights come under the licence `{fields.get('license_name') or fields['license']}`{link}."
    if vision_model:
        text += f" The vision tower started from {_source_text(vision_model)}: its licence applies to that part."
    return text


def build_model_card(model_dir, training_info=None, eval_report=None, repo_id=None) -> ModelCard:
    model_dir = Path(model_dir)
    config = read_moda_config(model_dir)
    info = {**read_training_info(model_dir), **(training_info or {})}  # given facts win over the folder's files
    unknown = sorted(set(info) - set(TRAINING_INFO_KEYS))
    if unknown:
        raise ValueError(f"training_info has unknown keys {unknown}; the card reads {sorted(TRAINING_INFO_KEYS)}.")
    report, report_source = read_eval_report(model_dir, eval_report)
    vision_model = info.get("vision_model", _name_or_path(config["vision_config"]))
    text_model = info.get("text_model", _name_or_path(config["text_config"]))
    if info.get("model_size"):
        vision_model = text_model = None  # from scratch, whatever the argument defaults say
    metrics = report_metrics(report, report_source) if report else {}
    # None: a score moda eval could not compute (shown as n/a in the table; the model-index takes numbers only).
    numbers = {name: value for name, value in metrics.items() if value is not None}
    model_name = repo_id.split("/")[-1] if repo_id else model_dir.resolve().name
    dataset = info.get("dataset") or (report or {}).get("dataset")
    eval_dataset = (report or {}).get("dataset") or (report or {}).get("data") or dataset  # moda eval: "data"
    weights_license = license_fields(info, text_model)
    widget = ([{"src": url, "example_title": f"example {i + 1}"} for i, url in enumerate(info["widget_images"])]
              if info.get("widget_images") else example_widget(repo_id or PLACEHOLDER_REPO_ID))

    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="image-to-text",
        tags=list(TAGS),
        base_model=[m for m in (vision_model, text_model) if _is_hub_id(m)] or None,
        datasets=[dataset] if _is_hub_id(dataset) else None,
        language="en",
        **weights_license,
        metrics=sorted({metric_type(name) for name in numbers}) or None,
        eval_results=eval_results(numbers, report or {}, eval_dataset) or None,
        widget=widget,
    )
    return ModelCard.from_template(
        card_data,
        template_path=TEMPLATE_PATH,
        model_name=model_name,
        repo_id=repo_id or PLACEHOLDER_REPO_ID,
        revision=PLACEHOLDER_REVISION,
        **architecture_fields(config, model_dir, vision_model, text_model),
        training_text=training_text(info, vision_model, text_model, dataset),
        hyperparameters=card_hyperparameters(info.get("hyperparameters") or {}),
        dataset_text=_dataset_text(dataset),
        eval_text=eval_text(report or {}, eval_dataset, metrics),
        eval_rows=[(name, _format_number(value)) for name, value in metrics.items()],
        license_text=license_text(weights_license, vision_model, text_model),
        moda_version=__version__,
    )


def card_hyperparameters(hyperparameters: dict) -> dict:
    """The hyper-parameter rows: all of them for a LoRA run, else all but LoRA's settings (which it did not use)."""
    if hyperparameters.get("use_lora"):
        return dict(hyperparameters)
    return {name: value for name, value in hyperparameters.items() if name not in LORA_SETTINGS}


def read_moda_config(model_dir: Path) -> dict:
    """config.json of a MODA folder, with a clear error for anything else."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder: it has no config.json.")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if config.get("model_type") != "moda":
        raise ValueError(f"{path} has model_type {config.get('model_type')!r}; a MODA folder has 'moda'.")
    return config


def read_training_info(model_dir: Path) -> dict:
    """moda_training.json, else what train_hf.py's training_summary.json and training_args.json say."""
    explicit = model_dir / TRAINING_INFO_NAME
    if explicit.is_file():
        return _read_json(explicit)
    summary_path, args_path = model_dir / "training_summary.json", model_dir / "training_args.json"
    summary = _read_json(summary_path) if summary_path.is_file() else {}
    training_args = _read_json(args_path) if args_path.is_file() else {}
    model_args = summary.get("model_args") or {}
    info = {}
    if model_args:
        info["model_size"] = model_args.get("model_size")
        info["vision_model"] = model_args.get("vision_model")
        info["text_model"] = model_args.get("text_model")
    if summary:
        info["dataset"] = summary.get("dataset") or "the synthetic demo catalog"
        info["train_runtime_s"] = summary.get("train_runtime_s")
        info["num_eval_items"] = summary.get("num_eval_items")
    settings = {**model_args, **training_args}
    hyperparameters = {name: settings[name] for name in HYPERPARAMETER_NAMES if settings.get(name) is not None}
    if hyperparameters:
        info["hyperparameters"] = hyperparameters
    return {key: value for key, value in info.items() if value is not None}


def read_eval_report(model_dir: Path, eval_report=None) -> tuple:
    """
    (report, where it came from): the report given (dict or JSON path), else eval/report.json, else train_hf.py's
    held-out scores, else (None, None).
    """
    if isinstance(eval_report, dict):
        return eval_report, "the eval_report dict"
    if eval_report is not None:
        return _read_json(Path(eval_report)), str(eval_report)
    if (model_dir / EVAL_REPORT_PATH).is_file():
        return _read_json(model_dir / EVAL_REPORT_PATH), str(model_dir / EVAL_REPORT_PATH)
    summary_path = model_dir / "training_summary.json"
    if summary_path.is_file():
        summary = _read_json(summary_path)
        if "exact_match" in summary:
            return {
                "metrics": {"exact_match": summary["exact_match"],
                            "attribute_accuracy": summary.get("attribute_accuracy") or {}},
                "dataset": summary.get("dataset"),
                "split": summary.get("eval_split"),
                "num_items": summary.get("num_eval_items"),
            }, str(summary_path)
    return None, None


def is_moda_eval_report(report: dict) -> bool:
    """Whether `report` is the report.json that `moda eval` writes (moda/evaluate/report.py build_report)."""
    return all(isinstance(report.get(key), dict) for key in MODA_EVAL_SCORE_KEYS)


def report_metrics(report: dict, source: str = "the evaluation report") -> dict:
    """
    {name: number} from `moda eval`'s report (None where it could not compute a score), from {"metrics": {...}} or
    from a flat dict; nested dicts become "name/sub". A non-number, or a report without one number, is an error.
    """
    try:
        if is_moda_eval_report(report):
            metrics = moda_eval_metrics(report)
        else:
            given = report["metrics"] if isinstance(report.get("metrics"), dict) else report
            described = {"dataset", "split", "num_items"} if given is report else set()
            metrics = _flatten_metrics({name: value for name, value in given.items() if name not in described})
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    if not any(value is not None for value in metrics.values()):
        raise ValueError(f"{source} has no evaluation metrics (keys: {sorted(report)}): give the report.json that "
                         "`moda eval` writes, or {'metrics': {name: number}}.")
    return metrics


def moda_eval_metrics(report: dict) -> dict:
    """The numbers of a `moda eval` report, named as its summary names them; None where moda eval computed none."""
    metrics = dict(_score_group(report, "scores"))  # the rubric, 0-10
    metrics.update({f"{name} hit rate": rate for name, rate in _score_group(report, "hit_rates").items()})
    metrics.update(_score_group(report, "text_metrics"))  # BLEU, ROUGE-L, CIDEr
    judge = report.get("judge") or {}
    metrics.update({f"LLM judge {name}": value for name, value in _score_group(judge, "mean_scores").items()})
    for name, value in metrics.items():
        if value is not None:
            _check_metric(name, value)
    return metrics


def _score_group(report: dict, key: str) -> dict:
    group = report.get(key)
    if group is None:  # moda eval writes text_metrics: null when no reference captions could be made
        return {}
    if not isinstance(group, dict):
        raise ValueError(f"{key!r} must be a dict of scores; got {group!r}.")
    return group


def _flatten_metrics(metrics: dict, prefix: str = "") -> dict:
    flat = {}
    for name, value in metrics.items():
        full_name = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(_flatten_metrics(value, f"{full_name}/"))
        else:
            flat[full_name] = _check_metric(full_name, value)
    return flat


def _check_metric(name: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"Evaluation metric {name!r} must be a finite number; got {value!r}.")
    return value


def metric_type(name: str) -> str:
    """'attribute_accuracy/Colour' -> 'attribute_accuracy_colour' (model-index metric types are identifiers)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def eval_results(metrics: dict, report: dict, dataset) -> list:
    # Plain text here (YAML), not the Markdown link the body uses.
    dataset_name = (dataset if _is_hub_id(dataset) else Path(str(dataset)).name) if dataset else "fashion catalog"
    return [
        EvalResult(
            task_type="image-to-text",
            task_name="Product description",
            dataset_type=dataset if _is_hub_id(dataset) else "fashion-catalog",
            dataset_name=dataset_name,
            dataset_split=report.get("split"),
            metric_type=metric_type(name),
            metric_name=name,
            metric_value=value,
        )
        for name, value in metrics.items()
    ]


def architecture_fields(config: dict, model_dir: Path, vision_model, text_model) -> dict:
    vision, text = config["vision_config"], config["text_config"]
    counts = parameter_counts(model_dir)
    text_hidden = text.get("hidden_size", 768)
    prefix_width = text.get("word_embed_proj_dim") or text_hidden  # the projector writes token embeddings
    return {
        "vision_summary": f"ViT, patch {vision.get('patch_size')}, {vision.get('image_size')} px, "
                          f"{vision.get('num_hidden_layers')} layers, width {vision.get('hidden_size')}",
        "text_summary": f"{text.get('num_hidden_layers')} layers, width {text_hidden}, "
                        f"vocabulary {text.get('vocab_size')}",
        "image_embed_dim": vision.get("projection_dim"),
        "projector_width": config.get("projector_expansion", 4) * prefix_width,
        "projector_act": config.get("projector_hidden_act", "gelu").upper(),
        "prefix_width": prefix_width,
        "num_image_tokens": config.get("num_image_tokens", 1),
        "vision_frozen": config.get("freeze_vision_tower", True),
        "vision_source": _source_text(vision_model),
        "text_source": _source_text(text_model),
        **{f"{part}_params": _format_count(count) for part, count in counts.items()},
    }


def parameter_counts(model_dir: Path) -> dict:
    """Parameters per part, read from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    counts = {"vision": 0, "projector": 0, "text": 0, "total": 0}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(path, framework="pt") as weights:
            for name in weights.keys():
                size = math.prod(weights.get_slice(name).get_shape())
                part = "vision" if name.startswith("vision_tower") else "projector" if "projector" in name else "text"
                counts[part] += size
                counts["total"] += size
    return counts


def training_text(info: dict, vision_model, text_model, dataset) -> str:
    if not vision_model and not text_model:
        size = f" (the {info['model_size']!r} size)" if info.get("model_size") else ""
        start = f"Both towers were trained from scratch{size}."
    else:
        start = (f"The vision tower started from {_source_text(vision_model)} and the decoder from "
                 f"{_source_text(text_model)}; the projector is new.")
    facts = [start, f"Data: {_dataset_text(dataset)}."]
    if info.get("num_train_items"):
        facts.append(f"Training examples: {info['num_train_items']:,}.")
    if info.get("num_eval_items"):
        facts.append(f"Held-out items evaluated: {info['num_eval_items']:,}.")
    runtime = info.get("train_runtime_s")
    facts.append(f"Training time: {_format_duration(runtime)}." if runtime else "Training time: not recorded.")
    facts.append(f"Hardware: {info.get('hardware') or 'not recorded'}.")
    facts.append("Trained with `train_hf.py` (Hugging Face Trainer).")
    return " ".join(facts)


def eval_text(report: dict, dataset, metrics: dict) -> str:
    where = f"the {report['split']} split of " if report.get("split") else ""
    count = f" ({report['num_items']:,} items)" if isinstance(report.get("num_items"), int) else ""
    if count and isinstance(report.get("split_rows"), int) and report["num_items"] < report["split_rows"]:
        count = f" ({report['num_items']:,} of its {report['split_rows']:,} items)"  # --limit, or skipped items
    text = f"Scores on {where}{_dataset_text(dataset)}{count}, greedy decoding."
    return f"{text} {moda_eval_text(report, metrics)}" if is_moda_eval_report(report) else text


def moda_eval_text(report: dict, metrics: dict) -> str:
    """What a `moda eval` report says beyond its numbers: which model, which rows, what the scales mean."""
    model = report.get("model")
    facts = [f"Computed by `moda eval` of `{model if _is_hub_id(model) else Path(str(model)).name}`."] if model else []
    if report.get("split_note"):
        facts.append(f"Note: {report['split_note']}.")
    skipped = report.get("skipped_items") or []
    if skipped:
        facts.append(f"{len(skipped)} item(s) were skipped (unreadable images; listed in the report).")
    facts.append("Color Accuracy to Overall are the MODA rubric's 0-10 scores, computed from each item's metadata; "
                 "hit rates (0-1) are the share of items whose attribute the description names rightly.")
    if report.get("text_metrics"):
        facts.append(f"BLEU (0-100), ROUGE-L (0-1) and CIDEr compare with the reference captions "
                     f"`{report.get('reference_captions')}`.")
    baseline = report.get("majority_baseline") or {}
    if baseline:
        rates = ", ".join(f"{name} {entry['rate']:.2f} ('{entry['value']}')" for name, entry in baseline.items())
        facts.append(f"Always naming the most common value would give these hit rates: {rates}.")
    if any(value is None for value in metrics.values()):
        facts.append("n/a: a score moda eval could not compute on these items (e.g. no such metadata column).")
    return " ".join(facts)


def describe_hardware() -> str:
    """What this process runs on, e.g. '1x NVIDIA H100 80GB HBM3' or 'CPU (2 threads)': for training_info."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"CPU ({torch.get_num_threads()} threads)"


def _name_or_path(sub_config: dict):
    return sub_config.get("_name_or_path") or None


def _is_hub_id(name) -> bool:
    return isinstance(name, str) and HUB_ID.fullmatch(name) is not None and not Path(name).exists()


def _source_text(name) -> str:
    if not name:
        return "random initialisation (trained from scratch)"
    return f"[{name}](https://huggingface.co/{name})" if _is_hub_id(name) else f"`{Path(name).name}` (a local folder)"


def _dataset_text(dataset) -> str:
    if not dataset:
        return "a fashion product catalog"
    if _is_hub_id(dataset):
        return f"[{dataset}](https://huggingface.co/datasets/{dataset})"
    return f"the fashion catalog `{Path(str(dataset)).name}`"


def _format_count(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count:,}"


def _format_number(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"JSON file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
