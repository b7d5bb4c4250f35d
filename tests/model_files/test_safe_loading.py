"""Safe loading: weights only as safetensors, and remote code that imports no network or code-running facilities."""

import ast
import shutil

import pytest
import torch

from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from modeling_moda import MODAForConditionalGeneration, load_clip_vision
from tests.conftest import REPO_ROOT

REMOTE_CODE_FILES = ["configuration_moda.py", "modeling_moda.py", "processing_moda.py", "pipeline_moda.py",
                     "fast_generation_moda.py", "image_io_moda.py", "hub_card/handler.py"]
FORBIDDEN_MODULES = {"socket", "requests", "urllib", "urllib3", "http", "httpx", "subprocess", "pickle", "dill",
                     "marshal", "shelve", "ftplib", "smtplib", "telnetlib", "ctypes", "importlib", "ssl"}
# image_io_moda.py owns MODA's URL policy (public addresses only, pinned connections, byte cap, deadline): the one
# file that may open connections, and only with the standard library's own HTTP client.
NETWORK_MODULES_ALLOWED = {"image_io_moda.py": {"socket", "ssl", "http", "urllib"}}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "system", "popen", "spawnl", "execv"}


def test_loading_refuses_pickle_weights(tmp_path, tiny_moda_dir):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_moda_dir, folder)
    state = MODAForConditionalGeneration.from_pretrained(tiny_moda_dir).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors|model.safetensors"):
        MODAForConditionalGeneration.from_pretrained(folder)


def test_a_vision_tower_loads_from_safetensors_only(tmp_path):
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=16, projection_dim=16)
    tower = CLIPVisionModelWithProjection(config)
    tower.save_pretrained(tmp_path / "safe")
    assert torch.equal(load_clip_vision(str(tmp_path / "safe")).visual_projection.weight, tower.visual_projection.weight)
    shutil.copytree(tmp_path / "safe", tmp_path / "pickled")
    (tmp_path / "pickled" / "model.safetensors").unlink()
    torch.save(tower.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")  # a pickle: may run code when loaded
    with pytest.raises(OSError, match="safetensors"):
        load_clip_vision(str(tmp_path / "pickled"))


@pytest.mark.parametrize("name", REMOTE_CODE_FILES)
def test_remote_code_imports_no_network_subprocess_or_dynamic_code(name):
    tree = ast.parse((REPO_ROOT / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""] if node.level == 0 else []
        else:
            modules = []
        for module in modules:
            top = module.split(".")[0]
            assert top not in FORBIDDEN_MODULES - NETWORK_MODULES_ALLOWED.get(name, set()), f"{name} imports {module}"
        if isinstance(node, ast.Call):
            function = node.func
            called = function.id if isinstance(function, ast.Name) else getattr(function, "attr", None)
            assert called not in FORBIDDEN_CALLS, f"{name} calls {called}() at line {node.lineno}"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            assert node.attr not in {"system", "popen", "execv", "execve", "spawnl", "fork"}, f"{name} uses os.{node.attr}"


def test_the_scan_catches_what_it_looks_for(tmp_path, monkeypatch):
    """The scan above is not vacuous: a file that imports socket or calls eval() fails it."""
    for source in ("import socket\n", "from urllib.request import urlopen\n", "x = eval('1')\n", "import os\nos.system('ls')\n"):
        bad = tmp_path / "bad.py"
        bad.write_text(source)
        monkeypatch.setattr("tests.model_files.test_safe_loading.REPO_ROOT", tmp_path)
        with pytest.raises(AssertionError):
            test_remote_code_imports_no_network_subprocess_or_dynamic_code("bad.py")
