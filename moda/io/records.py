"""Records in files and in text: JSON Lines and CSV bytes, a run's settings file, JSON objects inside a model's answer."""

import csv
import io
import json
import re
from pathlib import Path

from moda.io.paths import write_atomically


def jsonl_bytes(rows: list) -> bytes:
    return b"".join(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n" for row in rows)


def read_jsonl(path: Path) -> list:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def csv_bytes(rows: list, columns: list) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def check_or_save_settings(settings_file: Path, settings: dict, mismatch, unrecorded: dict | None = None) -> None:
    """
    A run resumes only with the settings it started with: `settings` against those saved in `settings_file`
    (ValueError with the message `mismatch(earlier_settings)` when they differ), or saved there for a run that starts.
    A setting newer than the file's run stands for its value in `unrecorded` (what every earlier run used), else None.
    """
    if settings_file.exists():
        earlier = {**dict.fromkeys(settings), **(unrecorded or {}), **json.loads(settings_file.read_text())}
        if earlier != settings:
            raise ValueError(mismatch(earlier))
    else:
        write_atomically(settings_file, lambda handle: handle.write(json.dumps(settings, indent=1).encode("utf-8")))


def json_objects(text: str):
    """The JSON objects (dicts) written in a model's answer, in order; text around and between them is skipped."""
    decoder = json.JSONDecoder()
    text = text if isinstance(text, str) else ""
    for match in re.finditer(r"\{", text):
        try:
            found, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(found, dict):
            yield found
