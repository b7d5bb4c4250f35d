"""More attacks on MODA's model loading, image policy and endpoint: each test here failed before its defence.

- A MODA folder's custom_generate/generate.py never runs, under transformers 5.x and 4.57 (4.57's from_pretrained
  loads it for every local folder, trust_remote_code=False included).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import HIDE_REPO
from tests.test_remote_code import tf457_python

CUSTOM_GENERATE_SCRIPT = HIDE_REPO + r'''
import json, sys
from pathlib import Path
from PIL import Image
import transformers
from transformers import AutoModel, AutoProcessor

for name in ("modeling_moda", "moda"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} is importable: the test must load only the saved remote code")
folder, marker = Path(sys.argv[1]), Path(sys.argv[2])
result = {"version": transformers.__version__}
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
result["marker_after_remote_load"] = marker.exists()
model = type(model).from_pretrained(folder, trust_remote_code=False)  # the class, as code that imported it loads
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
result["marker_after_load"] = marker.exists()
result["generate_owner"] = getattr(model.generate, "__qualname__", repr(model.generate))
inputs = processor(images=Image.new("RGB", (40, 52), (200, 30, 30)))
output = model.generate(**inputs, max_new_tokens=4)  # the folder's generate returns a string
result["caption"] = processor.batch_decode(output) if hasattr(output, "shape") else repr(output)
try:
    model.generate(**inputs, custom_generate=str(folder), trust_remote_code=True)
except ValueError as err:
    result["refused"] = str(err)
result["marker_at_end"] = marker.exists()
print("RESULT" + json.dumps(result))
'''


def custom_generate_folder(tiny_moda_dir, folder: Path, marker: Path) -> Path:
    """A copy of a MODA folder holding a custom_generate/generate.py that writes `marker` when imported."""
    shutil.copytree(tiny_moda_dir, folder)
    (folder / "custom_generate").mkdir()
    (folder / "custom_generate" / "generate.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n\n\n"
        "def generate(model, **kwargs):\n    return 'custom generate ran'\n")
    return folder


def test_a_moda_folders_custom_generate_never_runs_when_loaded(tiny_moda_dir, tmp_path, red_image):
    """transformers 5.x's from_pretrained loads a folder's custom_generate when told trust_remote_code=True (and
    would replace MODA's generate with it); MODA's load_custom_generate never loads one."""
    from transformers import AutoConfig, AutoModel

    from configuration_moda import MODAConfig
    from modeling_moda import MODAForConditionalGeneration
    from processing_moda import MODAProcessor

    AutoConfig.register("moda", MODAConfig, exist_ok=True)  # as MODA's commands do: the installed code
    AutoModel.register(MODAConfig, MODAForConditionalGeneration, exist_ok=True)

    marker = tmp_path / "custom-generate-ran"
    folder = custom_generate_folder(tiny_moda_dir, tmp_path / "model", marker)
    for load in (AutoModel.from_pretrained, MODAForConditionalGeneration.from_pretrained):
        model = load(str(folder), trust_remote_code=True)
        assert not marker.exists(), load
        assert model.generate.__func__ is MODAForConditionalGeneration.generate
    processor = MODAProcessor.from_pretrained(str(folder))
    assert model.generate(**processor(images=red_image), max_new_tokens=2).shape[1] <= 2
    assert not marker.exists()


def test_a_moda_folders_custom_generate_never_runs_under_transformers_4_57(tiny_moda_dir, tmp_path):
    """transformers 4.57's from_pretrained calls load_custom_generate on every folder and counts a local one as
    trusted: without MODA's override, the folder's generate.py ran and replaced model.generate (and its refusals)."""
    python = tf457_python()
    if python is None:
        pytest.skip("no transformers 4.57 environment: .ci/run creates .venv-tf457 (or set MODA_TF457_PYTHON)")
    marker = tmp_path / "custom-generate-ran"
    folder = custom_generate_folder(tiny_moda_dir, tmp_path / "model", marker)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf-modules"))
    proc = subprocess.run([python, "-c", CUSTOM_GENERATE_SCRIPT, str(folder), str(marker)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])
    assert result["version"].startswith("4.57.")
    assert not (result["marker_after_remote_load"] or result["marker_after_load"] or result["marker_at_end"]), result
    assert result["generate_owner"].endswith("MODAForConditionalGeneration.generate"), result
    assert isinstance(result["caption"], list) and len(result["caption"]) == 1, result
    assert "MODA's generate refuses" in result.get("refused", ""), result
