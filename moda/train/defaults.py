"""Defaults that depend on other arguments: the offline demo, a from-scratch model's rate and epochs, the device."""

import logging
from pathlib import Path

logger = logging.getLogger("train_hf")


def resolve_demo_defaults(model_args, data_args, training_args, given):
    """No --dataset (and no --train_file): the offline demo (a synthetic catalog, a tiny model from scratch,
    ./moda-demo)."""
    if data_args.catalog_name is not None:
        if "output_dir" not in given:
            raise ValueError(f"--output_dir is required with {'--dataset' if data_args.dataset else '--train_file'}.")
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
    if "vision_model" not in given:  # a from-scratch tower; with --vision_model, a new decoder on that tower
        model_args.vision_model = None
    if "learning_rate" not in given:
        training_args.learning_rate = 3e-4


def resolve_device_defaults(training_args, given):
    """Pinned memory only speeds up copies to an accelerator; without one, torch warns about it at every epoch."""
    if "dataloader_pin_memory" not in given and training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False


def resolve_epochs(model_args, data_args, training_args, given, num_train_examples: int) -> None:
    """Epochs of a from-scratch model on a real catalog, unless given: TINY_EXAMPLES_SEEN examples in all."""
    from_scratch = model_args.model_size and not model_args.model_name_or_path
    if "num_train_epochs" in given or not from_scratch or Path(data_args.catalog_name) == Path(data_args.demo_dir):
        return  # (the demo has its own: --demo_epochs)
    training_args.num_train_epochs = max(1, round(TINY_EXAMPLES_SEEN / max(1, num_train_examples)))
    logger.info(f"--model_size {model_args.model_size} from scratch: {training_args.num_train_epochs:g} epochs of "
                f"{num_train_examples} examples (set --num_train_epochs to change).")


def resolve_defaults(model_args, data_args, training_args, given) -> None:
    """The defaults known before the catalog is read: the demo's, a from-scratch model's rate, the device's."""
    resolve_demo_defaults(model_args, data_args, training_args, given)
    resolve_size_defaults(model_args, data_args, training_args, given)
    resolve_device_defaults(training_args, given)
