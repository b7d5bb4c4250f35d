"""train_hf.py's arguments: the three dataclasses, parsing (command line or a JSON file), and the checks that stop a
run at once on arguments that would be ignored or would fail late (one validator per rule, each one clear error)."""

import json
import os
import sys
import textwrap
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch
from transformers import HfArgumentParser, SchedulerType, TrainingArguments

from moda.data.catalog import MODA_CAPTION_TEMPLATE
from moda.model.loading import MODA_MODEL_TYPE, read_model_config
from moda.train.optim import STEP_LR


def aliases(*names: str) -> list:
    """Other names of an option, each with underscores and with dashes (HfArgumentParser adds the dashed spelling
    of an option's own name only)."""
    return [spelling for name in names for spelling in dict.fromkeys((f"--{name}", f"--{name.replace('_', '-')}"))]


@dataclass
class ModelArguments:
    architecture: str = field(default="moda", metadata={"help": "'moda', or 'blip' for the BLIP captioning baseline."})
    blip_model: Optional[str] = field(default=None, metadata={"help": "BLIP checkpoint for --architecture blip."})
    model_size: Optional[str] = field(
        default=None, metadata={"help": "'tiny': build a small MODA from scratch (CPU work). Default: pretrained backbones."}
    )
    vision_model: str = field(default="patrickjohncyh/fashion-clip", metadata={"help": "CLIP checkpoint (Hub id or folder)."})
    text_model: str = field(default="facebook/opt-125m", metadata={"help": "OPT checkpoint (Hub id or folder)."})
    model_name_or_path: Optional[str] = field(default=None, metadata={
        "aliases": aliases("model"), "help": "Continue from a MODA folder or checkpoint (e.g. the projector-only stage)."})
    model_revision: Optional[str] = field(default=None, metadata={
        "aliases": aliases("revision"),
        "help": "Hub revision (branch, tag or commit hash) of --model_name_or_path or --blip_model; with neither, of "
                "both --vision_model and --text_model. Default: the main branch."})
    cache_dir: Optional[str] = field(default=None, metadata={
        "help": "Where models downloaded from the Hub are stored. Default: the Hugging Face cache."})
    num_image_tokens: int = field(default=1, metadata={"help": "Prefix embeddings per image (new models only)."})
    tokenizer_vocab_size: int = field(default=1024, metadata={"help": "BPE vocabulary of a from-scratch tokenizer."})
    train_projector_only: bool = field(default=False, metadata={"help": "Stage 1: train the projector, decoder frozen."})
    use_lora: bool = field(default=False, metadata={"help": "Stage 2: tune the decoder's attention with LoRA."})
    tune_vision_tower: bool = field(default=False, metadata={
        "help": "With --model_size and --vision_model: train that tower through captioning too (default: frozen)."})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05


@dataclass
class DataArguments:
    dataset: Optional[str] = field(default=None, metadata={
        "aliases": aliases("dataset_name"),
        "help": "imagefolder dir, CSV/JSONL with an image column, or Hub dataset. Default (with no --train_file "
                "either): the synthetic demo."})
    train_file: Optional[str] = field(default=None, metadata={
        "help": "Instead of --dataset: a local CSV/JSONL/JSON file of training rows with an image column."})
    validation_file: Optional[str] = field(default=None, metadata={
        "help": "With --train_file: a file of validation rows (default: a part of --train_file, "
                "--validation_fraction)."})
    image_column: str = "image"
    caption_column: Optional[str] = field(default=None, metadata={"help": "Column holding the description."})
    caption_template: str = field(default=MODA_CAPTION_TEMPLATE, metadata={"help": "Filled from metadata columns."})
    validation_fraction: float = 0.1
    qa_from_metadata: bool = field(default=False, metadata={"help": "Add question/answer examples from metadata."})
    max_train_samples: Optional[int] = field(default=None, metadata={
        "aliases": aliases("max_train_items"),
        "help": "Train on N train rows drawn at random (seed: --seed; kept in catalog order), not the first N: a "
                "catalog file is often grouped (fashion-images' train split starts with Girls' items)."})
    max_eval_samples: Optional[int] = field(default=None, metadata={
        "aliases": aliases("max_eval_items"),
        "help": "Evaluate on N validation (and test) rows drawn at random, as --max_train_samples does."})
    streaming: bool = field(default=False, metadata={
        "help": "Refused: train_hf.py reads a catalog's rows (metadata; images are read lazily) whole."})
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

    @property
    def catalog_name(self):
        """What the rows come from, as errors and the summary name it: --dataset, or --train_file."""
        return self.dataset or self.train_file


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def with_default(name: str, default):
    """A TrainingArguments field with MODA's default, keeping transformers' help for it."""
    inherited = next(argument for argument in fields(TrainingArguments) if argument.name == name)
    return field(default=default, metadata=dict(inherited.metadata))


@dataclass
class MODATrainingArguments(TrainingArguments):
    # Defaults from the MODA write-up (AdamW, lr 1e-3) and for the tiny model on a 2-core CPU.
    output_dir: Optional[str] = field(default=None, metadata={"help": "Default: ./moda-demo for the demo, else required."})
    eval_steps: float = with_default("eval_steps", 200)
    save_steps: float = with_default("save_steps", 200)
    learning_rate: float = with_default("learning_rate", 1e-3)
    weight_decay: float = field(default=0.01, metadata={
        "help": "AdamW's weight decay, on all but biases and LayerNorm weights (Trainer.get_decay_parameter_names)."})
    lr_scheduler_type: str = field(default=STEP_LR, metadata={
        "help": f"{STEP_LR}: MODA's StepLR (--lr_step_size, --lr_gamma; optional --warmup_steps), or one of "
                f"transformers' schedules ({', '.join(kind.value for kind in SchedulerType)}; "
                "--lr_scheduler_kwargs, --warmup_steps)."})
    lr_step_size: Optional[int] = field(
        default=None, metadata={"help": "StepLR: optimizer steps between decays (default: a quarter of all steps)."}
    )
    lr_gamma: float = field(default=0.5, metadata={"help": "StepLR: factor applied at each decay."})
    do_train: bool = field(default=True, metadata={"help": "train_hf.py always trains: false is refused."})
    do_eval: Optional[bool] = field(default=None, metadata={
        "help": "Evaluate the validation split after training (eval_results.json). Default: true unless "
                "--eval_strategy no; false needs --eval_strategy no."})
    do_predict: bool = field(default=True, metadata={
        "help": "train_hf.py always describes the held-out split at the end: false is refused."})
    push_to_hub: bool = field(default=False, metadata={
        "help": "Push the finished folder, with its model card, to --hub_model_id once, at the end."})
    hub_strategy: str = field(default="end", metadata={
        "help": "train_hf.py pushes the finished folder once, at the end (--push_to_hub): other strategies are "
                "refused."})
    num_train_epochs: float = with_default("num_train_epochs", 40)
    per_device_train_batch_size: int = with_default("per_device_train_batch_size", 32)
    per_device_eval_batch_size: int = with_default("per_device_eval_batch_size", 64)
    eval_strategy: str = with_default("eval_strategy", "steps")
    save_total_limit: int = with_default("save_total_limit", 2)
    # torchrun on a machine without CUDA: the Trainer runs DDP on the CPU (gloo) only with use_cpu; without it, it
    # warns that parallel_mode is not DISTRIBUTED and reports every loss summed over the processes (2x with two).
    use_cpu: Optional[bool] = field(default=None, metadata={
        "help": "Train on the CPU (default: true under torchrun without CUDA, else false)."})
    logging_steps: float = with_default("logging_steps", 20)
    remove_unused_columns: bool = with_default("remove_unused_columns", False)
    report_to: str = with_default("report_to", "none")
    dataloader_num_workers: int = with_default("dataloader_num_workers", 0)
    seed: int = with_default("seed", 42)

    def __post_init__(self):
        if self.use_cpu is None:
            self.use_cpu = launched_by_torchrun() and not torch.cuda.is_available()
        eval_strategy = getattr(self.eval_strategy, "value", self.eval_strategy)
        if self.do_eval is None:
            self.do_eval = eval_strategy != "no"
        elif not self.do_eval and eval_strategy != "no":  # TrainingArguments would turn it back to true without a word
            raise ValueError(f"--do_eval false: train_hf.py evaluates during training as --eval_strategy says "
                             f"({eval_strategy}); give --eval_strategy no to evaluate never.")
        schedules = [STEP_LR, *(kind.value for kind in SchedulerType)]
        if getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type) not in schedules:
            raise ValueError(f"--lr_scheduler_type must be one of {', '.join(schedules)} ({STEP_LR}: MODA's StepLR), "
                             f"got {self.lr_scheduler_type!r}.")
        step_lr = self.lr_scheduler_type == STEP_LR
        if step_lr:  # TrainingArguments checks the name against transformers' schedules, which have no StepLR
            self.lr_scheduler_type = "constant"
        super().__post_init__()
        if step_lr:
            self.lr_scheduler_type = STEP_LR


ARGUMENT_CLASSES = (ModelArguments, DataArguments, MODATrainingArguments)
USAGE = "{prog} [options] | {prog} ARGS.json"
DESCRIPTION = ("Train MODA with the Hugging Face Trainer. No --dataset and no --train_file: the offline demo "
               "(a synthetic catalog, a tiny MODA from scratch, ./moda-demo).")
# The TrainingArguments options that --help shows next to MODA's own (--help_all shows every one).
COMMON_TRAINING_OPTIONS = (
    "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "learning_rate", "weight_decay", "optim", "lr_scheduler_type", "lr_step_size",
    "lr_gamma", "warmup_steps", "eval_strategy", "eval_steps", "save_steps", "save_total_limit", "logging_steps",
    "do_eval", "seed", "bf16", "use_cpu", "resume_from_checkpoint", "push_to_hub", "hub_model_id", "report_to",
)


def option_names() -> dict:
    """Every spelling of every option, without its dashes (dataset_name, dataset-name, no_augment_images, ...) -> the
    argument's name."""
    names = {}
    for argument_class in ARGUMENT_CLASSES:
        for argument in fields(argument_class):
            spellings = [argument.name, *(alias[2:] for alias in argument.metadata.get("aliases", []))]
            if argument.type in (bool, Optional[bool]) and argument.default is True:
                spellings.append(f"no_{argument.name}")  # HfArgumentParser's complement of a true flag
            for spelling in spellings:
                names[spelling] = names[spelling.replace("_", "-")] = argument.name
    return names


def parse_arguments(argv=None, prog: str = "train_hf.py"):
    """The three argument dataclasses, and the names of the arguments given explicitly (under their own names, whatever
    alias or spelling was given). -h/--help prints MODA's options and the common training options, --help_all all."""
    parser = HfArgumentParser(ARGUMENT_CLASSES, prog=prog, usage=USAGE.format(prog=prog), description=DESCRIPTION,
                              add_help=False, allow_abbrev=False)  # an abbreviation would not count as given
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv):
        print(short_help(prog))
        raise SystemExit(0)
    if {"--help_all", "--help-all"} & set(argv):
        parser.print_help()
        raise SystemExit(0)
    names = option_names()
    if len(argv) == 1 and argv[0].endswith(".json"):
        values = read_arguments_file(argv[0], names)
        check_json_types(argv[0], values, parser.dataclass_types)
        return (*parser.parse_dict(values), set(values))
    given = {names.get(arg[2:].split("=")[0], arg[2:].split("=")[0]) for arg in argv if arg.startswith("--")}
    return (*parser.parse_args_into_dataclasses(args=argv), given)


def read_arguments_file(path, names: dict) -> dict:
    """A JSON file of arguments, under their own names (an alias is taken as the name it stands for)."""
    try:
        values = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from err
    if not isinstance(values, dict):
        raise ValueError(f"{path}: an arguments file holds one JSON object of argument names and values, got "
                         f"a JSON {type(values).__name__}.")
    named = {}
    for key, value in values.items():
        name = names.get(key, key)
        if name in named:
            raise ValueError(f"{path}: {name!r} is given twice (as {name!r} and as its alias {key!r}).")
        # A saved training_args.json holds "<HUB_TOKEN>" where transformers left the token out: no token.
        named[name] = None if name.endswith("_token") and value == f"<{name.upper()}>" else value
    return named


def short_help(prog: str) -> str:
    """MODA's options and the common training options, each with its aliases, help and default."""
    sections = [("MODA's options", [argument for argument_class in ARGUMENT_CLASSES[:2]
                                    for argument in fields(argument_class)]),
                ("Common training options (transformers' TrainingArguments; all of them: --help_all)",
                 [argument for argument in fields(MODATrainingArguments) if argument.name in COMMON_TRAINING_OPTIONS])]
    lines = [f"usage: {USAGE.format(prog=prog)}", "", *textwrap.wrap(DESCRIPTION, width=118)]
    for title, arguments in sections:
        lines += ["", f"{title}:"]
        for argument in arguments:
            names = ", ".join([f"--{argument.name}", *(alias for alias in argument.metadata.get("aliases", [])
                                                        if "-" not in alias[2:])])
            text = argument.metadata.get("help", "")
            if "default:" not in text.lower():
                default = argument.default_factory() if argument.default is MISSING else argument.default
                text += f" (default: {getattr(default, 'value', default)})"
            indent = " " * 36
            wrapped = textwrap.wrap(text, width=118, initial_indent=indent, subsequent_indent=indent)
            if len(names) < 33:  # the help starts on the option's line, as argparse lays it out
                wrapped[0] = f"  {names:<34}" + wrapped[0].lstrip()
            else:
                wrapped.insert(0, f"  {names}")
            lines += wrapped
    lines += ["", "Each option also takes dashes (--output-dir). -h, --help: this list; --help_all: every option."]
    return "\n".join(lines)


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


def check_arguments(model_args, data_args, training_args, given) -> None:
    """Arguments that would be ignored or would fail late (or quietly do something else) stop the run at once."""
    require_counts_of_at_least_one(data_args, training_args)
    require_lr_gamma_in_range(training_args.lr_gamma)
    require_attribute_eval_items(data_args.attribute_eval_items)
    require_schedule_options(training_args, given)
    refuse_unused_training_arguments(training_args, given)
    require_push_for_hub_options(training_args, given)
    refuse_streaming(data_args.streaming)
    require_one_catalog(data_args)
    require_model_size(model_args.model_size, model_args.model_name_or_path)
    require_architecture(model_args.architecture, model_args.blip_model)
    require_one_stage(model_args)
    require_something_to_download(model_args, data_args, given)
    require_moda_checkpoint(model_args.architecture, model_args.model_name_or_path, model_args.model_revision)


def require_counts_of_at_least_one(data_args, training_args) -> None:
    for name in ("lr_step_size", "max_train_samples", "max_eval_samples"):
        value = getattr(training_args, name, getattr(data_args, name, None))
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}.")


def require_lr_gamma_in_range(lr_gamma: float) -> None:
    if not 0 < lr_gamma <= 1:
        raise ValueError(f"--lr_gamma (StepLR's decay factor) must be in (0, 1], got {lr_gamma}.")


def require_attribute_eval_items(attribute_eval_items: int) -> None:
    if attribute_eval_items < 0:
        raise ValueError(f"--attribute_eval_items must be 0 (off) or more, got {attribute_eval_items}.")


def default_of(argument_class, name: str):
    return next(argument.default for argument in fields(argument_class) if argument.name == name)


def require_schedule_options(training_args, given) -> None:
    """StepLR's options go with StepLR, transformers' schedule options with theirs: neither is ever ignored."""
    if training_args.lr_scheduler_type == STEP_LR:
        if training_args.lr_scheduler_kwargs:
            raise ValueError(f"--lr_scheduler_kwargs: for transformers' schedules; MODA's StepLR (--lr_scheduler_type "
                             f"{STEP_LR}, the default) takes --lr_step_size and --lr_gamma.")
        return
    # (a saved training_args.json names them at their defaults: only another value is refused)
    step_lr_options = [f"--{name}" for name in ("lr_step_size", "lr_gamma")
                       if name in given and getattr(training_args, name) != default_of(MODATrainingArguments, name)]
    if step_lr_options:
        raise ValueError(f"{' and '.join(step_lr_options)}: for MODA's StepLR (--lr_scheduler_type {STEP_LR}); "
                         f"--lr_scheduler_type {training_args.lr_scheduler_type.value} is transformers' schedule "
                         "(its options: --lr_scheduler_kwargs, --warmup_steps).")


LOSS_ONLY = ("train_hf.py's evaluation computes the loss only (no compute_metrics: the attribute scores come from "
             "generated descriptions), so no predictions are gathered")
# TrainingArguments options that train_hf.py has no use for, with the values it works with: another value is refused
# (a saved training_args.json names them all, at these values).
FIXED_TRAINING_ARGUMENTS = {
    "do_train": ((True,), "train_hf.py always trains (`moda eval` scores a trained model)"),
    "do_predict": ((True,), "train_hf.py always describes the held-out split (test, else validation) at the end, into "
                            "training_summary.json (`moda eval` scores any split)"),
    "hub_strategy": (("end",), "train_hf.py pushes the finished folder once, at the end, with its model card"),
    "hub_always_push": ((False,), "train_hf.py pushes the finished folder once, at the end, with its model card"),
    "remove_unused_columns": ((False,), "MODA's collator reads the example columns the Trainer would remove"),
    "label_names": ((None,), "MODA's collator names the labels `labels`"),
    "label_smoothing_factor": ((0.0,), "MODA computes its own loss (labels shifted past the image prefix), and the "
                                       "Trainer's smoothing would compare misaligned tokens"),
    "train_sampling_strategy": (("random", "sequential"), "group_by_length needs a length column, which MODA's "
                                                          "examples (not a datasets.Dataset) do not have"),
    "length_column_name": (("length",), "only --train_sampling_strategy group_by_length reads it"),
    "include_for_metrics": (([],), LOSS_ONLY),
    "batch_eval_metrics": ((False,), LOSS_ONLY),
    "eval_do_concat_batches": ((True,), LOSS_ONLY),
    "eval_use_gather_object": ((False,), LOSS_ONLY),
    "eval_accumulation_steps": ((None,), LOSS_ONLY),
}


def refuse_unused_training_arguments(training_args, given) -> None:
    for name, (accepted, why) in FIXED_TRAINING_ARGUMENTS.items():
        value = getattr(training_args, name)
        value = getattr(value, "value", value)  # (an enum's name)
        if name in given and value not in accepted:
            raise ValueError(f"--{name} {json.dumps(value)}: not used: {why}.")


HUB_OPTIONS = ("hub_model_id", "hub_token", "hub_private_repo", "hub_revision")


def require_push_for_hub_options(training_args, given) -> None:
    unused = [f"--{name}" for name in HUB_OPTIONS if name in given and getattr(training_args, name) is not None]
    if unused and not training_args.push_to_hub:
        raise ValueError(f"{', '.join(unused)}: used only with --push_to_hub.")


def refuse_streaming(streaming: bool) -> None:
    if streaming:
        raise ValueError("--streaming is not supported: train_hf.py reads a catalog's rows whole (metadata only; each "
                         "image is read once, into the feature cache) to draw --max_train_samples at random, carve "
                         "out a validation split, train a tokenizer and count epochs; a streamed dataset allows none "
                         "of these.")


def require_one_catalog(data_args) -> None:
    """--dataset, or --train_file (with --validation_file or not): local files, each a CSV/JSONL/JSON file."""
    if data_args.dataset and data_args.train_file:
        raise ValueError("--dataset and --train_file both name the training rows: give one of them.")
    if data_args.validation_file and not data_args.train_file:
        raise ValueError("--validation_file goes with --train_file: a --dataset brings its own validation split (or "
                         "one is carved out of its train split).")
    for name in ("train_file", "validation_file"):
        path = getattr(data_args, name)
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"--{name} {path!r}: no such file (a CSV, JSONL or JSON file with an image column; "
                                    "a folder or a Hub dataset is --dataset).")


def require_something_to_download(model_args, data_args, given) -> None:
    """--model_revision and --cache_dir are for models loaded from the Hub: a model built from scratch loads none (a
    tiny one on a given --vision_model loads that tower); one revision cannot pin two backbone repos."""
    from_scratch = model_args.architecture == "moda" and not model_args.model_name_or_path and (
        model_args.model_size or not data_args.catalog_name)  # (the demo builds a tiny model from scratch)
    on_a_given_tower = model_args.model_size and "vision_model" in given
    unused = [f"--{name}" for name in ("model_revision", "cache_dir") if name in given and getattr(model_args, name)]
    if from_scratch and not on_a_given_tower and unused:
        raise ValueError(f"{' and '.join(unused)}: nothing is downloaded: the model is built from scratch "
                         "(--model_size, or the demo).")
    two_backbones = model_args.architecture == "moda" and not model_args.model_name_or_path and not from_scratch
    if two_backbones and "model_revision" in given and model_args.model_revision:
        raise ValueError("--model_revision names a commit of one repo, and this model is built from two "
                         "(--vision_model and --text_model): download each at its commit into a folder "
                         "(hf download REPO --revision SHA --local-dir DIR) and name the folders.")


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


def require_moda_checkpoint(architecture: str, model_name_or_path, revision) -> None:
    """Read as JSON, before the catalog: the installed MODA code continues a MODA model; nothing else is loaded."""
    if architecture != "moda" or not model_name_or_path:
        return
    model_type = read_model_config(model_name_or_path, revision, label="--model_name_or_path")["model_type"]
    if model_type != MODA_MODEL_TYPE:
        raise ValueError(f"--model_name_or_path {model_name_or_path!r} is a {model_type!r} model; "
                         "train_hf.py continues MODA models (with the installed MODA code).")
