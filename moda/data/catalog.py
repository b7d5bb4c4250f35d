"""Loading product catalogs: imagefolder directories, CSV/JSONL files with an image column, or Hub datasets.

Every catalog becomes a list of rows (plain dicts of metadata) per split, each with an `image` entry that is either a
local path or raw image bytes: images are decoded only where they are needed (and cached after that).
Rows that cannot be used are reported with their reason; `on_bad_row` decides whether they are skipped or stop the run.
"""

import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from moda.data.attributes import columns_for
from image_io_moda import is_url
from moda.io.paths import confined_source, looks_like_a_path

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
        reason = without_location(reason, where)
        if self.policy == "fail":
            raise BadRowError(f"{where}: {reason}")
        self.rows.append((where, reason))

    def summary(self) -> str:
        if not self.rows:
            return "no bad rows"
        lines = [f"skipped {len(self.rows)} bad row(s):"] + [f"  {where}: {reason}" for where, reason in self.rows]
        return "\n".join(lines)


def without_location(message: str, where: str) -> str:
    """An error raised while reading a row (load_image's) starts with the row's location, which the bad-rows list
    gives already: keep it once."""
    return message.removeprefix(f"{where}: ")


def template_columns(template: str) -> list:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def columns_of(rows: list) -> list:
    """Every column that some row has, in first-seen order (not the row location `_where`)."""
    columns = dict.fromkeys(key for row in rows for key in row)
    return [column for column in columns if column != "_where"]


def require_column(column: str, columns: list, source: str, role: str) -> None:
    """A column no row has is a wrong name, not empty cells: stop before every row is dropped as a bad row."""
    if column not in columns:
        raise ValueError(f"The {role} {column!r} is not a column of {source!r}; its columns are: "
                         f"{', '.join(map(repr, columns))}.")


def require_caption_columns(splits: dict, source: str, caption_column: str = None,
                            caption_template: str = MODA_CAPTION_TEMPLATE) -> None:
    """The caption column, or every column the caption template uses, must be one of the catalog's columns."""
    rows = [row for split_rows in splits.values() for row in split_rows]
    if not rows:  # nothing to check (an empty split is the caller's error to give)
        return
    columns = [column for column in columns_of(rows) if column != "image"]  # (the image the loader resolved)
    if caption_column:
        require_column(caption_column, columns, source, "caption column")
        return
    missing = [name for name in template_columns(caption_template) if name not in columns]
    if missing:
        raise ValueError(f"The caption template {caption_template!r} uses column(s) {', '.join(map(repr, missing))} "
                         f"that {source!r} does not have; its columns are: {', '.join(map(repr, columns))}.")


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


CATALOG_FILE_SUFFIXES = (".csv", ".jsonl", ".json")


def load_table(path: Path, streaming: bool = False):
    """
    A .csv/.jsonl/.json catalog file read by datasets' csv/json builder, as one split: a Dataset in memory, or with
    `streaming` an IterableDataset that reads the file as it is iterated; None when the file holds no rows. A CSV's
    cells are all text, as the file holds them ("007" stays "007", "NA" and empty cells stay as they are): pandas'
    guesses would turn ids into numbers and blank cells into None. The Arrow files datasets writes go to a temp folder
    removed at once: datasets' cache takes a local file to be unchanged while its mtime is, and a catalog rewritten
    within the file system's timestamp tick (or copied with its mtime) would be read stale.
    """
    import datasets
    import pandas
    import pyarrow

    suffix = path.suffix.lower()
    if suffix not in CATALOG_FILE_SUFFIXES:
        raise ValueError(f"Unsupported catalog file {str(path)!r}: use .csv, .jsonl or .json.")
    if path.stat().st_size == 0:
        return None
    builder = "csv" if suffix == ".csv" else "json"
    try:
        options = csv_options(path) if builder == "csv" else {}
        load = lambda **more: datasets.load_dataset(builder, data_files=str(path), split="train", **options, **more)  # noqa: E731
        with tempfile.TemporaryDirectory(prefix="moda-catalog-") as cache_dir:
            # A file without rows: datasets' builders build no split of it, and say so only as "no data".
            if next(iter(load(streaming=True, cache_dir=cache_dir)), None) is None:
                return None
            if not streaming:
                return load(cache_dir=cache_dir, keep_in_memory=True)
        return load(streaming=True)
    except (datasets.exceptions.DatasetGenerationError, pyarrow.ArrowException, pandas.errors.ParserError,
            UnicodeDecodeError) as err:
        raise ValueError(f"Catalog file {str(path)!r} cannot be read as {builder.upper()}: {err}") from err


def csv_options(path: Path) -> dict:
    """load_dataset's options that read every cell of a CSV as the text it holds (its header names the columns)."""
    import datasets
    import pandas

    columns = pandas.read_csv(path, nrows=0).columns
    return {"features": datasets.Features({column: datasets.Value("string") for column in columns}),
            "keep_default_na": False}


def read_table(path: Path) -> list:
    """The rows of a .csv/.jsonl/.json catalog file (load_table), as dicts."""
    table = load_table(path)
    return [] if table is None else table.to_list()


def resolved_rows(rows, base: Path, image_column: str, source: str):
    """Yields each row with its image column resolved against `base` (`image`: a path, a URL or None) and its
    location `_where`; rows keep all their metadata. `rows` may be a stream: they are read one at a time."""
    for i, row in enumerate(rows):
        if i == 0:
            require_column(image_column, columns_of([row]), source, "image column")
        row = dict(row)
        name = row.get(image_column)
        row["_where"] = f"{source} row {i + 2 if source.endswith('.csv') else i + 1}"
        if name in (None, ""):
            row["image"] = None
        elif is_url(name):
            row["image"] = name  # not a path under `base`
        else:
            path = Path(name)
            row["image"] = str(path if path.is_absolute() else base / path)
        yield row


def rows_with_image_paths(rows: list, base: Path, image_column: str, source: str) -> list:
    """`resolved_rows` as a list."""
    return list(resolved_rows(rows, base, image_column, source))


def table_rows(path: Path, base: Path, image_column: str, streaming: bool = False):
    """The resolved rows of a catalog file: a list, or with `streaming` an iterator that reads them as they come."""
    table = load_table(path, streaming)
    if table is None:
        table = []
    elif not streaming:
        table = table.to_list()  # at once: a Dataset gives its rows one by one many times slower
    rows = resolved_rows(table, base, image_column, str(path))
    return rows if streaming else list(rows)


def load_imagefolder(root: Path, streaming: bool = False) -> dict:
    """
    An imagefolder's rows per split: each split folder's metadata.csv (or the folder's own, as "train"), its
    file_name column resolved against the metadata's folder. Not datasets' imagefolder builder: it refuses the whole
    catalog at the first file_name with ".." (build-dataset names that row as a bad row and goes on), guesses the
    metadata's column types, and lists every image file in the folder.
    """
    tables = {split_dir.name: split_dir / "metadata.csv"
              for split_dir in sorted(p for p in root.iterdir() if p.is_dir() and (p / "metadata.csv").exists())}
    if not tables and (root / "metadata.csv").exists():
        tables["train"] = root / "metadata.csv"
    return {split: table_rows(table, table.parent, "file_name", streaming) for split, table in tables.items()}


def _load_hub_dataset(name: str, image_column: str, streaming: bool = False) -> dict:
    import datasets

    try:
        loaded = datasets.load_dataset(name, streaming=streaming)
    except (ConnectionError, FileNotFoundError) as err:  # offline, unreachable, or no such dataset
        raise FileNotFoundError(f"Catalog {name!r} not found: there is no local file or folder of that name, and no "
                                f"Hub dataset of that name could be loaded ({type(err).__name__}: {err})") from err
    splits = {}
    for split, dataset in loaded.items():
        if dataset.column_names is not None:  # (a stream may not know its columns before it is read)
            require_column(image_column, dataset.column_names, f"{name}[{split}]", "image column")
        if dataset.features is not None:  # images stay undecoded: image_io_moda decodes them, under its limits
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        rows = hub_rows(dataset, f"{name}[{split}]", image_column)
        splits[split] = rows if streaming else list(rows)
    return splits


def hub_rows(dataset, where: str, image_column: str):
    """Yields a Hub dataset split's rows, each with its `image` (hub_image) and its location `_where`."""
    for i, row in enumerate(dataset):
        if i == 0:
            require_column(image_column, list(row), where, "image column")
        row["_where"] = f"{where} row {i}"
        row["image"] = hub_image(row.pop(image_column, None), row["_where"])
        yield row


def hub_image(image, where: str):
    """
    A Hub dataset's image cell (read with decode=False) -> its bytes, an http(s) URL, or the path of a file that
    datasets downloaded into the Hugging Face caches. Any other path is refused (ValueError naming the row): a
    dataset's cells may name any path, and a catalog must not make MODA read local files it never downloaded.
    """
    import datasets
    from huggingface_hub import constants

    if not isinstance(image, dict):
        return image
    if image.get("bytes"):
        return image["bytes"]
    path = image.get("path")
    if not path or is_url(path):
        return path
    for cache in (datasets.config.HF_DATASETS_CACHE, constants.HF_HUB_CACHE):
        try:
            return str(confined_source(cache, path, "image"))
        except ValueError:
            continue
    raise ValueError(f"{where}: its image names the local path {path!r}, outside the Hugging Face caches that the "
                     "dataset was downloaded into; a Hub dataset's images must be bytes, URLs or downloaded files")


def read_splits(source: str, image_column: str = "image", streaming: bool = False) -> dict:
    """
    A catalog's rows as {split: [row, ...]}, as its source holds them: an imagefolder directory (split folders with
    metadata.csv, or a single metadata.csv; {} when it has none), a .csv/.jsonl/.json file with an image column (one
    "train" split, paths relative to the file), or a Hub dataset name. With `streaming`, each split is an iterator
    that reads its rows as they are taken (datasets' streaming mode), for catalogs that do not fit in memory.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return load_imagefolder(path, streaming)
    if path.is_file():
        return {"train": table_rows(path, path.parent, image_column, streaming)}
    if looks_like_a_path(source):
        raise FileNotFoundError(f"Catalog not found: no file or folder {source!r}")
    require_hub_id(source)
    return _load_hub_dataset(source, image_column, streaming)


def read_catalog_splits(source: str, image_column: str = "image") -> dict:
    """`read_splits`, where a folder without metadata.csv is an error."""
    splits = read_splits(source, image_column)
    if not splits:
        raise ValueError(f"{source!r} holds no metadata.csv (imagefolder layout: <split>/metadata.csv + images).")
    return splits


def require_hub_id(source: str) -> None:
    """A name that is neither an existing path nor a valid Hub id ("name" or "owner/name") is a mistyped path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError as err:
        raise FileNotFoundError(f"Catalog not found: {source!r} is neither a local file or folder nor a valid Hub "
                                "dataset id ('name' or 'owner/name')") from err


def load_catalog(dataset: str, image_column: str = "image", validation_fraction: float = 0.1, seed: int = 0) -> dict:
    """
    Loads a catalog as {split: [row, ...]}. `dataset` is an imagefolder directory (split folders with metadata.csv,
    or a single metadata.csv), a .csv/.jsonl/.json file with an image column (paths relative to the file), or a Hub
    dataset name. A validation split is carved out of train (deterministically) when there is none.
    """
    splits = read_catalog_splits(dataset, image_column)
    if "train" not in splits:
        raise ValueError(f"{dataset!r} has no train split (found {sorted(splits)}).")
    if "validation" not in splits:
        splits = split_off_validation(splits, validation_fraction, seed)
    return splits


def sample_rows(rows: list, limit: int = None, seed: int = 0) -> list:
    """
    At most `limit` of the rows, drawn at random (seeded) and kept in their order: a catalog file is often grouped
    (fashion-images' train split starts with Girls' items), so its first rows would be a skewed sample.
    """
    if limit is None or limit >= len(rows):
        return list(rows)
    chosen = sorted(row_numbers(len(rows)).shuffle(seed=seed).select(range(limit)).to_dict()["row"])
    return [rows[i] for i in chosen]


def row_numbers(count: int):
    """A datasets.Dataset of the numbers 0..count-1 (column "row"): datasets' shuffle, select and train_test_split
    choose among a list's rows through it, whatever the rows hold (image bytes, mixed types)."""
    import datasets

    return datasets.Dataset.from_dict({"row": range(count)})


def split_off_validation(splits: dict, fraction: float, seed: int) -> dict:
    """A random `fraction` of train (seeded; at least one row) as the validation split, by datasets' train_test_split."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be between 0 and 1, got {fraction}.")
    train = splits["train"]
    if not train:  # nothing to split: the caller says the catalog has no training rows
        return {**splits, "validation": []}
    if len(train) < 2:
        raise ValueError(f"A validation split cannot be carved out of {len(train)} train row(s): give a catalog with "
                         "a validation split, or more rows.")
    parts = row_numbers(len(train)).train_test_split(test_size=fraction, seed=seed)
    return {**splits, "train": [train[i] for i in parts["train"].to_dict()["row"]],
            "validation": [train[i] for i in parts["test"].to_dict()["row"]]}


# --qa_from_metadata's questions, by attribute: asked of the catalog's own column for it (moda.data.attributes.columns_for:
# Colour in Myntra's catalog, baseColour in the small one).
QUESTIONS = {
    "colour": "What colour is this item?",
    "product_type": "What kind of product is this?",
    "gender": "Who is this item for?",
    "usage": "What is this item for?",
}


def question_columns(rows: list) -> dict:
    """{column: question} for the QUESTIONS attributes whose column the rows have."""
    try:
        columns = columns_for(columns_of(rows))
    except ValueError:  # none of the known attribute columns: nothing to ask about (train_hf.py says so)
        return {}
    return {columns[attribute]: question for attribute, question in QUESTIONS.items() if attribute in columns}


def examples_from_rows(rows: list, bad_rows: BadRows, caption_column=None, caption_template=MODA_CAPTION_TEMPLATE,
                       qa_from_metadata: bool = False) -> list:
    """
    One training example per usable row: {"image", "prompt": None, "description", "row"}; with `qa_from_metadata`,
    also one (image, question, answer) example per QUESTIONS attribute that the row has a value for.
    """
    questions = question_columns(rows) if qa_from_metadata else {}
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
        for column, question in questions.items():
            answer = str(row.get(column) or "").strip()
            if answer:
                examples.append({"image": row["image"], "prompt": question, "description": answer, "row": row})
    return examples
