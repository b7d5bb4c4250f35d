"""The Trainer train_hf.py runs: the collator, the attribute-metrics callback, the Trainer's optimizer with MODA's
StepLR by default, atomic checkpoints."""

import logging

from transformers import TrainerCallback

from moda.data.attributes import AttributeVocabulary
from moda.data.catalog import sample_rows
from moda.model.auto_classes import MODAProcessor
from moda.model.blip_baseline import BlipCollator
from moda.train.callbacks import AttributeMetricsCallback
from moda.train.checkpointing import AtomicCheckpointTrainer
from moda.train.collate import ExampleDataset, MODACollator
from moda.train.model import use_training_attention
from moda.train.optim import STEP_LR, step_lr_schedule

logger = logging.getLogger("train_hf")


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


class MODATrainer(AtomicCheckpointTrainer):
    """
    The Trainer builds the optimizer (--optim; weight decay on all but biases and LayerNorm weights, as
    get_decay_parameter_names decides) and any schedule of transformers'; MODA's StepLR (--lr_scheduler_type step_lr,
    the default) is built here.
    """

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.args.lr_scheduler_type != STEP_LR:
            return super().create_scheduler(num_training_steps, optimizer)
        # Called once each time a training loop is set up (again when --auto_find_batch_size retries with a smaller
        # batch): a new schedule for that loop's steps.
        self.lr_scheduler = step_lr_schedule(optimizer or self.optimizer, self.args, num_training_steps)
        return self.lr_scheduler


class EpochToDataset(TrainerCallback):
    """Tells the training set which epoch starts (its augmentation depends on it; see ExampleDataset)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch + 1e-6))  # at a resume, state.epoch is e.g. 1.25: epoch 1


def take_over_push(training_args) -> bool:
    """Whether to push: the Trainer itself pushes nothing, the finished folder is pushed once, whole, at the end."""
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    if push_to_hub and not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (namespace/name).")
    return push_to_hub


def attribute_vocabulary(catalog):
    """The catalog's attribute values, which descriptions are scored against; None for a catalog without any."""
    try:
        return AttributeVocabulary.from_rows([row for rows in catalog.values() for row in rows])
    except ValueError as err:  # e.g. a catalog of images and captions only: nothing to score per attribute
        logger.warning(f"No per-attribute scores: {err}")
        return None


def build_trainer(model, processor, splits, feature_name, vocabulary, model_args, data_args, training_args):
    """
    The Trainer with its own optimizer and MODA's StepLR by default (stepped per optimizer step), checkpoints that
    appear only when complete, and attribute scores on a validation sample at each evaluation.
    """
    use_training_attention(model, training_args.device)
    if model_args.architecture == "blip":
        collator = BlipCollator(processor, model.config.text_config.bos_token_id)
    else:
        collator = MODACollator(processor, feature_name)
    callbacks = []
    if vocabulary is not None and data_args.attribute_eval_items and training_args.eval_strategy != "no":
        rows = [example["row"] for example in splits["validation"] if example["prompt"] is None]
        sample = sample_rows(rows, data_args.attribute_eval_items, training_args.seed)  # not a grouped file's first
        callbacks.append(AttributeMetricsCallback(processor, sample, vocabulary=vocabulary,
                                                  tokens_per_example=mean_tokens_per_example(processor, splits["train"])))
    augment = data_args.augment_images and feature_name == "pixel_values"
    train_dataset = ExampleDataset(splits["train"], augment=augment, seed=training_args.seed)
    return MODATrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=ExampleDataset(splits["validation"]),
        data_collator=collator,
        processing_class=processor,
        callbacks=callbacks + [EpochToDataset(train_dataset)],
    )
