"""Training examples: catalog rows -> (image, prompt, description) examples -> examples with cached image features,
with the checks that stop a run whose catalog leaves nothing to train on."""

import torch

from moda.data.attributes import KNOWN_COLUMNS
from moda.data.catalog import (QUESTIONS, BadRows, columns_of, examples_from_rows, load_catalog,
                               read_catalog_splits, require_caption_columns, sample_rows)
from moda.data.features import (FeatureCache, compute_features, image_embedding_encoder, model_fingerprint,
                                pixel_values_encoder)
from moda.train.model import unwrap, vision_is_frozen


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


def read_catalog(data_args, seed: int) -> dict:
    """
    Split -> rows: of --dataset, or of --train_file (one train split), whose validation split is --validation_file's
    rows when given; a validation split is carved out of train when there is none.
    """
    if not data_args.validation_file:
        return load_catalog(data_args.catalog_name, data_args.image_column, data_args.validation_fraction, seed)
    return {"train": read_catalog_splits(data_args.train_file, data_args.image_column)["train"],
            "validation": read_catalog_splits(data_args.validation_file, data_args.image_column)["train"]}


def load_examples(data_args, seed: int):
    """
    The catalog (split -> rows), its (image, prompt, description) examples per split, and the bad rows met: at most
    --max_train_samples / --max_eval_samples rows a split, drawn at random with the run's seed.
    """
    bad_rows = BadRows(data_args.on_bad_row)
    catalog = read_catalog(data_args, seed)
    name = data_args.catalog_name
    require_caption_columns(catalog, name, data_args.caption_column, data_args.caption_template)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_eval_samples}
    splits = {
        split: examples_from_rows(sample_rows(rows, limits.get(split), seed), bad_rows,
                                  data_args.caption_column, data_args.caption_template, data_args.qa_from_metadata)
        for split, rows in catalog.items()
    }
    require_training_examples(splits["train"], name, bad_rows)
    if data_args.qa_from_metadata:
        require_questions(splits["train"], name, catalog["train"])
    return catalog, splits, bad_rows


def training_texts(examples) -> list:
    """The prompts and descriptions a from-scratch tokenizer learns."""
    return [text for example in examples for text in (example["prompt"], example["description"]) if text]


def examples_for_model(model, processor, architecture: str, splits, data_args, bad_rows):
    """
    The examples the model can take (MODA: none longer than its decoder after the image prefix), with their image
    features computed once and cached on disk; and the features' name (image_embeds or pixel_values).
    """
    if architecture == "moda":
        splits = drop_overlong_examples(model, processor, splits, bad_rows)
        require_training_examples(splits["train"], data_args.catalog_name, bad_rows)
    splits, feature_name = prepare_examples(model, processor, splits, data_args, bad_rows)
    require_training_examples(splits["train"], data_args.catalog_name, bad_rows)
    return splits, feature_name
