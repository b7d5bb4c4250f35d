"""Loading product catalogs: imagefolder directories, CSV/JSONL files with an image column, or Hub datasets.

Every catalog becomes a list of rows (plain dicts of metadata) per split, each with an `image` entry that is either a
local path or raw image bytes: images are decoded only where they are needed (and cached after that).
Rows that cannot be used are reported with their reason; `on_bad_row` decides whether they are skipped or stop the run.
"""

import csv
import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

MODA_CAPTION_TEMPLATE = "{Colour} {Usage} {ProductType} for {Gender} - {Category} {SubCategory}"
SPLIT_NAMES = ("train", "validation", "test")


class BadRowError(ValueError):
    """A catalog row that cannot be used (missing column, empty caption, unreadable image)."""


@dataclass
class BadRows:
    """Collects unusable rows: `skip` records them and goes on, `fail` raises at the first one."""

    policy: str = "skip"
    rows: list = field(default_factory=list)

    def __post_init__(self):
        if self.policy not in ("skip", "fail"):
            raise ValueError(f"on_bad_row must be 'skip' or 'fail', got {self.policy!r}.")

    def report(self, where: str, reason: str) -> None:
        if self.policy == "fail":
            raise BadRowError(f"{where}: {reason}")
        self.rows.append((where, reason))

    def summary(self) -> str:
        if not self.rows:
            return "no bad rows"
        lines = [f"skipped {len(self.rows)} bad row(s):"] + [f"  {where}: {reason}" for where, reason in self.rows]
        return "\n".join(lines)


def template_columns(template: str) -> list:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def caption_for(row: dict, caption_column: str = None, caption_template: str = MODA_CAPTION_TEMPLATE) -> str:
    """The row's description: its `caption_column`, or the template filled from its metadata."""
    if caption_column:
        if caption_column not in row:
            raise BadRowError(f"missing caption column {caption_column!r}")
        value = row[caption_column]
        if not isinstance(value, str) or not value.strip():
            raise BadRowError(f"empty caption in column {caption_column!r}")
        return " ".join(value.split())
    values = {}
    for name in template_columns(caption_template):
        value = row.get(name)
        if value is None or (isinstance(value, float) and value != value) or not str(value).strip():
            raise BadRowError(f"missing value for caption template column {name!r}")
        values[name] = str(value).strip()
    return " ".join(caption_template.format(**values).split())


def _read_table(path: Path) -> list:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as handle:
            if path.suffix.lower() == ".json":
                return json.load(handle)
            return [json.loads(line) for line in handle if line.strip()]
    raise ValueError(f"Unsupported catalog file {str(path)!r}: use .csv, .jsonl or .json.")


def _rows_with_image_paths(rows: list, base: Path, image_column: str, source: str) -> list:
    """Resolves each row's image column against `base`; rows keep all their metadata."""
    resolved = []
    for i, row in enumerate(rows):
        row = dict(row)
        name = row.get(image_column)
        row["_where"] = f"{source} row {i + 2 if source.endswith('.csv') else i + 1}"
        if name in (None, ""):
            row["image"] = None
        else:
            path = Path(name)
            row["image"] = str(path if path.is_absolute() else base / path)
        resolved.append(row)
    return resolved


def _load_imagefolder(root: Path) -> dict:
    splits = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and (p / "metadata.csv").exists()):
        table = split_dir / "metadata.csv"
        splits[split_dir.name] = _rows_with_image_paths(_read_table(table), split_dir, "file_name", str(table))
    if not splits and (root / "metadata.csv").exists():
        table = root / "metadata.csv"
        splits["train"] = _rows_with_image_paths(_read_table(table), root, "file_name", str(table))
    return splits


def _load_hub_dataset(name: str, image_column: str) -> dict:
    import datasets

    loaded = datasets.load_dataset(name)
    splits = {}
    for split, dataset in loaded.items():
        if image_column in dataset.column_names:
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        rows = []
        for i, row in enumerate(dataset):
            image = row.pop(image_column, None)
            row["image"] = image.get("bytes") or image.get("path") if isinstance(image, dict) else image
            row["_where"] = f"{name}[{split}] row {i}"
            rows.append(row)
        splits[split] = rows
    return splits


def read_splits(source: str, image_column: str = "image") -> dict:
    """
    A catalog's rows as {split: [row, ...]}, as its source holds them: an imagefolder directory (split folders with
    metadata.csv, or a single metadata.csv; {} when it has none), a .csv/.jsonl/.json file with an image column (one
    "train" split, paths relative to the file), or a Hub dataset name.
    """
    path = Path(source)
    if path.is_dir():
        return _load_imagefolder(path)
    if path.is_file():
        return {"train": _rows_with_image_paths(_read_table(path), path.parent, image_column, str(path))}
    if path.suffix or source.startswith((".", "/")):
        raise FileNotFoundError(f"Catalog not found: {source!r}")
    return _load_hub_dataset(source, image_column)


def load_catalog(dataset: str, image_column: str = "image", validation_fraction: float = 0.1, seed: int = 0) -> dict:
    """
    Loads a catalog as {split: [row, ...]}. `dataset` is an imagefolder directory (split folders with metadata.csv,
    or a single metadata.csv), a .csv/.jsonl/.json file with an image column (paths relative to the file), or a Hub
    dataset name. A validation split is carved out of train (deterministically) when there is none.
    """
    splits = read_splits(dataset, image_column)
    if not splits:
        raise ValueError(f"{dataset!r} holds no metadata.csv (imagefolder layout: <split>/metadata.csv + images).")
    if "train" not in splits:
        raise ValueError(f"{dataset!r} has no train split (found {sorted(splits)}).")
    if "validation" not in splits:
        splits = split_off_validation(splits, validation_fraction, seed)
    return splits


def split_off_validation(splits: dict, fraction: float, seed: int) -> dict:
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be between 0 and 1, got {fraction}.")
    train = list(splits["train"])
    random.Random(seed).shuffle(train)
    n_validation = max(1, round(len(train) * fraction))
    return {**splits, "train": train[n_validation:], "validation": train[:n_validation]}


QUESTIONS = {
    "Colour": "What colour is this item?",
    "ProductType": "What kind of product is this?",
    "Gender": "Who is this item for?",
    "Usage": "What is this item for?",
}


def examples_from_rows(rows: list, bad_rows: BadRows, caption_column=None, caption_template=MODA_CAPTION_TEMPLATE,
                       qa_from_metadata: bool = False) -> list:
    """
    One training example per usable row: {"image", "prompt": None, "description", "row"}; with `qa_from_metadata`,
    also one (image, question, answer) example per metadata column in QUESTIONS that the row has.
    """
    examples = []
    for row in rows:
        if row.get("image") is None:
            bad_rows.report(row.get("_where", "row"), "no image")
            continue
        try:
            description = caption_for(row, caption_column, caption_template)
        except BadRowError as err:
            bad_rows.report(row.get("_where", "row"), str(err))
            continue
        examples.append({"image": row["image"], "prompt": None, "description": description, "row": row})
        if qa_from_metadata:
            for column, question in QUESTIONS.items():
                answer = str(row.get(column) or "").strip()
                if answer:
                    examples.append({"image": row["image"], "prompt": question, "description": answer, "row": row})
    return examples
