"""A saved MODA folder loads in a fresh process with the repo NOT importable: transformers 5.x and 4.57."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HIDE_REPO, REPO_ROOT

LOAD_SCRIPT = HIDE_REPO + r'''
import json, os, sys
from pathlib import Path
import torch
import transformers
from PIL import Image
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, pipeline


path, image_path = sys.argv[1], sys.argv[2]
image = Image.open(image_path)
model = AutoModel.from_pretrained(path, trust_remote_code=True)
model_itt = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
result = {"version": transformers.__version__, "model_class": type(model).__name__,
          "itt_class": type(model_itt).__name__, "processor_class": type(processor).__name__}
model.pack_weights = True  # fp32 weights are packed only when asked: ask, to see the packing run
result["generate"] = processor.batch_decode(model.generate(**processor(images=image)))
# The fast path came from the folder's own fast_generation_moda.py (imported relatively) and ran: it packed weights.
fast_generation = sys.modules[sys.modules[type(model).__module__].greedy_generate.__module__]
result["fast_generation_module"] = fast_generation.__name__
result["fast_generation_file"] = os.path.relpath(fast_generation.__file__, os.environ["HF_MODULES_CACHE"])
result["onednn"] = torch.backends.mkldnn.is_available()
result["packed_modules"] = len(fast_generation.packed_modules(model.modules()))
result["fast_path_off_reason"] = fast_generation.fast_path_off_reason()  # None: its oneDNN ops were found and ran
result["vision_frozen"] = not any(p.requires_grad for p in model.vision_tower.parameters())
captioner = pipeline("image-to-text", model=path, trust_remote_code=True)
result["pipeline_pil"] = captioner(image)
result["pipeline_path"] = captioner(image_path)
result["pipeline_batch"] = captioner([image, image_path], batch_size=2)
result["pipeline_prompt"] = captioner(image, prompt="What colour is this item?")
result["pipeline_inputs_keyword"] = captioner(inputs=image)
result["pipeline_tuple"] = captioner((image, image_path))
try:
    captioner([])
except ValueError as err:
    result["pipeline_empty"] = str(err)
itt = pipeline("image-text-to-text", model=path, trust_remote_code=True)
result["itt"] = itt(images=image, text="What colour is this item?", max_new_tokens=8)
# The folder's image_io_moda.py, which save_pretrained copied with processing_moda.py, reads the processor's images.
processing_module = sys.modules[type(processor).__module__]
result["processor_image_io"] = sys.modules[processing_module.load_image_file.__module__].__file__
try:
    processor(images="http://127.0.0.1:9/item.png")
except ValueError as err:
    result["processor_private_url"] = str(err)
# The Inference Endpoints handler, imported by its path as Endpoints does, reads images through the same file.
import importlib.util
spec = importlib.util.spec_from_file_location("handler", Path(path) / "handler.py")
handler_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(handler_module)
result["handler_image_io"] = sys.modules[handler_module.load_url_image.__module__].__file__
handler = handler_module.EndpointHandler(path)
result["handler_bytes"] = handler({"inputs": Path(image_path).read_bytes()})
try:
    handler({"inputs": "http://169.254.169.254/latest/meta-data/"})
except ValueError as err:
    result["handler_private_url"] = str(err)
print("RESULT" + json.dumps(result))
'''


def tf457_python():
    """The interpreter of the transformers 4.57 environment that .ci/run creates (or MODA_TF457_PYTHON)."""
    candidate = os.environ.get("MODA_TF457_PYTHON") or str(REPO_ROOT / ".venv-tf457" / "bin" / "python")
    return candidate if Path(candidate).exists() else None


def run_fresh(python, tiny_moda_dir, tmp_path, image):
    image_path = tmp_path / "item.png"
    image.save(image_path)
    from hub_card import prepare_model_folder

    folder = shutil.copytree(tiny_moda_dir, tmp_path / "model")
    prepare_model_folder(folder)  # the card and handler.py, as moda push uploads them
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf-modules")  # where transformers puts the folder's code to import it
    env.pop("MODA_ALLOW_PRIVATE_URLS", None)
    proc = subprocess.run(
        [python, "-c", LOAD_SCRIPT, str(folder), str(image_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    return {**json.loads(line[len("RESULT"):]), "stderr": proc.stderr}


def check(result, expected_caption, folder):
    assert result["model_class"] == result["itt_class"] == "MODAForConditionalGeneration"
    assert result["fast_generation_module"].startswith("transformers_modules.")
    assert result["fast_generation_module"].endswith(".fast_generation_moda")
    assert not result["fast_generation_file"].startswith(".."), result["fast_generation_file"]
    assert result["packed_modules"] > 0 or not result["onednn"]
    assert result["fast_path_off_reason"] is None
    assert result["processor_class"] == "MODAProcessor"
    assert result["vision_frozen"]
    assert result["generate"] == [expected_caption]
    assert result["pipeline_pil"] == [{"generated_text": expected_caption}]
    assert result["pipeline_path"] == [{"generated_text": expected_caption}]
    assert result["pipeline_batch"] == [[{"generated_text": expected_caption}]] * 2
    assert isinstance(result["pipeline_prompt"][0]["generated_text"], str)
    assert result["pipeline_inputs_keyword"] == [{"generated_text": expected_caption}]
    assert result["pipeline_tuple"] == [[{"generated_text": expected_caption}]] * 2
    assert "empty list" in result.get("pipeline_empty", "")
    assert result["itt"][0]["generated_text"].startswith("What colour is this item?")
    # image_io_moda.py travels with the weights, and both the processor (as remote code) and the handler use it
    assert (folder / "image_io_moda.py").read_bytes() == (REPO_ROOT / "image_io_moda.py").read_bytes()
    assert Path(result["handler_image_io"]) == folder / "image_io_moda.py"
    assert Path(result["processor_image_io"]).name == "image_io_moda.py"
    assert "loopback address" in result["processor_private_url"]
    assert result["handler_bytes"] == [{"generated_text": expected_caption}]
    assert "169.254.169.254 is a link-local address" in result["handler_private_url"]


@pytest.fixture
def expected_caption(tiny_model_and_processor, red_image):
    model, processor = tiny_model_and_processor
    return processor.batch_decode(model.generate(**processor(images=red_image)))[0]


def test_fresh_process_loads_with_current_transformers(tiny_moda_dir, tmp_path, red_image, expected_caption):
    assert (tiny_moda_dir / "fast_generation_moda.py").is_file()  # save_pretrained copied it: modeling_moda imports it
    result = run_fresh(sys.executable, tiny_moda_dir, tmp_path, red_image)
    assert result["version"].startswith("5.")
    check(result, expected_caption, tmp_path / "model")
    # 5.x warns at every load of a processor that names its sub-processor classes (4.x needs the names)
    assert "which is deprecated" not in result["stderr"], result["stderr"]


def test_fresh_process_loads_with_transformers_4_57(tiny_moda_dir, tmp_path, red_image, expected_caption):
    python = tf457_python()
    if python is None:
        pytest.skip("no transformers 4.57 environment: .ci/run creates .venv-tf457 (or set MODA_TF457_PYTHON)")
    result = run_fresh(python, tiny_moda_dir, tmp_path, red_image)
    assert result["version"].startswith("4.57.")
    check(result, expected_caption, tmp_path / "model")
