"""Train MODA with the Hugging Face Trainer.

    python train_hf.py                      # offline demo: synthetic catalog -> tiny MODA from scratch -> ./moda-demo
    python train_hf.py --model_size tiny --dataset ../shared/data/fashion-images --output_dir out
    python train_hf.py --dataset ../shared/data/fashion-images --output_dir out      # FashionCLIP + OPT-125m (Hub)
    python train_hf.py args.json            # the same arguments from a JSON file

Reads top to bottom: arguments -> catalog -> model -> cached image features -> Trainer (AdamW + StepLR) -> save.
"""

import json
import logging
import math
import os
import shutil
import sys
import time
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments, set_seed

from hub_card import describe_hardware, prepare_model_folder, push_model_folder
from moda.data.attributes import KNOWN_COLUMNS, AttributeVocabulary
from moda.data.catalog import (MODA_CAPTION_TEMPLATE, QUESTIONS, BadRows, columns_of, examples_from_rows, load_catalog,
                               require_caption_columns, sample_rows)
from moda.data.features import (FeatureCache, compute_features, image_embedding_encoder, model_fingerprint,
                                pixel_values_encoder)
from moda.evaluate.description_scores import attribute_scores
from moda.evaluate.report import pyplot
from moda.io.errors import run_command
from moda.io.paths import write_atomically
from moda.model.auto_classes import MODAForConditionalGeneration, MODAProcessor
from moda.model.blip_baseline import BlipCollator, load_blip
from moda.model.build import build_from_backbones, build_from_scratch
from moda.model.loading import MODA_MODEL_TYPE, read_model_config
from moda.model.tokenizer import train_caption_tokenizer
from moda.train.callbacks import AttributeMetricsCallback
from moda.train.checkpointing import FINAL_STAGING_DIR, AtomicCheckpointTrainer, publish_staged_folder
from moda.train.collate import ExampleDataset, MODACollator

logger = logging.getLogger("train_hf")


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
    for name in ("lr_step_size", "max_train_items", "max_eval_items"):
        value = getattr(model_args, name, getattr(data_args, name, None))
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}.")
    if not 0 < model_args.lr_gamma <= 1:
        raise ValueError(f"--lr_gamma (StepLR's decay factor) must be in (0, 1], got {model_args.lr_gamma}.")
    if data_args.attribute_eval_items < 0:
        raise ValueError(f"--attribute_eval_items must be 0 (off) or more, got {data_args.attribute_eval_items}.")
    for name in ("optim", "lr_scheduler_type"):
        # A saved training_args.json names both at TrainingArguments' defaults: only another value is refused.
        value = getattr(training_args, name)
        if name in given and getattr(value, "value", value) != TRAINING_ARGUMENT_DEFAULTS[name]:
            raise ValueError(f"--{name} is not used: train_hf.py trains with AdamW and StepLR (--learning_rate, "
                             "--weight_decay, --adam_beta1/2, --adam_epsilon, --lr_step_size, --lr_gamma, --warmup_steps).")
    from moda.model.build import SIZES

    if model_args.model_size and model_args.model_size not in SIZES:
        raise ValueError(f"--model_size must be one of {', '.join(map(repr, SIZES))}, got {model_args.model_size!r}.")
    if model_args.model_size and model_args.model_name_or_path:
        raise ValueError("--model_size builds a new model and --model_name_or_path continues from a trained one: give "
                         "one of them.")
    if model_args.architecture not in ("moda", "blip"):
        raise ValueError(f"--architecture must be 'moda' or 'blip', got {model_args.architecture!r}.")
    if model_args.architecture == "blip" and not model_args.blip_model:
        raise ValueError("--architecture blip needs --blip_model (a BlipForConditionalGeneration checkpoint).")
    stages = [f"--{name}" for name in ("train_projector_only", "use_lora") if getattr(model_args, name)]
    if model_args.architecture == "blip" and stages:
        raise ValueError(f"{' and '.join(stages)}: for MODA only; --architecture blip fine-tunes the whole BLIP model.")
    if len(stages) == 2:
        raise ValueError("--train_projector_only and --use_lora are two stages: run the projector-only stage first, then "
                         "--use_lora with --model_name_or_path set to its output.")
    if model_args.architecture == "moda" and model_args.model_name_or_path:
        # Read as JSON, before the catalog: the installed MODA code continues a MODA model; nothing else is loaded.
        model_type = read_model_config(model_args.model_name_or_path, label="--model_name_or_path")["model_type"]
        if model_type != MODA_MODEL_TYPE:
            raise ValueError(f"--model_name_or_path {model_args.model_name_or_path!r} is a {model_type!r} model; "
                             "train_hf.py continues MODA models (with the installed MODA code).")


def resolve_demo_defaults(model_args, data_args, training_args, given):
    """No --dataset: the offline demo (a synthetic catalog, a tiny model from scratch, ./moda-demo)."""
    if data_args.dataset is not None:
        if "output_dir" not in given:
            raise ValueError("--output_dir is required with --dataset.")
        return
    from moda.data.synthetic import make_catalog
    from moda.model.build import SIZES

    if model_args.model_name_or_path is None:
        model_args.model_size = model_args.model_size or "tiny"
    image_size = SIZES[model_args.model_size]["image_size"] if model_args.model_size in SIZES else 64
    data_args.dataset = str(make_catalog(data_args.demo_dir, num_items=data_args.demo_items, image_size=image_size,
                                         seed=0))
    if "output_dir" not in given:  # (TrainingArguments fills in "trainer_output" by itself)
        training_args.output_dir = "moda-demo"
    if "num_train_epochs" not in given:
        training_args.num_train_epochs = data_args.demo_epochs
    if "augment_images" not in given:  # the generator already jitters position, size and rotation
        data_args.augment_images = False


# A from-scratch tiny MODA on a real catalog sees this many training examples by default: 160 epochs of
# fashion-images' 2,337 train items, which measured best within 20 minutes on 2 cores (BENCHMARKS.md). A bigger
# catalog gets fewer epochs of the same cost.
TINY_EXAMPLES_SEEN = 160 * 2337


def resolve_size_defaults(model_args, data_args, training_args, given):
    """
    A from-scratch vision tower learns shapes far better at 3e-4 than at the write-up's 1e-3 (which suits
    pretrained backbones): measured on the demo catalog, product type stayed at chance with 1e-3.
    """
    if not model_args.model_size or model_args.model_name_or_path:
        return
    if "learning_rate" not in given:
        training_args.learning_rate = 3e-4


def resolve_device_defaults(training_args, given):
    """Pinned memory only speeds up copies to an accelerator; without one, torch warns about it at every epoch."""
    if "dataloader_pin_memory" not in given and training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False


def resolve_epochs(model_args, data_args, training_args, given, num_train_examples: int) -> None:
    """Epochs of a from-scratch model on a real catalog, unless given: TINY_EXAMPLES_SEEN examples in all."""
    from_scratch = model_args.model_size and not model_args.model_name_or_path
    if "num_train_epochs" in given or not from_scratch or Path(data_args.dataset) == Path(data_args.demo_dir):
        return  # (the demo has its own: --demo_epochs)
    training_args.num_train_epochs = max(1, round(TINY_EXAMPLES_SEEN / max(1, num_train_examples)))
    logger.info(f"--model_size {model_args.model_size} from scratch: {training_args.num_train_epochs:g} epochs of "
                f"{num_train_examples} examples (set --num_train_epochs to change).")


def build_model(model_args, data_args, training_args, captions):
    if model_args.architecture == "blip":  # (check_arguments made sure there is a --blip_model)
        return load_blip(model_args.blip_model)
    if model_args.model_name_or_path:
        # trust_remote_code=False said outright: left unset, transformers asks on stdin whether to run the code that a
        # folder's tokenizer_config.json names, and a "y" runs it.
        model = MODAForConditionalGeneration.from_pretrained(model_args.model_name_or_path, trust_remote_code=False)
        processor = MODAProcessor.from_pretrained(model_args.model_name_or_path, trust_remote_code=False)
    elif model_args.model_size:
        tokenizer = train_caption_tokenizer(captions, vocab_size=model_args.tokenizer_vocab_size)
        set_seed(training_args.seed)
        model, processor = build_from_scratch(
            model_args.model_size, tokenizer, num_image_tokens=model_args.num_image_tokens
        )
    else:
        model, processor = build_from_backbones(
            model_args.vision_model, model_args.text_model, num_image_tokens=model_args.num_image_tokens
        )
    if model_args.train_projector_only:
        model.language_model.requires_grad_(False)
        model.freeze_vision_tower(True)
    if model_args.use_lora:
        model = add_lora(model, model_args)
    return model, processor


def add_lora(model, model_args):
    """LoRA on the decoder's attention only (q_proj/v_proj names exist in CLIP too: the pattern excludes it)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=r".*language_model.*\.self_attn\.(q_proj|v_proj)",
        modules_to_save=["projector"],
    )
    return get_peft_model(model, config)


def unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def vision_is_frozen(model) -> bool:
    tower = getattr(unwrap(model), "vision_tower", None)  # BLIP has none: its encoder output is not one embedding
    return tower is not None and not any(p.requires_grad for p in tower.parameters())


def prepare_examples(model, processor, splits, data_args, bad_rows):
    """Catalog rows -> examples with cached image features (embeddings if the vision tower is frozen)."""
    base = unwrap(model)
    frozen = vision_is_frozen(model)
    if frozen:
        encoder = image_embedding_encoder(base, processor)
        namespace = "embeds-" + model_fingerprint(base.vision_tower, processor.image_processor.to_dict())
    else:
        encoder = pixel_values_encoder(processor)
        namespace = "pixels-" + model_fingerprint(torch.nn.Identity(), processor.image_processor.to_dict())
    cache = FeatureCache(data_args.feature_cache_dir, namespace)
    prepared = {}
    for split, examples in splits.items():
        prepared[split] = compute_features(examples, encoder, cache, bad_rows, desc=f"{split} image features")
    return prepared, ("image_embeds" if frozen else "pixel_values")


def require_training_examples(examples, dataset, bad_rows):
    """An empty train split would fail later with an unrelated error (a tokenizer with no text, an index error)."""
    if examples:
        return
    why = "its train split has no rows"
    if bad_rows.rows:
        where, reason = bad_rows.rows[0]
        why = f"no train row could be used ({len(bad_rows.rows)} bad row(s) in all; the first: {where}: {reason})"
    raise ValueError(f"No training examples in {dataset!r}: {why}.")


def require_questions(examples, dataset, rows):
    """--qa_from_metadata asks about the attributes of moda.data.catalog.QUESTIONS: a catalog without their columns gets none."""
    if any(example["prompt"] for example in examples):
        return
    asked = " or ".join(", ".join(repr(layout[attribute]) for attribute in QUESTIONS) for layout in KNOWN_COLUMNS.values())
    raise ValueError(f"--qa_from_metadata: no train row of {dataset!r} has a value in a column that questions are asked "
                     f"about ({asked}); its columns are: {', '.join(map(repr, columns_of(rows)))}.")


def drop_overlong_examples(model, processor, splits, bad_rows):
    """
    Examples longer than the decoder's positions after the image prefix are bad rows (skipped and reported, or the
    run stops with --on_bad_row fail): left in, one would stop training at its batch, naming no row.
    """
    config = unwrap(model).config
    room = config.text_config.max_position_embeddings - config.num_image_tokens
    kept = {}
    for split, examples in splits.items():
        encoded = processor.encode_examples([e["prompt"] for e in examples], [e["description"] for e in examples])
        kept[split] = []
        for example, tokens in zip(examples, encoded):
            length = len(tokens["input_ids"])
            if length <= room:
                kept[split].append(example)
                continue
            what = f"the question {example['prompt']!r} and its answer" if example["prompt"] else "the description"
            bad_rows.report(example["row"].get("_where", "row"), f"{what}: {length} tokens with BOS and EOS, more "
                            f"than the {room} the decoder has after the image")
    return kept


def total_steps(training_args, num_train_examples: int) -> int:
    if training_args.max_steps and training_args.max_steps > 0:
        return training_args.max_steps
    batch = training_args.per_device_train_batch_size * max(1, training_args.world_size)
    batches = num_train_examples // batch if training_args.dataloader_drop_last else math.ceil(num_train_examples / batch)
    steps_per_epoch = max(1, math.ceil(batches / training_args.gradient_accumulation_steps))
    return math.ceil(steps_per_epoch * training_args.num_train_epochs)


def adamw(model, training_args):
    """
    AdamW over the trainable parameters (--learning_rate, --weight_decay, --adam_beta1/2, --adam_epsilon), with
    torch's fused kernel on CPU and CUDA: one pass over each tensor instead of about six, the same update. For
    OPT-125m's 129M parameters on 2 CPU threads a step takes 0.07 s instead of 0.34 s (benchmarks/training_speed.py).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fused = True if training_args.device.type in ("cpu", "cuda") else None  # None: torch's default elsewhere
    return torch.optim.AdamW(params, lr=training_args.learning_rate, weight_decay=training_args.weight_decay,
                             betas=(training_args.adam_beta1, training_args.adam_beta2), eps=training_args.adam_epsilon,
                             fused=fused)


def use_training_attention(model, device: torch.device) -> None:
    """
    On CPU, MODA trains with eager attention (decoder and vision tower): at caption lengths torch's SDPA backward is
    slower (about 10 % of a full-size bf16 step, benchmarks/training_speed.py; ~5 % of a tiny from-scratch step). The
    choice is not saved: a saved model loads with its default.
    """
    base = unwrap(model)
    if device.type == "cpu" and isinstance(base, MODAForConditionalGeneration):
        base.set_attn_implementation("eager")


def step_lr_optimizer(model, training_args, model_args, total_steps):
    """
    AdamW over the trainable parameters and a StepLR that decays every `lr_step_size` optimizer steps (the Trainer
    steps it once per optimizer step). By default the rate is cut three times: after 1/4, 1/2 and 3/4 of training.
    With `--warmup_steps N` (or a fraction of all steps, below 1) the rate first rises linearly over those steps, then
    StepLR counts from the end of the warm-up. (Off by default: on the demo, warm-up with a higher rate did not help.)
    """
    optimizer = adamw(model, training_args)
    step_size = model_args.lr_step_size or max(1, total_steps // 4)
    step_lr = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=model_args.lr_gamma)
    warmup_steps = training_args.get_warmup_steps(total_steps)
    if not warmup_steps:
        return optimizer, step_lr
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, step_lr], milestones=[warmup_steps])
    return optimizer, scheduler


def mean_tokens_per_example(processor, examples) -> float:
    """
    Tokens a training example puts through the decoder, laid out as the collator lays it out: MODA's
    processor.encode_examples (BOS, prompt, description, EOS), BLIP's tokenizer ([DEC] in [CLS]'s place, description,
    [SEP]).
    Every example is counted: encoding the demo's 4,800 train examples takes 0.3 s on 2 cores.
    """
    descriptions = [example["description"] for example in examples]
    if isinstance(processor, MODAProcessor):
        encoded = processor.encode_examples([example["prompt"] for example in examples], descriptions)
        lengths = [len(tokens["input_ids"]) for tokens in encoded]
    else:  # (moda.model.blip_baseline.BlipCollator)
        lengths = [len(ids) for ids in processor.tokenizer(descriptions)["input_ids"]]
    return sum(lengths) / max(1, len(lengths))


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


class EpochToDataset(TrainerCallback):
    """Tells the training set which epoch starts (its augmentation depends on it; see ExampleDataset)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch + 1e-6))  # at a resume, state.epoch is e.g. 1.25: epoch 1


def save_loss_curves(log_history, path):
    plt = pyplot()
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evals = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="training loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("MODA training")
    ax.legend()
    fig.tight_layout()
    write_atomically(path, lambda handle: fig.savefig(handle, format="png", dpi=120))
    plt.close(fig)


def main(argv=None):
    model_args, data_args, training_args, given = parse_arguments(argv)
    check_arguments(model_args, data_args, training_args, given)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    resolve_demo_defaults(model_args, data_args, training_args, given)
    resolve_size_defaults(model_args, data_args, training_args, given)
    resolve_device_defaults(training_args, given)
    set_seed(training_args.seed)
    started = time.time()

    # 1. Catalog -> (image, prompt, description) examples.
    bad_rows = BadRows(data_args.on_bad_row)
    catalog = load_catalog(data_args.dataset, data_args.image_column, data_args.validation_fraction, training_args.seed)
    require_caption_columns(catalog, data_args.dataset, data_args.caption_column, data_args.caption_template)
    limits = {"train": data_args.max_train_items, "validation": data_args.max_eval_items, "test": data_args.max_eval_items}
    splits = {
        split: examples_from_rows(sample_rows(rows, limits.get(split), training_args.seed), bad_rows,
                                  data_args.caption_column, data_args.caption_template, data_args.qa_from_metadata)
        for split, rows in catalog.items()
    }
    require_training_examples(splits["train"], data_args.dataset, bad_rows)
    if data_args.qa_from_metadata:
        require_questions(splits["train"], data_args.dataset, catalog["train"])

    resolve_epochs(model_args, data_args, training_args, given, len(splits["train"]))

    # 2. Model and processor (a from-scratch tokenizer learns the training captions and questions).
    captions = [text for example in splits["train"] for text in (example["prompt"], example["description"]) if text]
    model, processor = build_model(model_args, data_args, training_args, captions)
    if model_args.architecture == "moda":
        splits = drop_overlong_examples(model, processor, splits, bad_rows)
        require_training_examples(splits["train"], data_args.dataset, bad_rows)

    # 3. Image features, computed once and cached on disk.
    splits, feature_name = prepare_examples(model, processor, splits, data_args, bad_rows)
    require_training_examples(splits["train"], data_args.dataset, bad_rows)

    # 4. Trainer with AdamW + StepLR (stepped per optimizer step); attribute scores on a validation sample.
    use_training_attention(model, training_args.device)
    optimizer, scheduler = step_lr_optimizer(model, training_args, model_args, total_steps(training_args, len(splits["train"])))
    if model_args.architecture == "blip":
        collator = BlipCollator(processor, model.config.text_config.bos_token_id)
    else:
        collator = MODACollator(processor, feature_name)
    try:
        vocabulary = AttributeVocabulary.from_rows([row for rows in catalog.values() for row in rows])
    except ValueError as err:  # e.g. a catalog of images and captions only: nothing to score per attribute
        logger.warning(f"No per-attribute scores: {err}")
        vocabulary = None
    callbacks = []
    if vocabulary is not None and data_args.attribute_eval_items and training_args.eval_strategy != "no":
        rows = [example["row"] for example in splits["validation"] if example["prompt"] is None]
        sample = sample_rows(rows, data_args.attribute_eval_items, training_args.seed)  # not a grouped file's first
        callbacks.append(AttributeMetricsCallback(processor, sample, vocabulary=vocabulary,
                                                  tokens_per_example=mean_tokens_per_example(processor, splits["train"])))
    augment = data_args.augment_images and feature_name == "pixel_values"
    train_dataset = ExampleDataset(splits["train"], augment=augment, seed=training_args.seed)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # pushed once, whole, at the end
    if push_to_hub and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (namespace/name).")
    trainer = AtomicCheckpointTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=ExampleDataset(splits["validation"]),
        data_collator=collator,
        processing_class=processor,
        optimizers=(optimizer, scheduler),
        callbacks=callbacks + [EpochToDataset(train_dataset)],
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # 5. Save a folder that pipeline("image-to-text", trust_remote_code=True) loads.
    output_dir = Path(training_args.output_dir)
    final_model = save_final_model(trainer, model, processor, output_dir)
    if not trainer.is_world_process_zero():
        return
    save_loss_curves(trainer.state.log_history, output_dir / "loss_curves.png")

    # 6. Held-out evaluation: captions next to the truth and per-attribute accuracy.
    test_split = "test" if "test" in splits else "validation"
    test_examples = [example for example in splits[test_split] if example["prompt"] is None]
    descriptions = describe_examples(final_model, processor, test_examples, feature_name)
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
    print(bad_rows.summary())
    summary = {
        "dataset": data_args.dataset,
        "eval_split": test_split,
        "num_eval_items": len(test_examples),
        "attribute_accuracy": result["hit_rates"],
        "scores": result["scores"],
        "exact_match": exact,
        "train_runtime_s": round(time.time() - started, 1),
        "global_step": trainer.state.global_step,
        "world_size": training_args.world_size,
        "bad_rows": [{"where": where, "reason": reason} for where, reason in bad_rows.rows],
        "model_args": asdict(model_args),
    }
    write_atomically(output_dir / "training_summary.json",
                     lambda handle: handle.write(json.dumps(summary, indent=2).encode("utf-8")))
    # The model card (README.md) and the Inference Endpoints handler; then one push of the finished folder.
    hub_id = training_args.hub_model_id if push_to_hub else None
    if model_args.architecture == "moda":  # the BLIP baseline is a plain transformers model: no MODA card
        prepare_model_folder(output_dir, repo_id=hub_id, training_info={
            "hardware": describe_hardware(), "num_train_items": len(splits["train"])})
    if push_to_hub:
        commit = push_model_folder(output_dir, hub_id, revision=getattr(training_args, "hub_revision", None),
                                   private=training_args.hub_private_repo or None,
                                   commit_message=f"MODA trained on {data_args.dataset}")
        print(f"pushed to {hub_id} at commit {commit} (pin it with revision=)")
    print(f"saved to {output_dir}/ ({summary['train_runtime_s']} s)")
    return summary


def save_final_model(trainer, model, processor, output_dir):
    """
    Saves the trained model into output_dir (write_final_model), through a staging folder whose files are then moved
    in one by one, weights last (moda.train.checkpointing.publish_staged_folder): a save that fails or is killed half-way
    leaves the earlier model in output_dir whole, never a torn model.safetensors. A failed save removes its staging
    folder; one that a killed save left is removed by the next save.
    """
    main_process = trainer.is_world_process_zero()
    staging = output_dir / FINAL_STAGING_DIR
    if main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    trainer.accelerator.wait_for_everyone()  # (DeepSpeed and FSDP write from every rank)
    try:
        model = write_final_model(trainer, model, processor, staging)
        trainer.accelerator.wait_for_everyone()
        if main_process:
            publish_staged_folder(staging, output_dir)
    except BaseException:
        if main_process:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return model


def write_final_model(trainer, model, processor, output_dir):
    """Writes the trained model; a LoRA run saves its adapter in adapter/ and the merged full model at the top."""
    if hasattr(model, "merge_and_unload"):
        if trainer.is_world_process_zero():
            model.save_pretrained(output_dir / "adapter")
        model = model.merge_and_unload()
        if trainer.is_world_process_zero():
            model.save_pretrained(output_dir)
            processor.save_pretrained(output_dir)
    else:
        trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        # The final folder holds no pickle: the arguments go to JSON (checkpoints keep the Trainer's own files).
        (output_dir / "training_args.bin").unlink(missing_ok=True)
        (output_dir / "training_args.json").write_text(trainer.args.to_json_string())
    return model


def command_line(argv=None) -> int:
    """`python train_hf.py` and `moda train`: main's summary is for callers in Python; on the command line a wrong
    input is one error line and exit status 1, as the moda commands give it."""
    def train(argv):
        main(argv)
        return 0

    return run_command("train_hf.py", train, argv)


if __name__ == "__main__":
    sys.exit(command_line())
