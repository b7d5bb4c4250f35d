"""train_hf.py's arguments: the three dataclasses, parsing (command line or a JSON file), and the checks that stop a
run at once on arguments that would be ignored or would fail late (one validator per rule, each one clear error)."""

import json
import os
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch
from transformers import HfArgumentParser, TrainingArguments

from moda.data.catalog import MODA_CAPTION_TEMPLATE
from moda.model.loading import MODA_MODEL_TYPE, read_model_config


@dataclass
class ModelArguments:
    architecture: str = field(default="moda", metadata={"help": "'moda', or 'blip' for the BLIP captioning baseline."})
    blip_model: Optional[str] = field(default=None, metadata={"help": "BLIP checkpoint for --architecture blip."})
    model_size: Optional[str] = field(
        default=None, metadata={"help": "'tiny': build a small MODA from scratch (CPU work). Default: pretrained backbones."}
    )
    vision_model: str = field(default="patrickjohncyh/fashion-clip", metadata={"help": "CLIP checkpoint (Hub id or folder)."})
    text_model: str = field(default="facebook/opt-125m", metadata={"help": "OPT checkpoint (Hub id or folder)."})
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Continue from a MODA folder or checkpoint (e.g. the projector-only stage)."}
    )
    num_image_tokens: int = field(default=1, metadata={"help": "Prefix embeddings per image (new models only)."})
    tokenizer_vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary of a from-scratch tokenizer."})
    train_projector_only: bool = field(default=False, metadata={"help": "Stage 1: train the projector, decoder frozen."})
    use_lora: bool = field(default=False, metadata={"help": "Stage 2: tune the decoder's attention with LoRA."})
    tune_vision_tower: bool = field(default=False, metadata={
        "help": "With --model_size and --vision_model: train that tower through captioning too (default: frozen)."})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lr_step_size: Optional[int] = field(
        default=None, metadata={"help": "StepLR: optimizer steps between decays (default: a quarter of all steps)."}
    )
    lr_gamma: float = field(default=0.5, metadata={"help": "StepLR: factor applied at each decay."})


@dataclass
class DataArguments:
    dataset: Optional[str] = field(
        default=None,
        metadata={"help": "imagefolder dir, CSV/JSONL with an image column, or Hub dataset. Default: synthetic demo."},
    )
    image_column: str = "image"
    caption_column: Optional[str] = field(default=None, metadata={"help": "Column holding the description."})
    caption_template: str = field(default=MODA_CAPTION_TEMPLATE, metadata={"help": "Filled from metadata columns."})
    validation_fraction: float = 0.1
    qa_from_metadata: bool = field(default=False, metadata={"help": "Add question/answer examples from metadata."})
    max_train_items: Optional[int] = field(default=None, metadata={
        "help": "Train on N train rows drawn at random (seed: --seed; kept in catalog order), not the first N: a "
                "catalog file is often grouped (fashion-images' train split starts with Girls' items)."})
    max_eval_items: Optional[int] = field(default=None, metadata={
        "help": "Evaluate on N validation (and test) rows drawn at random, as --max_train_items does."})
    feature_cache_dir: str = field(default=".cache/moda-features", metadata={"help": "Where image features are cached."})
    augment_images: bool = field(
        default=True, metadata={"help": "Random flips and shifts of the images when the vision tower trains."}
    )
    attribute_eval_items: int = field(
        default=64, metadata={"help": "Validation items (drawn at random, seed: --seed) described and scored at each "
                                    "evaluation (0: off)."}
    )
    on_bad_row: str = field(default="skip", metadata={"help": "skip: report bad rows at the end; fail: stop at the first."})
    demo_items: int = field(default=6000, metadata={"help": "Size of the synthetic demo catalog."})
    demo_epochs: float = field(default=40, metadata={"help": "Epochs of the demo unless --num_train_epochs is given."})
    demo_dir: str = field(default=".cache/moda-synthetic", metadata={"help": "Where the synthetic demo catalog goes."})


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class MODATrainingArguments(TrainingArguments):
    # Defaults from the MODA write-up (AdamW, lr 1e-3) and for the tiny model on a 2-core CPU.
    output_dir: Optional[str] = field(default=None, metadata={"help": "Default: ./moda-demo for the demo, else required."})
    eval_steps: float = 200
    save_steps: float = 200
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    num_train_epochs: float = 40
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    eval_strategy: str = "steps"
    save_total_limit: int = 2
    # torchrun on a machine without CUDA: the Trainer runs DDP on the CPU (gloo) only with use_cpu; without it, it
    # warns that parallel_mode is not DISTRIBUTED and reports every loss summed over the processes (2x with two).
    use_cpu: Optional[bool] = field(default=None, metadata={
        "help": "Train on the CPU (default: true under torchrun without CUDA, else false)."})
    logging_steps: float = 20
    remove_unused_columns: bool = False
    report_to: str = "none"
    dataloader_num_workers: int = 0
    seed: int = 42

    def __post_init__(self):
        if self.use_cpu is None:
            self.use_cpu = launched_by_torchrun() and not torch.cuda.is_available()
        super().__post_init__()


def parse_arguments(argv=None):
    """The three argument dataclasses, and the names of the arguments given explicitly."""
    parser = HfArgumentParser((ModelArguments, DataArguments, MODATrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        try:
            values = json.loads(Path(argv[0]).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{argv[0]}: not valid JSON ({err}).") from err
        if not isinstance(values, dict):
            raise ValueError(f"{argv[0]}: an arguments file holds one JSON object of argument names and values, got "
                             f"a JSON {type(values).__name__}.")
        check_json_types(argv[0], values, parser.dataclass_types)
        return (*parser.parse_dict(values), set(values))
    # HfArgumentParser takes --output-dir as well as --output_dir: one name for both
    given = {arg[2:].split("=")[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    return (*parser.parse_args_into_dataclasses(args=argv), given)


def check_json_types(path, values: dict, dataclass_types) -> None:
    """
    The parser takes a JSON file's values as they are (no conversion as on the command line): "false" would be a
    true bool and "2" a string of epochs. A bool, int or float argument must have a JSON value of that type.
    """
    kinds = {bool: (bool,), int: (int,), float: (int, float)}
    for dataclass_type in dataclass_types:
        hints = typing.get_type_hints(dataclass_type)
        for name, kind in hints.items():
            if typing.get_origin(kind) in (typing.Union, types.UnionType):  # Optional[int] -> int
                options = [option for option in typing.get_args(kind) if option is not type(None)]
                kind = options[0] if len(options) == 1 else kind
            value = values.get(name)
            if kind not in kinds or value is None:
                continue
            if isinstance(value, bool) != (kind is bool) or not isinstance(value, kinds[kind]):
                raise ValueError(f"{path}: {name!r} must be a JSON {'true/false' if kind is bool else 'number'}"
                                 f"{' (whole)' if kind is int else ''}, got {json.dumps(value)}.")


TRAINING_ARGUMENT_DEFAULTS = {argument.name: argument.default for argument in fields(TrainingArguments)}


def check_arguments(model_args, data_args, training_args, given) -> None:
    """Arguments that would be ignored or would fail late (or quietly do something else) stop the run at once."""
    require_counts_of_at_least_one(model_args, data_args)
    require_lr_gamma_in_range(model_args.lr_gamma)
    require_attribute_eval_items(data_args.attribute_eval_items)
    refuse_other_optimizers(training_args, given)
    require_model_size(model_args.model_size, model_args.model_name_or_path)
    require_architecture(model_args.architecture, model_args.blip_model)
    require_one_stage(model_args)
    require_moda_checkpoint(model_args.architecture, model_args.model_name_or_path)


def require_counts_of_at_least_one(model_args, data_args) -> None:
    for name in ("lr_step_size", "max_train_items", "max_eval_items"):
        value = getattr(model_args, name, getattr(data_args, name, None))
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}.")


def require_lr_gamma_in_range(lr_gamma: float) -> None:
    if not 0 < lr_gamma <= 1:
        raise ValueError(f"--lr_gamma (StepLR's decay factor) must be in (0, 1], got {lr_gamma}.")


def require_attribute_eval_items(attribute_eval_items: int) -> None:
    if attribute_eval_items < 0:
        raise ValueError(f"--attribute_eval_items must be 0 (off) or more, got {attribute_eval_items}.")


def refuse_other_optimizers(training_args, given) -> None:
    """train_hf.py always trains with AdamW and StepLR: another --optim or --lr_scheduler_type would be ignored."""
    for name in ("optim", "lr_scheduler_type"):
        # A saved training_args.json names both at TrainingArguments' defaults: only another value is refused.
        value = getattr(training_args, name)
        if name in given and getattr(value, "value", value) != TRAINING_ARGUMENT_DEFAULTS[name]:
            raise ValueError(f"--{name} is not used: train_hf.py trains with AdamW and StepLR (--learning_rate, "
                             "--weight_decay, --adam_beta1/2, --adam_epsilon, --lr_step_size, --lr_gamma, --warmup_steps).")


def require_model_size(model_size, model_name_or_path) -> None:
    from moda.model.build import SIZES

    if model_size and model_size not in SIZES:
        raise ValueError(f"--model_size must be one of {', '.join(map(repr, SIZES))}, got {model_size!r}.")
    if model_size and model_name_or_path:
        raise ValueError("--model_size builds a new model and --model_name_or_path continues from a trained one: give "
                         "one of them.")


def require_architecture(architecture: str, blip_model) -> None:
    if architecture not in ("moda", "blip"):
        raise ValueError(f"--architecture must be 'moda' or 'blip', got {architecture!r}.")
    if architecture == "blip" and not blip_model:
        raise ValueError("--architecture blip needs --blip_model (a BlipForConditionalGeneration checkpoint).")


def require_one_stage(model_args) -> None:
    """--train_projector_only and --use_lora: MODA's two stages, one a run."""
    stages = [f"--{name}" for name in ("train_projector_only", "use_lora") if getattr(model_args, name)]
    if model_args.architecture == "blip" and stages:
        raise ValueError(f"{' and '.join(stages)}: for MODA only; --architecture blip fine-tunes the whole BLIP model.")
    if len(stages) == 2:
        raise ValueError("--train_projector_only and --use_lora are two stages: run the projector-only stage first, then "
                         "--use_lora with --model_name_or_path set to its output.")


def require_moda_checkpoint(architecture: str, model_name_or_path) -> None:
    """Read as JSON, before the catalog: the installed MODA code continues a MODA model; nothing else is loaded."""
    if architecture != "moda" or not model_name_or_path:
        return
    model_type = read_model_config(model_name_or_path, label="--model_name_or_path")["model_type"]
    if model_type != MODA_MODEL_TYPE:
        raise ValueError(f"--model_name_or_path {model_name_or_path!r} is a {model_type!r} model; "
                         "train_hf.py continues MODA models (with the installed MODA code).")
