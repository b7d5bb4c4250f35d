"""Shared fixtures: tiny CLIP / OPT / MODA checkpoints built and saved locally (nothing is downloaded).

The workshop package (`moda`) is imported only inside the fixtures that build with it, so the tests of the root model
files (tests/model_files/) collect and run with nothing but those files, transformers and torch."""

import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests' reference captions are fp32's: "auto" would be bf16 on a CPU with native bf16 and fp32 on another, and bf16
# may break a near-tie the other way. Tests of the precision choice set it themselves (tests/*/test_*precision*.py).
os.environ.setdefault("MODA_PRECISION", "fp32")

from tests.model_files.model_tester import randomize_weights  # noqa: E402  (the model files only)

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Prepended to scripts that run in a fresh interpreter as a user would: the workshop may be pip-installed there
# (editable, as CI installs it), so hide it, as on a machine that has only torch, transformers and pillow.
HIDE_REPO = """
import sys
from pathlib import Path
sys.meta_path[:] = [finder for finder in sys.meta_path if not str(getattr(finder, "__module__", "")).startswith("__editable__")]
sys.path[:] = [entry for entry in sys.path if not (Path(entry) / "modeling_moda.py").exists()]
for name in ("modeling_moda", "image_io_moda", "moda", "hub_card"):  # what only a saved folder or the Hub may hold
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} is importable: the test must load only the saved remote code")
"""

MODA_REPO_ID = "local-user/moda"  # where moda_on_local_hub puts the tiny MODA

CAPTIONS = [
    "White Casual Shirts for Boys - Apparel Topwear",
    "Black Sports Shoes for Men - Footwear Shoes",
    "Navy Blue Formal Trousers for Men - Apparel Bottomwear",
    "Red Casual Dresses for Women - Apparel Dress",
    "Green Ethnic Kurtas for Women - Apparel Topwear",
    "Brown Casual Sandals for Girls - Footwear Sandal",
    "What colour is this item?",
    "What kind of product is this?",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from moda.model.tokenizer import train_caption_tokenizer

    return train_caption_tokenizer(CAPTIONS * 4, vocab_size=300, model_max_length=48)


@pytest.fixture(scope="session")
def tiny_model_and_processor(tiny_tokenizer):
    from moda.model.build import build_from_scratch

    torch.manual_seed(0)
    model, processor = build_from_scratch("test", tiny_tokenizer, freeze_vision_tower=True)
    randomize_weights(model)
    model.generation_config.update(max_new_tokens=8)
    return model.eval(), processor


@pytest.fixture(scope="session")
def tiny_moda_dir(tmp_path_factory, tiny_model_and_processor):
    """A saved tiny MODA folder, as train_hf.py leaves one."""
    model, processor = tiny_model_and_processor
    path = tmp_path_factory.mktemp("tiny-moda")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def handler_folder(tiny_moda_dir, tmp_path_factory):
    """A copy of the tiny MODA folder with its card, handler.py and the image_io_moda.py it imports, as pushed."""
    import shutil

    from hub_card import prepare_model_folder

    folder = shutil.copytree(tiny_moda_dir, tmp_path_factory.mktemp("endpoint") / "model")
    prepare_model_folder(folder)
    return folder


@pytest.fixture(scope="module")
def handler_module(handler_folder):
    """The handler.py inside the model folder, imported from its file as Inference Endpoints does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("moda_endpoint_handler", handler_folder / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def endpoint_handler(handler_module, handler_folder):
    return handler_module.EndpointHandler(str(handler_folder))


@pytest.fixture(scope="module")
def moda_on_local_hub(handler_folder, tmp_path_factory):
    """(hub, commit sha): a loopback Hub (tests/hub_card/hub_server.py) whose repo MODA_REPO_ID holds the tiny MODA as
    `moda push` uploads it. Clients reach it in a subprocess with hub.environment(...): this process is offline."""
    from tests.hub_card.hub_server import LocalHub

    with LocalHub(tmp_path_factory.mktemp("local-hub")) as hub:
        yield hub, hub.add_folder(MODA_REPO_ID, handler_folder, "Upload MODA")


@pytest.fixture
def cpu_with(monkeypatch):
    """cpu_with(flags): fast_generation_moda's precision policy sees a CPU with these flags (the tests of the choice
    hold on any CPU); its warning of emulated bf16, given once a process, is forgotten before and after."""
    import fast_generation_moda

    fast_generation_moda.warn_bf16_is_emulated.cache_clear()
    yield lambda flags: monkeypatch.setattr(fast_generation_moda, "cpu_flags", lambda: frozenset(flags))
    fast_generation_moda.warn_bf16_is_emulated.cache_clear()


@pytest.fixture
def red_image():
    from PIL import Image

    return Image.new("RGB", (40, 52), (200, 30, 30))


@pytest.fixture
def product_images():
    """A few distinct small product-like pictures."""
    from PIL import Image, ImageDraw

    images = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200), (20, 160, 40), (240, 240, 240)]):
        image = Image.new("RGB", (48, 64), (255, 255, 255))
        ImageDraw.Draw(image).rectangle([6 + 2 * i, 8, 40 - i, 56], fill=colour)
        images.append(image)
    return images
