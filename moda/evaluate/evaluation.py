"""moda eval's run: a catalog split described by a model, the descriptions scored against the items' metadata, and
the report written (moda.evaluate.report). The command's options are moda.cli.eval's."""

from pathlib import Path

import torch

from moda.data.attributes import AttributeVocabulary
from moda.data.catalog import (MODA_CAPTION_TEMPLATE, BadRowError, BadRows, caption_for, read_catalog_splits,
                               require_caption_columns, sample_rows)
from moda.evaluate.describe import describe_images
from moda.evaluate.description_scores import majority_baseline, score_descriptions
from moda.evaluate.report import build_report, summary_table, write_report
from moda.io.images import load_image
from moda.model.loading import eval_model_type, load_model_and_processor

DEFAULT_SPLIT = "test"


# --- the eval command ---------------------------------------------------------------------------------------------


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


def split_rows(catalog: dict, split: str, max_samples: int = None, seed: int = 0) -> list:
    rows = sample_rows(catalog[split], max_samples, seed)
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


def evaluate(args) -> int:
    output_dir = Path(args.output_dir)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    eval_model_type(args.model_name_or_path, args.revision)  # before the split's images are read

    # The splits as the data holds them: load_catalog would set aside a random tenth of a lone train split as
    # validation (for training), and scoring a file would then leave rows out unsaid.
    catalog = read_catalog_splits(args.dataset, image_column=args.image_column)
    if args.caption_column or args.caption_template != MODA_CAPTION_TEMPLATE:  # named by the user: must exist (the
        # default template only skips the text metrics on catalogs without its columns, with the reason printed)
        require_caption_columns(catalog, args.dataset, args.caption_column, args.caption_template)
    split, split_note = choose_split(catalog, args.split, args.dataset)
    rows = split_rows(catalog, split, args.max_samples, args.seed)
    # The vocabulary covers every split: a value named in a description but absent from this split is still a fact.
    vocabulary = AttributeVocabulary.from_rows([row for part in catalog.values() for row in part], args.columns)
    bad_rows = BadRows(args.on_bad_row)
    rows, images = readable_items(rows, bad_rows)
    if not rows:
        raise ValueError(f"No item of split {split!r} has a readable image:\n{bad_rows.summary()}")

    model, processor = load_model_and_processor(args.model_name_or_path, args.revision)
    model.to(device)
    descriptions = describe_images(model, processor, images, args.batch_size, args.max_new_tokens, progress=True)

    captions, no_text_reason = reference_captions_for(rows, args.caption_column, args.caption_template)
    result = score_descriptions(descriptions, rows, vocabulary=vocabulary, reference_captions=captions)
    selection = {"split": split, "split_note": split_note, "split_rows": len(catalog[split])}
    report = build_report(args, selection, rows, descriptions, captions, result,
                          majority_baseline(rows, vocabulary.columns), bad_rows, no_text_reason)
    if args.judge:
        from moda.evaluate.judge import judge_descriptions

        n = min(args.judge_limit, len(rows))
        report["judge"] = judge_descriptions(descriptions[:n], rows[:n], args.judge, vocabulary=vocabulary,
                                             device=device)
    write_report(report, output_dir)
    print(summary_table(report))
    print(f"\nreport: {output_dir / 'report.json'}, {output_dir / 'report.md'}")
    return 0

