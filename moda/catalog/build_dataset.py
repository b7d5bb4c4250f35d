"""`moda build-dataset`: training descriptions written by teacher models (the MODA write-up's data pipeline).

    moda build-dataset --dataset ../shared/data/fashion-images/train --output_dir described          # offline
    moda build-dataset --dataset photos/ --metadata items.csv --output_dir described \\
        --teacher_model microsoft/Phi-3-vision-128k-instruct --refiner_model microsoft/Phi-3-mini-4k-instruct \\
        --trust_remote_code

Per item: a teacher vision-language model (any transformers image-text-to-text model) answers the write-up's prompt
with JSON (gender, category, colour, usage); a refiner LLM (any text-generation model) merges that answer with the
item's metadata and leaves out text read off the item (brands, printed words); a deterministic filter then removes
brand names and printed words the refiner left in. Without a teacher (the default) the description is composed from
the metadata alone (`template_description`). When the models give nothing usable, the template description is used
and the row says why.

The output is an imagefolder that `datasets.load_dataset("imagefolder", data_dir=...)` and
`train_hf.py --dataset <output_dir> --caption_column description` read: `metadata.csv` (the input's columns, then
description, description_source, teacher_model, refiner_model, error) and `images/` (hard links where possible,
else copies). description_source is "template", "teacher+refiner", "teacher" or "template-fallback"; teacher_model
names the teacher that was asked, refiner_model the refiner when it was asked; error says why an answer was not used.

Resuming: every finished item is appended to `progress.jsonl` (flushed and fsynced), and a restart skips the items
it holds; `metadata.csv` is written at the end through a temp file and `os.replace`. Items that cannot be used (no
image file, unreadable image, nothing to describe, a file_name that leads out of the output's images/ folder: absolute,
with ".." or through a symbolic link) are skipped and listed in `bad_rows.csv` (`--on_bad_row skip`),
or stop the run (`--on_bad_row fail`); they are tried again on the next run. One run at a time on an output folder:
a run holds an exclusive lock on `<output_dir>.lock` (moda.io.locks), and a second one is refused at once.
"""

import json
import os
import posixpath
import re
import shutil
import sys
from pathlib import Path, PurePosixPath

from moda.data.attributes import (MYNTRA_COLUMNS, SMALL_COLUMNS, SYNONYMS, AttributeVocabulary, columns_for,
                                  extract_attributes, is_missing, words)
from moda.data.catalog import (BadRowError, BadRows, columns_of, load_imagefolder, read_table, rows_with_image_paths,
                               sample_rows, without_location)
from moda.io.images import image_files, load_image
from moda.io.locks import exclusive_lock
from image_io_moda import is_url
from moda.io.paths import confined_path, confined_source, replacing_atomically, write_atomically
from moda.io.records import check_or_save_settings, csv_bytes, json_objects
from moda.model.text_generation import generated_text, load_text_generator

# The write-up's teacher prompt: the item only, not the person or any text on it, as JSON.
TEACHER_PROMPT = (
    "Describe only the fashion item in this image: who it is for (gender), what kind of item it is (category), "
    "its colour and its usage (e.g. casual, formal, sports, ethnic). Ignore the person wearing it and any text, "
    "logos or brand names printed on it. Answer only with JSON, for example: "
    '{"gender": "Men", "category": "shirt", "colour": "navy blue", "usage": "casual"}'
)
REFINER_INSTRUCTIONS = (
    "You write product descriptions for a fashion catalog. Combine the image model's description with the item's "
    "metadata into one or two plain sentences about the item: its colour, type, who it is for and its usage. Where "
    "they disagree, trust the metadata. Leave out brand names and any words or text printed on the item. "
    "Answer with the description only."
)
TEACHER_KEYS = ("gender", "category", "colour", "usage")
NEW_COLUMNS = ("description", "description_source", "teacher_model", "refiner_model", "error")
SOURCES = ("template", "teacher+refiner", "teacher", "template-fallback")
PROGRESS_FILE = "progress.jsonl"
SETTINGS_FILE = "build_settings.json"
BAD_ROWS_FILE = "bad_rows.csv"
# Test hook: the process exits at once (os._exit, like a kill) after appending this many items to the progress file.
EXIT_AFTER_ITEMS_ENV = "MODA_TEACHER_EXIT_AFTER_ITEMS"
# Raw model text kept in an error message, at most.
RAW_TEXT_CHARS = 200

# attribute -> column in the two catalog layouts (moda.data.attributes) and the teacher's JSON keys.
TEACHER_COLUMNS = {"gender": "gender", "product_type": "category", "colour": "colour", "usage": "usage"}
TITLE_COLUMNS = ("ProductTitle", "productDisplayName")
BRAND_COLUMNS = ("brand", "Brand", "brandName", "brand_name")
GENDER_WORDS = {"men", "women", "boys", "girls", "unisex", "kids", "man", "woman", "boy", "girl", "mens", "womens"}
# Words of a brand that are ordinary English and stay in a description ("Gini and Jony" drops Gini and Jony only).
COMMON_WORDS = {"and", "the", "of", "for", "by", "a", "an", "in", "on", "with", "&", "co", "new"}
# Colour words kept even in capitals ("a RED shirt"); the item's own metadata values are kept as well.
BASIC_COLOURS = {
    "black", "white", "grey", "gray", "red", "blue", "green", "yellow", "orange", "pink", "purple", "brown", "beige",
    "navy", "maroon", "olive", "gold", "silver", "cream", "tan", "khaki", "teal", "peach", "magenta", "lavender",
    "charcoal", "multi", "off", "turquoise", "copper", "bronze", "mustard", "rust", "burgundy", "mauve", "steel",
}


# ---------------------------------------------------------------------------------------------------------------
# Descriptions from attributes: the template (the offline mode, and the fallback)
# ---------------------------------------------------------------------------------------------------------------

def item_attributes(row: dict) -> dict:
    """
    The row's attribute values {attribute: value} (moda.data.attributes names: colour, usage, product_type, gender,
    category, subcategory), read from the Myntra columns (Colour, Usage, ProductType, Gender, Category, SubCategory)
    or the small set's (baseColour, usage, articleType, gender, masterCategory, subCategory); empty cells left out.
    """
    keys = [key for key in row if key in set(MYNTRA_COLUMNS.values()) | set(SMALL_COLUMNS.values())]
    if not keys:
        return {}
    columns = columns_for(keys)
    return {attribute: " ".join(str(row[column]).split()) for attribute, column in columns.items()
            if not is_missing(row.get(column))}


def template_description(attributes: dict) -> str:
    """
    A description composed from attribute values, deterministically:

        "{colour} {usage} {product_type} for {gender}. Category: {category}, {subcategory}."

    e.g. {"colour": "Navy Blue", "usage": "Casual", "product_type": "Shirts", "gender": "Men", "category":
    "Apparel", "subcategory": "Topwear"} -> "Navy Blue casual shirts for men. Category: Apparel, Topwear."
    The colour and the categories keep their case; usage, product type and gender are lower-cased, and Unisex is
    written "men and women". The usage is left out when the product type already says it ("Casual Shoes").
    A missing value is left out with its words ("for", "Category:"); without a product
    type the subcategory (lower-cased) names the item, else the word "item"; a subcategory equal to the category
    is written once. The first letter is capitalised. Raises BadRowError when no attribute is known.
    """
    if not any(attributes.get(name) for name in ("colour", "usage", "product_type", "gender", "category",
                                                  "subcategory")):
        raise BadRowError("no metadata to describe the item from (none of the colour, usage, product type, gender "
                          "or category columns has a value)")
    noun = (attributes.get("product_type") or attributes.get("subcategory") or "item").lower()
    usage = (attributes.get("usage") or "").lower()
    if usage and set(usage.split()) <= set(noun.split()):
        usage = ""  # "casual shoes", not "casual casual shoes"
    phrase = " ".join(part for part in (attributes.get("colour"), usage, noun) if part)
    gender = attributes.get("gender")
    if gender:
        phrase += " for " + ("men and women" if gender.lower() == "unisex" else gender.lower())
    sentence = phrase[0].upper() + phrase[1:] + "."
    categories = []
    for name in ("category", "subcategory"):
        value = attributes.get(name)
        if value and value.lower() not in (c.lower() for c in categories):
            categories.append(value)
    if categories:
        sentence += " Category: " + ", ".join(categories) + "."
    return sentence


# ---------------------------------------------------------------------------------------------------------------
# Reading model answers
# ---------------------------------------------------------------------------------------------------------------

def parse_teacher_answer(text: str) -> dict:
    """
    The teacher's JSON answer as {attribute: value} (keys of TEACHER_KEYS; "color" counts as "colour"): the first
    JSON object of the text that names one of the keys. Raises ValueError, quoting the text, when there is none.
    """
    objects = list(json_objects(text))
    for answer in objects:
        fields = _teacher_fields(answer)
        if fields:
            return fields
    if objects:
        raise ValueError(f"teacher JSON names none of {list(TEACHER_KEYS)}: {quote(text)}")
    raise ValueError(f"teacher answer has no JSON object: {quote(text)}")


def _teacher_fields(answer: dict) -> dict:
    fields = {}
    for key, value in answer.items():
        key = {"color": "colour"}.get(str(key).strip().lower(), str(key).strip().lower())
        if key in TEACHER_KEYS and isinstance(value, str) and not is_missing(value):
            fields[key] = " ".join(value.split())
    return fields


def quote(text: str) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= RAW_TEXT_CHARS else text[:RAW_TEXT_CHARS] + "...")


def teacher_attributes(fields: dict) -> dict:
    """The teacher's JSON fields under attribute names, for the template and the checks."""
    return {attribute: fields[key] for attribute, key in TEACHER_COLUMNS.items() if fields.get(key)}


def first_paragraph(text: str) -> str:
    """A model answer's first paragraph, on one line, without a leading "Description:" label."""
    paragraph = next((p for p in re.split(r"\n\s*\n", str(text).strip()) if p.strip()), "")
    return re.sub(r"^\s*(?:description|answer)\s*:\s*", "", " ".join(paragraph.split()), flags=re.IGNORECASE)


def check_description(description: str, known: dict, answer: str) -> str:
    """
    The description when it reads as one: at least three words, mostly made of letters, naming at least one of
    the item's known attribute values (so random text is not taken for a description). Else ValueError, quoting
    the model's `answer`.
    """
    tokens = description.split()
    wordlike = [t for t in tokens if re.fullmatch(r"[A-Za-z][A-Za-z'\-]*[.,;:!]?", t)]
    if len(wordlike) < 3 or len(wordlike) < 0.7 * len(tokens):
        raise ValueError(f"refiner answer is not a description: {quote(answer)}")
    vocabulary = AttributeVocabulary.from_values({attribute: [value] for attribute, value in known.items()})
    if not any(extract_attributes(description, vocabulary).values()):
        raise ValueError(f"refiner answer names none of the item's attributes {sorted(set(known.values()))}: "
                         f"{quote(answer)}")
    return description


# ---------------------------------------------------------------------------------------------------------------
# Leaving out text read off the item (brands, printed words)
# ---------------------------------------------------------------------------------------------------------------

def brand_names(row: dict) -> list:
    """
    Brand names the row gives: a brand column, and the words of a title (ProductTitle / productDisplayName) before
    its gender word ("Gini and Jony Girls Knit White Top" -> "Gini and Jony"), else the title's first word.
    """
    brands = [str(row[c]).strip() for c in BRAND_COLUMNS if not is_missing(row.get(c))]
    for column in TITLE_COLUMNS:
        title = row.get(column)
        if is_missing(title):
            continue
        title_words = str(title).split()
        gender_at = next((i for i, w in enumerate(title_words[:5]) if words(w) and words(w)[0] in GENDER_WORDS), None)
        brands.append(" ".join(title_words[:gender_at]) if gender_at else title_words[0])
    return [brand for brand in dict.fromkeys(brands) if brand]


def kept_words(attributes: dict) -> set:
    """Words never removed as brand or printed text: the item's attribute values and colour words."""
    keep = set(BASIC_COLOURS) | GENDER_WORDS
    for value in attributes.values():
        keep |= set(words(value))
    for canonical, synonyms in SYNONYMS["colour"].items():
        for name in [canonical] + synonyms:
            keep |= set(words(name))
    return keep


def remove_printed_text(text: str, brands: list, keep: set) -> str:
    """
    The text without what was read off the item: quoted text (with "with the text", "that reads" ... before it),
    the brand names (whole, then each uncommon word of them that is not in `keep`), and words in capitals of two
    or more letters that are not in `keep` ("NIKE", "JUST DO IT"). Then spaces and punctuation are tidied.
    """
    lead = r"(?:\s*(?:printed\s+)?(?:with|bearing)\s+(?:the\s+|a\s+)?(?:text|words?|slogan|logo|print|lettering)\s*|" \
           r"\s*that\s+(?:says|reads)\s*|\s*(?:reading|saying)\s*)?"
    text = re.sub(lead + r"[\"\u201c][^\"\u201d]*[\"\u201d]", "", text, flags=re.IGNORECASE)
    for brand in sorted(brands, key=len, reverse=True):
        if set(words(brand)) <= keep:
            continue  # a "brand" made of colour or item words ("Red") is not taken out of the description
        text = re.sub(rf"(?:\b(?:by|from)\s+)?\b{re.escape(brand)}(?:['\u2019]s)?\b", "", text, flags=re.IGNORECASE)
        for word in brand.split():
            plain = re.sub(r"['\u2019]s$", "", word)
            if len(plain) >= 3 and plain.lower() not in COMMON_WORDS and not set(words(plain)) <= keep:
                text = re.sub(rf"\b{re.escape(plain)}(?:['\u2019]s)?(?![\w'])", "", text, flags=re.IGNORECASE)

    def capitals(match):
        return match.group(0) if set(words(match.group(0))) <= keep else ""

    text = re.sub(r"\b[A-Z][A-Z0-9&'\-]*[A-Z0-9]\b", capitals, text)
    return tidy(text)


def tidy(text: str) -> str:
    text = re.sub(r"\(\s*\)", "", text)
    text = re.sub(r"\b(?:by|from)\s*(?=[.,;:]|$)", "", text, flags=re.IGNORECASE)  # "a shirt by ." after a brand
    text = re.sub(r"\s+([.,;:!])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    text = re.sub(r"[,;:]\s*\.", ".", text)
    text = " ".join(text.split()).strip(" ,;:")
    return text[:1].upper() + text[1:] if text else text


# ---------------------------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------------------------

def load_models(teacher_model, refiner_model, device=None, trust_remote_code=False):
    """The teacher image-text-to-text pipeline and the refiner text-generation pipeline (None where not given)."""
    import torch
    from transformers import pipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher = refiner = None
    if teacher_model:
        teacher = pipeline("image-text-to-text", model=teacher_model, device=device, dtype="auto",
                           trust_remote_code=trust_remote_code)
        if not getattr(teacher.processor, "chat_template", None):
            raise ValueError(f"--teacher_model {teacher_model!r}: its processor has no chat template, so it cannot be "
                             f"asked the write-up's prompt; use an instruction-tuned image-text-to-text model")
    if refiner_model:
        refiner = load_text_generator(refiner_model, device, trust_remote_code)
    return teacher, refiner


def ask_teacher(teacher, images: list, max_new_tokens: int, batch_size: int) -> list:
    """The teacher's raw answers to the write-up's prompt, one per PIL image, asked as chats (image + prompt)."""
    chats = [[{"role": "user", "content": [{"type": "image", "image": image},
                                           {"type": "text", "text": TEACHER_PROMPT}]}] for image in images]
    outputs = teacher(text=chats, batch_size=batch_size, max_new_tokens=max_new_tokens, return_full_text=False,
                      generate_kwargs={"do_sample": False})
    return [generated_text(output) for output in outputs]


def refiner_prompt(fields: dict, attributes: dict) -> str:
    """The refiner's task: the instructions, the teacher's JSON fields and the item's metadata attributes."""
    return (f"{REFINER_INSTRUCTIONS}\n\nImage model's description: {json.dumps(fields, ensure_ascii=False)}\n"
            f"Item metadata: {json.dumps(attributes, ensure_ascii=False)}\nDescription:")


def ask_refiner(refiner, prompts: list, max_new_tokens: int, batch_size: int) -> list:
    """The refiner's raw answers, as chats when its tokenizer has a chat template."""
    if getattr(refiner.tokenizer, "chat_template", None):
        inputs = [[{"role": "user", "content": prompt}] for prompt in prompts]
    else:
        inputs = prompts
    outputs = refiner(inputs, batch_size=batch_size, max_new_tokens=max_new_tokens, return_full_text=False,
                      do_sample=False)
    return [generated_text(output) for output in outputs]


# ---------------------------------------------------------------------------------------------------------------
# Describing items
# ---------------------------------------------------------------------------------------------------------------

def describe_with_models(teacher_answers: list, rows: list, refine=None) -> list:
    """
    Description results {description, description_source, error, teacher_answer, refiner_answer} for rows whose
    teacher answers are given; `refine(prompts) -> answers` is the refiner, or None. Unusable answers fall back
    (teacher -> template-fallback, refiner -> the teacher's fields through the template) and say why in `error`.
    """
    results, to_refine = [], []
    for answer, row in zip(teacher_answers, rows):
        attributes = item_attributes(row)
        result = {"teacher_answer": answer, "refiner_answer": "", "error": ""}
        try:
            fields = parse_teacher_answer(answer)
        except ValueError as err:
            result.update(description=template_description(attributes), description_source="template-fallback",
                          error=str(err))
            results.append(result)
            continue
        clean = lambda text: remove_printed_text(text, brand_names(row), kept_words(attributes))  # noqa: E731
        teacher_text = clean(template_description(teacher_attributes(fields)))
        result.update(description=teacher_text, description_source="teacher", fields=fields)
        results.append(result)
        if refine is not None:
            to_refine.append((result, fields, attributes, clean))
    if to_refine:
        answers = refine([refiner_prompt(fields, attributes) for _, fields, attributes, _ in to_refine])
        for (result, fields, attributes, clean), answer in zip(to_refine, answers):
            result.update(refiner_answer=answer, refined=True)
            known = {**teacher_attributes(fields), **attributes}
            try:
                description = check_description(clean(first_paragraph(answer)), known, answer)
                result.update(description=description, description_source="teacher+refiner")
            except ValueError as err:
                result["error"] = f"{err}; used the teacher's description"
    for result in results:
        result.pop("fields", None)
    return results


# ---------------------------------------------------------------------------------------------------------------
# Input and output
# ---------------------------------------------------------------------------------------------------------------

def read_input_rows(images: str, metadata: str = None) -> list:
    """
    The input items as catalog rows (moda.data.catalog's readers): `metadata` (a CSV with a file_name column, names
    relative to `images`), else `images`' own metadata.csv (an imagefolder split folder), else the image files
    in `images` (no metadata: a teacher is then needed).
    """
    root = Path(images)
    if not root.is_dir():
        raise FileNotFoundError(f"--dataset {images!r} is not a folder")
    if metadata:
        table = Path(metadata)
        if not table.is_file():
            raise FileNotFoundError(f"--metadata {metadata!r} does not exist")
        rows = read_table(table)
        if rows and "file_name" not in rows[0]:
            raise ValueError(f"--metadata {metadata!r} has no file_name column (its columns: {list(rows[0])})")
        return rows_with_image_paths(rows, root, "file_name", str(table))
    if (root / "metadata.csv").is_file():
        return load_imagefolder(root)["train"]
    splits = load_imagefolder(root)
    if splits:
        raise ValueError(f"--dataset {images!r} holds split folders {sorted(splits)}: pass one of them "
                         f"(e.g. --dataset {root / sorted(splits)[0]}) and an --output_dir for it")
    files = image_files(root)
    if not files:
        raise ValueError(f"--dataset {images!r} holds no metadata.csv and no images")
    return [{"file_name": p.relative_to(root).as_posix(), "image": str(p), "_where": str(p)} for p in files]


def name_in_images(file_name: str) -> PurePosixPath:
    """An item's file_name as a name inside the output's images/ folder: without a leading images/ folder."""
    parts = PurePosixPath(file_name).parts
    if len(parts) > 1 and parts[0] == "images":
        parts = parts[1:]
    return PurePosixPath(*parts)


def output_file_name(file_name: str) -> str:
    """
    Where an item's image goes in the output, as metadata.csv names it: images/<its path, without a leading images/
    folder>, normalised ("a/./b.jpg" -> "images/a/b.jpg"). A name that leads out of images/ (absolute, "..") does not
    start with "images/": output_image_path refuses it.
    """
    return posixpath.normpath(posixpath.join("images", name_in_images(file_name)))


def output_image_path(output_dir: Path, file_name: str) -> Path:
    """
    The path an item's image is written to: output_dir/images/<name_in_images>. ValueError, naming the name, when it
    would be written outside images/ (an absolute name, a ".." that climbs out, a NUL, a symbolic link in the output
    that leads out): the file name comes from the metadata, which must not choose where files are written.
    """
    return confined_path(Path(output_dir) / "images", name_in_images(file_name), "file_name")


def check_rows(rows: list) -> list:
    """The metadata columns to keep; file names must be unique and must not collide in the output."""
    columns = [c for c in columns_of(rows) if c != "image"] if rows else ["file_name"]  # JSONL rows may differ
    taken = [c for c in NEW_COLUMNS if c in columns]
    if taken:
        raise ValueError(f"the metadata already has column(s) {taken}, which build-dataset writes: rename them")
    seen, targets = {}, {}
    for row in rows:
        name, where = row.get("file_name"), row.get("_where")
        if name in seen:
            raise ValueError(f"file_name {name!r} is listed twice ({seen[name]} and {where})")
        seen[name] = where
        target = output_file_name(str(name))
        if not target.startswith("images/"):
            continue  # a name leading out of images/: a bad row (output_image_path), written nowhere
        if target in targets:
            raise ValueError(f"{targets[target]!r} and {name!r} would both be written to {target!r}")
        targets[target] = name
    return columns


def place_image(source: str, destination: Path) -> None:
    """The image at `destination`: a hard link where the file system allows one, else a copy (atomic)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with replacing_atomically(destination) as temp:
        try:
            os.link(source, temp)
        except OSError:
            shutil.copyfile(source, temp)


def read_progress(path: Path) -> dict:
    """{file_name: output row} from the progress file; a last line cut off by a kill is removed from the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with open(path, "r+b") as handle:  # appending after a half line would spoil the next one
            handle.truncate(len(complete))
    done = {}
    for number, line in enumerate(complete.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{str(path)!r} line {number} is not JSON ({err}): remove the file to start again, "
                             f"or pass --overwrite") from err
        done[record["key"]] = record["row"]
    return done


def append_progress(handle, key: str, row: dict, answers: dict) -> None:
    handle.write(json.dumps({"key": key, "row": row, **answers}, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def prepare_output_dir(output_dir: Path, settings: dict, overwrite: bool) -> None:
    """A fresh output folder, or one whose unfinished or finished run used the same settings."""
    output_dir.mkdir(parents=True, exist_ok=True)
    settings_file = output_dir / SETTINGS_FILE
    if overwrite:
        (output_dir / PROGRESS_FILE).unlink(missing_ok=True)
        settings_file.unlink(missing_ok=True)
    check_or_save_settings(settings_file, settings, lambda earlier: (
        f"{str(output_dir)!r} was built with other settings ({earlier}, now {settings}): use the same ones to "
        f"resume, another --output_dir, or --overwrite to start again"
    ))


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------

def load_batch(rows: list, images_root: Path, output_dir: Path, bad_rows: BadRows) -> tuple:
    """
    The rows whose file name stays inside the output's images/ folder, whose image is a file inside `images_root`
    (--dataset; followed through symbolic links, so a link to a private file elsewhere is neither read nor copied into
    the output) and opens, their images and the paths their images go to; the others are reported as bad rows. A
    usable row's "image" becomes its real path, the file that place_image copies.
    """
    usable, images, destinations = [], [], []
    for row in rows:
        where = f"{row.get('_where', 'row')} ({row.get('file_name')})"
        if not row.get("image"):
            bad_rows.report(where, "no file_name")
            continue
        try:
            destination = output_image_path(output_dir, str(row["file_name"]))
        except ValueError as err:
            bad_rows.report(where, str(err))
            continue
        try:
            if is_url(row["image"]):
                raise ValueError(f"file_name {row['image']!r} is a URL: build-dataset copies image files, so it "
                                 f"takes files inside --dataset")
            source = confined_source(images_root, row["image"], "file_name")
        except ValueError as err:
            bad_rows.report(where, str(err))
            continue
        try:
            image = load_image(str(source), where)
        except (OSError, ValueError) as err:
            bad_rows.report(where, f"image cannot be used: {without_location(str(err), where)}")
            continue
        usable.append({**row, "image": str(source)})
        images.append(image)
        destinations.append(destination)
    return usable, images, destinations


def describe_batch(rows: list, images: list, args, teacher, refiner) -> list:
    """Description results for readable rows: from the template, or the models."""
    if teacher is None:
        return [{"description": template_description(item_attributes(row)), "description_source": "template",
                 "error": ""} for row in rows]
    answers = ask_teacher(teacher, images, args.max_new_tokens, args.batch_size)
    refine = None if refiner is None else (
        lambda prompts: ask_refiner(refiner, prompts, args.max_new_tokens, args.batch_size))
    return describe_with_models(answers, rows, refine)


def build_rows(pending: list, args, teacher, refiner, output_dir: Path, columns: list, bad_rows: BadRows) -> int:
    """Describes the pending rows batch by batch, appending each finished item to the progress file."""
    from tqdm.auto import tqdm

    exit_after = int(os.environ.get(EXIT_AFTER_ITEMS_ENV, "0"))
    written = 0
    with open(output_dir / PROGRESS_FILE, "a", encoding="utf-8") as progress_file, \
            tqdm(total=len(pending), unit="item", desc="describing", dynamic_ncols=True) as progress:
        for start in range(0, len(pending), args.batch_size):
            batch = pending[start:start + args.batch_size]
            rows, images, destinations = load_batch(batch, Path(args.dataset), output_dir, bad_rows)
            results = []
            described = _describe_or_report(rows, images, args, teacher, refiner, bad_rows)
            for row, destination, result in zip(rows, destinations, described):
                if result is not None:
                    results.append((row, destination, result))
            images_dir = (output_dir / "images").resolve()
            for row, destination, result in results:
                place_image(row["image"], destination)
                out = {column: row.get(column, "") for column in columns}
                out.update(file_name=f"images/{destination.relative_to(images_dir).as_posix()}",
                           description=result["description"], description_source=result["description_source"],
                           teacher_model=args.teacher_model or "",
                           refiner_model=args.refiner_model if result.get("refined") else "", error=result["error"])
                answers = {k: result[k] for k in ("teacher_answer", "refiner_answer") if k in result}
                append_progress(progress_file, str(row["file_name"]), out, answers)
                written += 1
                if exit_after and written >= exit_after:
                    os._exit(137)
            progress.update(len(batch))
    return written


def _describe_or_report(rows, images, args, teacher, refiner, bad_rows) -> list:
    """describe_batch, with rows that have nothing to describe from reported (None in their place)."""
    if not rows:
        return []
    try:
        return describe_batch(rows, images, args, teacher, refiner)
    except BadRowError:
        pass  # some row has no metadata: describe them one by one to find it
    results = []
    for row, image in zip(rows, images):
        try:
            results.append(describe_batch([row], [image], args, teacher, refiner)[0])
        except BadRowError as err:
            bad_rows.report(f"{row.get('_where', 'row')} ({row.get('file_name')})", str(err))
            results.append(None)
    return results


def require_something_to_describe(args, rows: list, columns: list) -> None:
    """Without a teacher, descriptions come from metadata: items with none would all be bad rows."""
    if rows and not args.teacher_model and columns == ["file_name"]:
        raise ValueError(f"--dataset {args.dataset!r}: its {len(rows)} item(s) have no metadata (no metadata.csv in "
                         "the folder, no --metadata, or one with only a file_name column), and without --teacher_model "
                         "there is nothing to describe them from: give --metadata or --teacher_model")


def build_dataset(args) -> int:
    output_dir = Path(args.output_dir)
    rows = sample_rows(read_input_rows(args.dataset, args.metadata), args.max_samples, args.seed)
    columns = check_rows(rows)
    require_something_to_describe(args, rows, columns)
    # "images": the key earlier runs' settings files hold (the option was --images), so they resume
    settings = {"images": str(Path(args.dataset).resolve()),
                "metadata": str(Path(args.metadata).resolve()) if args.metadata else None,
                "teacher_model": args.teacher_model, "refiner_model": args.refiner_model,
                "max_new_tokens": args.max_new_tokens if args.teacher_model else None}
    output_dir.absolute().parent.mkdir(parents=True, exist_ok=True)  # where the lock file goes
    with exclusive_lock(output_dir, f"--output_dir {output_dir}"):  # a second run would spoil the progress file
        return build_locked(args, output_dir, rows, columns, settings)


def build_locked(args, output_dir: Path, rows: list, columns: list, settings: dict) -> int:
    """build_dataset's work on the output folder, while this run holds its lock."""
    prepare_output_dir(output_dir, settings, args.overwrite)
    done = read_progress(output_dir / PROGRESS_FILE)
    pending = [row for row in rows if str(row["file_name"]) not in done]
    print(f"moda build-dataset: {len(rows)} item(s), {len(rows) - len(pending)} already done", file=sys.stderr)

    bad_rows = BadRows(args.on_bad_row)
    teacher = refiner = None
    if pending and args.teacher_model:
        teacher, refiner = load_models(args.teacher_model, args.refiner_model, args.device, args.trust_remote_code)
    build_rows(pending, args, teacher, refiner, output_dir, columns, bad_rows)

    done = read_progress(output_dir / PROGRESS_FILE)
    finished = [done[str(row["file_name"])] for row in rows if str(row["file_name"]) in done]
    bad = [{"where": where, "reason": reason} for where, reason in bad_rows.rows]
    write_atomically(output_dir / BAD_ROWS_FILE, lambda handle: handle.write(csv_bytes(bad, ["where", "reason"])))
    if rows and not finished:  # an empty imagefolder would only fail later, in training
        where, reason = bad_rows.rows[0]
        raise ValueError(f"no item of --dataset {args.dataset!r} could be described: all {len(rows)} were bad rows "
                         f"(listed in {output_dir / BAD_ROWS_FILE}; the first: {where}: {reason})")
    write_atomically(output_dir / "metadata.csv", lambda handle: handle.write(csv_bytes(finished, columns
                                                                                      + list(NEW_COLUMNS))))
    sources = {source: sum(row["description_source"] == source for row in finished) for source in SOURCES}
    print(f"wrote {len(finished)} row(s) to {output_dir / 'metadata.csv'} "
          f"({', '.join(f'{k}: {v}' for k, v in sources.items() if v)}); {bad_rows.summary()}", file=sys.stderr)
    return 0
