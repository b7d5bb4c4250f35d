"""How every benchmark hands back its numbers: JSON on stdout, and in a file with --output."""

import json
from pathlib import Path


def print_and_save(results: dict, output=None) -> dict:
    """Prints `results` as JSON and, when `output` is a path, writes the same JSON there; returns `results`."""
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if output:
        Path(output).write_text(text)
    return results
