"""How every benchmark hands back its numbers (JSON on stdout, and in a file with --output) and names the machine
they were measured on."""

import json
import os
from pathlib import Path

import torch


def print_and_save(results: dict, output=None) -> dict:
    """Prints `results` as JSON and, when `output` is a path, writes the same JSON there; returns `results`."""
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if output:
        Path(output).write_text(text)
    return results


def machine() -> dict:
    """The CPU, the flags that decide bf16 speed, and torch's threads."""
    info = {"cpu": "unknown", "flags": [], "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cores": os.cpu_count()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        info["cpu"] = names[0] if names else "unknown"
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        info["flags"] = sorted(flag for flag in flags if flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16",
                                                                  "amx_tile", "amx_int8"))
    return info
