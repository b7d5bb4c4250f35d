"""`moda caption`: describe a whole catalog, batched, resumable and sharded over processes.

    moda caption --model ./moda-demo --images catalog/ --output captions.jsonl       # or .csv / .parquet
    torchrun --nproc_per_node 4 -m moda.cli caption --model ... --images ... --output captions.jsonl

One output row per catalog item: `id`, `file`, `description`, `descriptions` ({prompt: text}, "" for no prompt) and
`attributes` (when an attribute vocabulary is known), or `error` for an item that could not be read.

How a run survives being killed: every finished batch is written to its own part file in `<output>.parts/`
(temp file, fsync, atomic rename), and a restart skips the ids those parts already hold. When every item is done,
rank 0 merges the parts (and the rows of an earlier finished output) into the output through a temp file and
`os.replace`, then removes the parts. Under torchrun / accelerate launch, accelerate's PartialState splits the items
between the processes (split_between_processes: contiguous shares) and has them wait for each other before the merge.
With `--streaming`, the catalog is read as its rows arrive (datasets' streaming mode) and batches are captioned as
they fill; process r then takes every world_size-th item, from the r-th on (a stream has no length to split).

One run at a time on an output: rank 0 holds an exclusive lock on `<output>.lock` (moda.io.locks) for the whole run,
and a second run on the same output is refused at once, naming the PID that holds it; rank r > 0 holds its shard's
lock.
"""

import contextlib
import datetime
import itertools
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from moda.data.catalog import read_splits
from moda.evaluate.describe import describe_inputs
from moda.io.images import IMAGE_EXTENSIONS, image_files, load_image
from moda.io.locks import exclusive_lock
from fast_generation_moda import inference_dtype, precision_name
from image_io_moda import is_url
from moda.io.paths import write_atomically
from moda.io.prefetch import prefetched
from moda.io.records import check_or_save_settings, jsonl_bytes, read_jsonl
from moda.model.loading import check_model_code

ID_COLUMNS = ("id", "ProductId")
OUTPUT_FORMATS = (".jsonl", ".csv", ".parquet")
# Columns of the output that hold structures; CSV and Parquet store them as JSON text.
STRUCTURED_COLUMNS = ("descriptions", "attributes")
# What a settings file written before a setting existed stands for: every earlier run was fp32.
SETTINGS_BEFORE_THEY_WERE_RECORDED = {"precision": "fp32"}
# Test hook: SIGKILL this process after it has written this many part files (a real kill, at a known point).
KILL_AFTER_PARTS_ENV = "MODA_CAPTION_KILL_AFTER_PARTS"


# ---------------------------------------------------------------------------------------------------------------
# The catalog: which images to describe (to merge with moda/data/catalog.py's loaders, whose readers it reuses).
# ---------------------------------------------------------------------------------------------------------------

def list_catalog_items(source: str, image_column: str = "image", split: str = None) -> list:
    """
    The items to caption, in a fixed order, as dicts {id, file, image, row}: `image` is a path or raw bytes,
    `row` the item's catalog metadata. `source` is a directory of images (searched recursively), an imagefolder
    (metadata.csv at the top or in split folders: every split is taken, or only `split`), a .csv/.jsonl/.json file
    with an `image_column`, or a Hub dataset name. Ids come from an `id`/`ProductId` column, else the image's path.
    """
    rows = list(catalog_rows(source, image_column, split=split))
    if not rows:  # a table with a header only: an empty output would say nothing about why
        raise ValueError(f"{source!r} lists no items: its catalog table has no rows.")
    return list(items_from_rows(rows, catalog_base(source), source, id_column_of(rows)))


def stream_catalog_items(source: str, image_column: str = "image"):
    """
    list_catalog_items' items, read as they arrive (datasets' streaming mode), for a catalog that does not fit in
    memory. The id column is the first row's (`id`, else `ProductId`, else none: ids from paths); a later row without
    it, or with one where the first row had none, stops the stream with an error naming that row.
    """
    rows = catalog_rows(source, image_column, streaming=True)
    first = next(rows, None)
    if first is None:
        raise ValueError(f"{source!r} lists no items: its catalog table has no rows.")
    id_column = next((c for c in ID_COLUMNS if first.get(c) not in (None, "")), None)
    yield from items_from_rows(itertools.chain([first], rows), catalog_base(source), source, id_column)


def catalog_rows(source: str, image_column: str, streaming: bool = False, split: str = None):
    """Every split's rows (or only `split`'s), one after another; a plain folder of images gives one row per image
    file."""
    splits = read_splits(source, image_column, streaming)
    if split is not None:
        if split not in splits:
            raise ValueError(f"{source!r} has no {split!r} split (it has {', '.join(sorted(splits)) or 'none'}).")
        splits = {split: splits[split]}
    if Path(source).is_dir() and not splits:  # a plain folder of images
        splits = {"images": _image_files_as_rows(Path(source))}
        if not splits["images"]:
            raise ValueError(f"{source!r} holds no images (looked for {sorted(IMAGE_EXTENSIONS)}) and no metadata.csv.")
    return itertools.chain.from_iterable(splits.values())


def catalog_base(source: str):
    """The folder that images' ids are relative to: the catalog folder, a table's folder, or None (a dataset)."""
    path = Path(source)
    return path if path.is_dir() else path.parent if path.is_file() else None


def _image_files_as_rows(root: Path) -> list:
    return [{"image": str(p), "_where": str(p)} for p in image_files(root)]


def id_column_of(rows: list):
    """The first of ID_COLUMNS that every row fills, or None; one that only some rows fill is an error."""
    id_column = next((c for c in ID_COLUMNS if rows and all(row.get(c) not in (None, "") for row in rows)), None)
    partly_filled = next((c for c in ID_COLUMNS if any(row.get(c) not in (None, "") for row in rows)), None)
    if id_column is None and partly_filled:  # ids from paths instead would change every item's id, not just this one's
        lacking = [row for row in rows if row.get(partly_filled) in (None, "")]
        raise ValueError(f"{lacking[0]['_where']} has no {partly_filled!r} ({len(lacking)} row(s) like it) while other "
                         "rows have one; give every item an id.")
    return id_column


def items_from_rows(rows, base, source: str, id_column):
    """Yields an item per row, its id from `id_column` (every row must fill it) or, with None, from its image."""
    seen = {}
    for i, row in enumerate(rows):
        image = row.get("image")
        file = image if isinstance(image, str) else row.get("file_name") or row["_where"]
        if isinstance(image, str) and not is_url(image):
            file = os.path.abspath(image)  # the output is read from other folders too (moda index, the app)
        filled = next((c for c in ID_COLUMNS if row.get(c) not in (None, "")), None)
        if id_column and row.get(id_column) in (None, ""):  # (a stream's rows: a list is checked whole first)
            raise ValueError(f"{row['_where']} has no {id_column!r} while other rows have one; give every item an id.")
        if not id_column and filled:
            raise ValueError(f"{row['_where']} fills {filled!r} while the first row has none; give every item an id.")
        if id_column:
            item_id = str(row[id_column])
        elif is_url(image):
            item_id = image
        elif isinstance(image, str) and base is not None:
            item_id = os.path.relpath(image, base)
        else:
            item_id = str(i)
        if item_id in seen:
            raise ValueError(
                f"{source!r}: id {item_id!r} is used twice ({seen[item_id]} and {row['_where']}); ids must be unique."
            )
        seen[item_id] = row["_where"]
        metadata = {k: v for k, v in row.items() if k not in ("image", "_where")}
        yield {"id": item_id, "file": str(file), "image": image, "row": metadata}


# ---------------------------------------------------------------------------------------------------------------
# Describing a batch
# ---------------------------------------------------------------------------------------------------------------

def merge_descriptions(descriptions: dict) -> str:
    """One description from several prompts' answers: the distinct non-empty ones, in prompt order."""
    distinct = []
    for text in descriptions.values():
        if text and text not in distinct:
            distinct.append(text)
    return ". ".join(distinct)


def prepare_batch(processor, items: list, prompts: list, stopping: threading.Event = None) -> tuple:
    """A batch's work before the model: its output rows (an unreadable item's with an `error`), the rows of the
    readable ones, and per prompt the processor's inputs for their images. It runs in moda caption's background
    thread, for the next batch while the model describes this one; once `stopping` is set (the run ends: Ctrl-C, an
    error), it reads no further item (a batch of URLs could take minutes) and returns None."""
    rows, readable, images = [], [], []
    for item in items:
        if stopping is not None and stopping.is_set():
            return None
        row = {"id": item["id"], "file": item["file"]}
        try:
            images.append(load_image(item["image"], item["file"]))
            readable.append(row)
        except (OSError, ValueError) as err:
            row["error"] = str(err)
        rows.append(row)
    try:  # (a batch of unreadable items only has nothing to describe)
        inputs = {prompt: processor(images=images, text=prompt or None, return_tensors="pt")
                  for prompt in (prompts if images else [])}
    except Exception as err:  # raised again in the main thread: say which items it was preparing
        if hasattr(err, "add_note"):  # Python 3.11+; 3.10 shows the error alone
            err.add_note(f"while preparing the batch of items {items[0]['id']!r} to {items[-1]['id']!r}")
        raise
    return rows, readable, inputs


def describe_batch(captioner, prepared: tuple, vocabulary=None, max_new_tokens: int = None) -> list:
    """The output rows of a prepared batch (prepare_batch's): the readable items described per prompt."""
    rows, readable, inputs = prepared
    per_prompt = {prompt: describe_inputs(captioner.model, captioner.processor, batch_inputs, max_new_tokens)
                  for prompt, batch_inputs in inputs.items()}
    for i, row in enumerate(readable):
        row["descriptions"] = {prompt: texts[i] for prompt, texts in per_prompt.items()}
        row["description"] = merge_descriptions(row["descriptions"])
        if vocabulary is not None:
            from moda.data.attributes import extract_attributes

            row["attributes"] = extract_attributes(row["description"], vocabulary)
    return rows


def attribute_vocabulary(rows: list, source: str):
    """The attribute vocabulary of catalog rows, or None (with a note) when they have no attribute columns."""
    from moda.data.attributes import AttributeVocabulary

    try:
        return AttributeVocabulary.from_rows(rows)
    except ValueError as err:
        print(f"moda caption: no attributes per item ({source}: {err})", file=sys.stderr)
        return None


def catalog_vocabulary(source: str, image_column: str = "image", streaming: bool = False):
    """The attribute vocabulary of the catalog at `source` (moda caption --vocabulary, app.py), or None. Only its
    attribute columns are read: item ids and images play no part (nor kept: with `streaming`, only the rows'
    metadata is ever held)."""
    splits = read_splits(source, image_column, streaming)
    rows = [{k: v for k, v in row.items() if k != "image"} for split in splits.values() for row in split]
    if not rows:
        raise ValueError(f"{source!r} lists no items to take attribute values from.")
    return attribute_vocabulary(rows, source)


# ---------------------------------------------------------------------------------------------------------------
# Output: part files, reading back, the atomic merge
# ---------------------------------------------------------------------------------------------------------------

def parts_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def finished_parts(parts_dir: Path) -> list:
    """The part files a run has completed (temp files of a killed write are not parts)."""
    return sorted(parts_dir.glob("part-*.jsonl")) if parts_dir.is_dir() else []


def next_part_number(parts_dir: Path, rank: int) -> int:
    numbers = [int(p.stem.split("-")[2]) for p in parts_dir.glob(f"part-{rank:05d}-*.jsonl")]
    return max(numbers, default=-1) + 1


def table_columns(rows: list) -> list:
    columns = ["id", "file", "description", "descriptions", "attributes", "error"]
    present = {key for row in rows for key in row}
    return [c for c in columns if c in present] + sorted(present - set(columns))


def write_output(path: Path, rows: list) -> None:
    """Writes rows as JSONL, CSV or Parquet (by extension), atomically; structures become JSON text in tables."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        write_atomically(path, lambda handle: handle.write(jsonl_bytes(rows)))
        return
    import pandas as pd

    columns = table_columns(rows)
    flat = [
        {c: json.dumps(row[c], ensure_ascii=False) if c in STRUCTURED_COLUMNS and c in row else row.get(c)
         for c in columns}
        for row in rows
    ]
    frame = pd.DataFrame(flat, columns=columns)
    if suffix == ".csv":
        write_atomically(path, lambda handle: handle.write(frame.to_csv(index=False).encode("utf-8")))
    else:
        write_atomically(path, lambda handle: frame.to_parquet(handle, index=False))


def read_output(path: Path) -> list:
    """Rows of a JSONL, CSV or Parquet captions file (JSON text columns decoded, empty cells left out)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"Unsupported captions file {str(path)!r}: use {', '.join(OUTPUT_FORMATS)}.")
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False) if suffix == ".csv" else pd.read_parquet(path)
    rows = []
    for record in frame.to_dict("records"):
        row = {k: v for k, v in record.items() if v is not None and v == v and v != ""}
        for column in STRUCTURED_COLUMNS:
            if column in row:
                row[column] = json.loads(row[column])
        rows.append(row)
    return rows


def merge_rows(ids: list, sources: list) -> list:
    """
    One row per catalog item (`ids`, in catalog order) from row lists (earlier output, parts). A missing item is an
    error: the merge runs only once every shard is done.
    """
    by_id = {}
    for rows in sources:
        for row in rows:
            by_id.setdefault(str(row["id"]), row)
    missing = [item_id for item_id in ids if item_id not in by_id]
    if missing:
        raise RuntimeError(f"Cannot merge: {len(missing)} item(s) have no row yet, e.g. {missing[:5]}.")
    return [by_id[item_id] for item_id in ids]


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------

def process_state(args):
    """accelerate's PartialState: under torchrun / accelerate launch it joins the processes' group (gloo without CUDA)."""
    from accelerate import PartialState

    # A long catalog shard can take hours: waiting for everyone before the merge must wait for the slowest process.
    return PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available(), timeout=datetime.timedelta(hours=24))


def run_settings(args, precision: str) -> dict:
    """What a resumed run must share with the run that wrote the parts. The vocabulary is among them: the attributes
    of rows from two vocabularies would not be comparable in one output; so is the precision the model runs in
    (`precision`: "fp32" or "bf16", what --precision means on this device), since bf16's captions may differ."""
    return {"model": args.model, "revision": args.revision, "images": args.images, "prompts": args.prompts,
            "max_new_tokens": args.max_new_tokens, "vocabulary": args.vocabulary, "precision": precision}


def settings_file_for(output: Path) -> Path:
    """Where a finished output keeps the settings that wrote it (next to it), so a later run can reuse its rows."""
    return output.with_name(f"{output.name}.run.json")


def prepare_parts_dir(output: Path, parts_dir: Path, settings: dict, overwrite: bool) -> None:
    """Rank 0, before the others start: a fresh or resumable parts folder holding the run's settings."""
    if overwrite:
        shutil.rmtree(parts_dir, ignore_errors=True)
        output.unlink(missing_ok=True)
        settings_file_for(output).unlink(missing_ok=True)
    for leftover in output.parent.glob(f"{parts_dir.name}.done-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # a merged run killed while cleaning up
    parts_dir.mkdir(parents=True, exist_ok=True)

    def other_settings(earlier: dict) -> str:
        precision = earlier.get("precision")
        hint = f" (it ran in {precision}: --precision {precision})" if precision != settings["precision"] else ""
        return (f"{str(parts_dir)!r} holds an unfinished run with other settings ({earlier}); run with the same "
                f"settings{hint} to resume it, or pass --overwrite to start again.")

    check_or_save_settings(parts_dir / "run.json", settings, other_settings,
                           unrecorded=SETTINGS_BEFORE_THEY_WERE_RECORDED)
    for temp in parts_dir.glob(".*.tmp-*"):
        temp.unlink()  # a batch whose write was killed (this run holds the output's lock): captioned again


def earlier_output_rows(output: Path, settings: dict) -> list:
    """
    Rows of a finished earlier output, reused when the catalog has grown: they must come from the same model,
    revision, prompts, max_new_tokens and vocabulary (its settings file says; the catalog's path may differ). An
    output written before settings files were kept is checked by its prompts alone.
    """
    if not output.exists():
        return []
    settings_file = settings_file_for(output)
    if settings_file.exists():
        earlier = {**SETTINGS_BEFORE_THEY_WERE_RECORDED, **json.loads(settings_file.read_text())}
        differ = sorted(key for key in settings if key != "images" and earlier.get(key) != settings[key])
        if differ:
            raise ValueError(
                f"{str(output)!r} was written with other {', '.join(differ)} "
                f"({ {key: earlier.get(key) for key in differ} }): pass --overwrite to caption again."
            )
    rows = read_output(output)
    prompts = settings["prompts"]
    for row in rows:
        if "descriptions" in row and sorted(row["descriptions"]) != sorted(prompts):
            raise ValueError(
                f"{str(output)!r} was written with prompts {sorted(row['descriptions'])}, not {sorted(prompts)}: "
                f"pass --overwrite to caption again."
            )
    return rows


def caption_shard(prepare, items, parts_dir: Path, rank: int, args, total: int = None) -> int:
    """Captions this rank's items (a list or a stream) in batches, one part file per batch; returns how many it
    described. prepare() gives the captioner and the attribute vocabulary, at the first batch: only when there is
    work (a stream's length is known only once it ends)."""
    from tqdm.auto import tqdm

    kill_after = int(os.environ.get(KILL_AFTER_PARTS_ENV, "0"))
    number = next_part_number(parts_dir, rank)
    written = described = 0
    items = iter(items)
    batches = iter(lambda: list(itertools.islice(items, args.batch_size)), [])
    first = next(batches, None)
    if first is None:
        return 0
    captioner, vocabulary = prepare()
    # The next batch is read, decoded and preprocessed in a background thread while the model describes this one.
    stopping = threading.Event()
    prepared_batches = prefetched(itertools.chain([first], batches),
                                  lambda batch: prepare_batch(captioner.processor, batch, args.prompts, stopping),
                                  stopping)
    with tqdm(total=total, unit="item", desc=f"captioning (rank {rank})", dynamic_ncols=True) as progress, \
            contextlib.closing(prepared_batches):
        for prepared in prepared_batches:
            rows = describe_batch(captioner, prepared, vocabulary, args.max_new_tokens)
            part = parts_dir / f"part-{rank:05d}-{number:06d}.jsonl"
            write_atomically(part, lambda handle: handle.write(jsonl_bytes(rows)))
            number, written, described = number + 1, written + 1, described + len(rows)
            progress.update(len(rows))
            if kill_after and written >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    return described


def finish(ids: list, output: Path, parts_dir: Path, earlier_rows: list, settings: dict) -> list:
    """The main process: merges earlier output and parts into the output atomically, then removes the parts."""
    sources = [earlier_rows] + [read_jsonl(part) for part in finished_parts(parts_dir)]
    rows = merge_rows(ids, sources)
    # The settings first: a run killed in between leaves settings that the parts folder (still there) also holds.
    write_atomically(settings_file_for(output), lambda handle: handle.write(json.dumps(settings).encode("utf-8")))
    write_output(output, rows)
    done_dir = parts_dir.with_name(f"{parts_dir.name}.done-{os.getpid()}")
    os.replace(parts_dir, done_dir)  # one atomic step: a rerun never sees half-removed parts
    shutil.rmtree(done_dir)
    return rows


def output_lock(output: Path, rank: int):
    """
    The lock a rank holds for the whole run: rank 0 the output's (a second run on the output is refused at once),
    rank r > 0 its shard's, `<output>.rank-r` (the ranks of one run share the output; a rank r left running by a
    killed run still keeps the next run's rank r from writing its parts).
    """
    if rank == 0:
        return exclusive_lock(output, f"--output {output}")
    shard = output.with_name(f"{output.name}.rank-{rank:05d}")
    return exclusive_lock(shard, f"rank {rank}'s shard of --output {output}")


def caption_catalog(args) -> int:
    """moda caption's work: every item of the catalog that the output lacks, in parts, then one atomic merge."""
    # Before anything is written (or a process group joined): a model that needs its own code is refused without
    # leaving a parts folder behind.
    check_model_code(args.model, args.revision, args.trust_remote_code)
    state = process_state(args)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(output, state.process_index):  # before anything is read: another run may be merging the output
        caption_locked(args, output, state)
    state.destroy_process_group()
    return 0


def caption_locked(args, output: Path, state) -> None:
    """caption_catalog's work, while this process holds its lock."""
    rank = state.process_index
    parts_dir = parts_dir_for(output)
    items = None if args.streaming else list_catalog_items(args.images, args.image_column)
    device = args.device or str(state.device)
    precision = precision_name(inference_dtype(args.precision, device))
    settings = run_settings(args, precision)
    # Checked before anything is written: a refused run leaves no parts folder behind.
    earlier_rows = [] if args.overwrite else earlier_output_rows(output, settings)
    # Items unreadable last time are read again: their files may have been fixed since.
    retried = [row for row in earlier_rows if "error" in row]
    earlier_rows = [row for row in earlier_rows if "error" not in row]
    if retried and state.is_main_process:
        print(f"reading {len(retried)} item(s) again that were unreadable last time", file=sys.stderr)
    if state.is_main_process:
        prepare_parts_dir(output, parts_dir, settings, args.overwrite)
    state.wait_for_everyone()

    done = {str(row["id"]) for row in earlier_rows}
    done |= {str(row["id"]) for part in finished_parts(parts_dir) for row in read_jsonl(part)}
    if args.streaming:
        everyone = stream_catalog_items(args.images, args.image_column)
        shard = (item for item in itertools.islice(everyone, rank, None, state.num_processes) if item["id"] not in done)
        total = None
    else:
        with state.split_between_processes([item for item in items if item["id"] not in done]) as shard:
            total = len(shard)

    def prepare():
        from moda.model.loading import load_captioner

        if args.vocabulary is not None:
            vocabulary = catalog_vocabulary(args.vocabulary, args.image_column)
        elif items is not None:
            vocabulary = attribute_vocabulary([item["row"] for item in items], args.images)
        else:  # a stream: its attribute values come from a first pass over its rows' metadata
            vocabulary = catalog_vocabulary(args.images, args.image_column, streaming=True)
        captioner = load_captioner(args.model, revision=args.revision, device=device,
                                   trust_remote_code=args.trust_remote_code, precision=precision)
        return captioner, vocabulary

    started = time.perf_counter()
    described = caption_shard(prepare, shard, parts_dir, rank, args, total)
    if described:
        seconds = time.perf_counter() - started
        print(f"rank {rank}: described {described} item(s) in {seconds:.1f}s ({described / seconds:.1f} items/s, "
              f"{precision})", file=sys.stderr)
    state.wait_for_everyone()

    if state.is_main_process:
        catalog = items if items is not None else stream_catalog_items(args.images, args.image_column)
        rows = finish([item["id"] for item in catalog], output, parts_dir, earlier_rows, settings)
        errors = [row for row in rows if "error" in row]
        print(f"wrote {len(rows)} row(s) to {output}: {len(rows) - len(errors)} described, "
              f"{len(errors)} unreadable")
        for row in errors[:10]:
            print(f"  unreadable {row['id']}: {row['error']}")
    state.wait_for_everyone()
