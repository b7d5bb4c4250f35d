"""More attacks on MODA's model loading, image policy and endpoint: each test here failed before its defence.

- A MODA folder's custom_generate/generate.py never runs, under transformers 5.x and 4.57 (4.57's from_pretrained
  loads it for every local folder, trust_remote_code=False included).
- Special-purpose addresses the standard library counts as global are refused.
- Huge base64 strings and URLs are refused by their length before they are copied.
- A progressive JPEG's pixels are counted at its full size, before draft mode.
- Images handed over already opened (PIL images, arrays, the serving toolkit's and Gradio's own decode) pass the
  decoding policy.
- Images far thinner than a photo are refused before CLIP would blow them up.
- Large images are shrunk after decoding; catalog photos are left bit for bit as they are.
- An endpoint request's generation work is bounded.
"""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import image_io_moda
from image_io_moda import ImageInputError, address_problem, decode_image, fetch_url
from tests.conftest import HIDE_REPO, SHARED_DATA
from tests.model_files.test_remote_code import tf457_python
from tests.io.test_untrusted_inputs import (  # noqa: F401  (network: the fixture)
    EPS_BYTES, PILLOW_DEFAULT_MAX_IMAGE_PIXELS, RED_PNG, network, png_declaring,
)

CUSTOM_GENERATE_SCRIPT = HIDE_REPO + r'''
import json, sys
from pathlib import Path
from PIL import Image
import transformers
from transformers import AutoModel, AutoProcessor

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


# ---------------------------------------------------------------------------------------------------------------
# Special-purpose addresses
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, problem", [
    ("http://[fec0::1]/x.jpg", r"fec0::1 is a site-local address"),
    ("http://192.0.0.8/x.jpg", r"192\.0\.0\.8 is an IETF protocol assignment address"),
    ("http://192.88.99.1/x.jpg", r"192\.88\.99\.1 is a 6to4 relay anycast address"),
    ("http://[3fff::1]/x.jpg", r"3fff::1 is a documentation address"),
    ("http://[2002:c000:201::1]/x.jpg", r"2002:c000:201::1 is a (private|documentation) address.* \(192\.0\.2\.1\)"),
    ("http://0.1.2.3/x.jpg", r"0\.1\.2\.3 is a 'this network' address"),
])
def test_special_purpose_addresses_the_stdlib_may_count_as_global_are_refused_without_connecting(url, problem,
                                                                                                 network):
    with pytest.raises(ImageInputError, match=problem):
        fetch_url(url)
    assert network["connections"] == []


@pytest.mark.parametrize("network_, what, never", image_io_moda.SPECIAL_PURPOSE_NETWORKS,
                         ids=[str(entry[0]) for entry in image_io_moda.SPECIAL_PURPOSE_NETWORKS])
def test_every_special_purpose_network_is_refused(network_, what, never):
    """Whatever this Python's ipaddress says: the first, a middle and the last address of each network; those that
    are never a server also with the private-address opt-in."""
    for address in (network_[0], network_[network_.num_addresses // 2], network_[-1]):
        assert address_problem(str(address), allow_private=False) is not None, address
        if never:
            assert address_problem(str(address), allow_private=True) is not None, address


def test_public_addresses_still_pass():
    for address in ("93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34", "64:ff9b::5db8:d822",
                    "2002:5db8:d822::1", "192.0.1.1", "192.88.100.1", "3000::1"):
        assert address_problem(address, allow_private=False) is None, address


# ---------------------------------------------------------------------------------------------------------------
# The endpoint handler, imported from a model folder as Inference Endpoints does
# ---------------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------------
# Huge strings
# ---------------------------------------------------------------------------------------------------------------

def peak_allocated(call) -> int:
    """The most memory Python objects took while `call` ran (its exception swallowed), above what was there."""
    tracemalloc.start()
    try:
        call()
    except (ValueError, ImageInputError):
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_huge_base64_string_is_refused_by_its_length_before_it_is_copied(endpoint_handler):
    limit = image_io_moda.max_base64_characters(1024 * 1024)
    wrapped = ("QUJD" * 19 + "\n") * (limit // 77 + 2)  # line-wrapped base64, just over the limit
    with pytest.raises(ImageInputError, match=rf"^The base64 input 'QUJD.*': {len(wrapped)} characters of base64 is "
                                              r"over the 1\.0 MB limit \(MAX_IMAGE_BYTES\)"):
        image_io_moda.base64_image_bytes(wrapped, max_bytes=1024 * 1024)
    assert peak_allocated(lambda: image_io_moda.base64_image_bytes(wrapped, max_bytes=1024 * 1024)) < 100_000
    # the largest allowed one still decodes (MIME's CRLF every 76 characters)
    body = RED_PNG + b"\0" * (1024 * 1024 - len(RED_PNG))
    mime = base64.encodebytes(body).decode().replace("\n", "\r\n")
    assert image_io_moda.base64_image_bytes("data:image/png;base64," + mime, max_bytes=1024 * 1024) == body

    huge = " " + "A" * image_io_moda.max_base64_characters()  # ~67 MB; strip() would copy it
    with pytest.raises(ValueError, match=r"^The string input ' AAAA.*characters of base64 is over the 50\.0 MB"):
        endpoint_handler({"inputs": huge})
    assert peak_allocated(lambda: endpoint_handler({"inputs": huge})) < 1_000_000


def test_a_huge_url_is_refused_by_its_length(network):
    url = "http://images.example.com/" + "a" * image_io_moda.MAX_URL_CHARACTERS
    with pytest.raises(ImageInputError, match=r"characters, over the 8192 limit \(MAX_URL_CHARACTERS\)"):
        fetch_url(url)
    assert network["lookups"] == []


# ---------------------------------------------------------------------------------------------------------------
# Pixels counted before draft mode
# ---------------------------------------------------------------------------------------------------------------

def jpeg_declaring(width: int, height: int, progressive: bool = True) -> bytes:
    """A small JPEG whose frame header (SOF) is rewritten to declare width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 40, 40)).save(buffer, format="JPEG", progressive=progressive)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_a_progressive_jpeg_is_counted_at_its_full_size_not_its_draft_size():
    """A progressive JPEG holds full-size coefficient buffers whatever the draft scale: 13300x13300 (176 megapixels)
    in 2 MB took 1 GB while its draft (1663x1663) passed the limit. Here the limit is lowered to keep the test small:
    4000x4000 drafts to 500x500, under 1 megapixel."""
    data = jpeg_declaring(4000, 4000)
    with pytest.raises(ImageInputError, match=r"^upload: 4000x4000 pixels is over the 1 megapixel limit"):
        decode_image(data, "upload", max_pixels=1_000_000)
    with pytest.raises(ImageInputError, match=r"^upload: 13300x13300 pixels is over the 40 megapixel limit"):
        decode_image(jpeg_declaring(13300, 13300), "upload")


# ---------------------------------------------------------------------------------------------------------------
# Images handed over already opened
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def pillow_defaults(monkeypatch):
    """A library user's Pillow (an endpoint handler imported earlier in this process lowers the limit)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOW_DEFAULT_MAX_IMAGE_PIXELS)


def lazily_opened(data: bytes):
    """What a caller (or the serving toolkit, before its convert) holds: an image opened, nothing decoded."""
    return Image.open(io.BytesIO(data))


def eps_image():
    from PIL import EpsImagePlugin

    return EpsImagePlugin.EpsImageFile(io.BytesIO(EPS_BYTES))  # as Image.open gives it where EPS is registered


def test_opened_images_pass_the_format_and_pixel_checks_before_decoding(tiny_model_and_processor):
    from processing_moda import _as_rgb_image

    _, processor = tiny_model_and_processor
    bomb = lazily_opened(png_declaring(7000, 7000))  # 49 megapixels, still undecoded
    for read in (_as_rgb_image, lambda image: processor(images=image)):
        with pytest.raises(ImageInputError, match=r"7000x7000 pixels is over the 40 megapixel limit"):
            read(bomb)
        with pytest.raises(ImageInputError, match=r"a EPS image; only JPEG, PNG, WEBP, GIF, BMP, TIFF are read"):
            read(eps_image())
    assert bomb.tile  # never decoded: load() empties its list of tiles
    made = Image.new("RGB", (40, 52), (200, 30, 30))  # made in memory: no format, allowed
    assert _as_rgb_image(made).getpixel((3, 3)) == (200, 30, 30)
    assert _as_rgb_image(lazily_opened(RED_PNG)).size == (24, 16)


def test_arrays_are_capped_before_they_are_converted(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    huge = np.broadcast_to(np.zeros((1, 1, 3), dtype=np.uint8), (7000, 7000, 3))  # 147 MB, no memory of its own
    with pytest.raises(ImageInputError, match=r"7000x7000 pixels is over the 40 megapixel limit"):
        processor(images=huge)
    with pytest.raises(ImageInputError, match=r"7000x7000 pixels is over the 40 megapixel limit"):
        processor(images=np.broadcast_to(np.float32(0.5), (3, 7000, 7000)))  # channels first
    with pytest.raises(ImageInputError, match=r"holds 200000000 values, over the 40 megapixel limit"):
        processor(images=np.broadcast_to(np.uint8(0), (10, 20_000_000)).reshape(10, 4_000, 5_000))
    assert processor(images=np.zeros((52, 40, 3), dtype=np.uint8))["pixel_values"].shape == (1, 3, 32, 32)


def test_the_handler_checks_pil_inputs_before_decoding(endpoint_handler):
    with pytest.raises(ValueError, match=r"7000x7000 pixels is over the 40 megapixel limit"):
        endpoint_handler({"inputs": lazily_opened(png_declaring(7000, 7000))})
    with pytest.raises(ValueError, match=r"a EPS image; only JPEG"):
        endpoint_handler({"inputs": eps_image()})
    assert endpoint_handler({"inputs": lazily_opened(RED_PNG)})[0]["generated_text"]


HANDLER_PROCESS_SCRIPT = r"""
import importlib.util, io, json, sys, warnings
from pathlib import Path
from PIL import Image

folder, eps, bomb, under = Path(sys.argv[1]), *(Path(name).read_bytes() for name in sys.argv[2:5])
result = {}
sys.path.insert(0, str(folder))
import processing_moda  # a library user's process: MODA's remote code leaves Pillow as it is
result["library_limit"] = Image.MAX_IMAGE_PIXELS
result["library_eps"] = Image.open(io.BytesIO(eps)).format
sys.path.remove(str(folder))
spec = importlib.util.spec_from_file_location("handler", folder / "handler.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)  # as Inference Endpoints does
result["limit"] = Image.MAX_IMAGE_PIXELS
for name, data in (("eps", eps), ("bomb", bomb)):
    try:  # the serving toolkit's own decode of an image/* body, before the handler runs
        Image.open(io.BytesIO(data)).convert("RGB")
        result[name] = "decoded"
    except Exception as err:
        result[name] = type(err).__name__
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    result["under"] = list(Image.open(io.BytesIO(under)).size)
result["formats"] = sorted(Image.OPEN)
print("RESULT" + json.dumps(result))
"""


def test_the_handler_process_restricts_pillow_for_the_toolkits_own_decode(handler_folder, tmp_path):
    """The toolkit decodes image/* bodies with Image.open(...).convert("RGB"): any format Pillow has, up to its own
    179 megapixels. Importing handler.py limits this process's Pillow to the allowed formats and MAX_IMAGE_PIXELS;
    importing MODA's model code (a library user's process) changes nothing."""
    files = {"eps": EPS_BYTES, "bomb": png_declaring(6325, 6325),  # 40,005,625 pixels: just over
             "under": png_declaring(6324, 6324)}  # 39,992,976 pixels: allowed
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", HANDLER_PROCESS_SCRIPT, str(handler_folder),
                           *(str(tmp_path / name) for name in files)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[6:])
    assert result["library_limit"] == PILLOW_DEFAULT_MAX_IMAGE_PIXELS and result["library_eps"] == "EPS"
    assert result["limit"] * 2 == image_io_moda.MAX_IMAGE_PIXELS
    assert result["eps"] == "UnidentifiedImageError"
    assert result["bomb"] == "DecompressionBombError"
    assert result["under"] == [6324, 6324]
    assert set(result["formats"]) <= set(image_io_moda.ALLOWED_FORMATS)
    assert {"JPEG", "PNG"} <= set(result["formats"])


def test_the_app_restricts_pillow_before_it_serves(tiny_moda_dir, tmp_path, monkeypatch):
    """Gradio decodes an upload (gr.Image(type="pil")) with plain Pillow before describe() sees it: the app's process
    keeps Pillow to MODA's formats and pixel limit before it serves, and not before (its tests run in-process)."""
    import app
    import moda.catalog.search
    from PIL import Image as PILImage

    saved = (PILImage.MAX_IMAGE_PIXELS, dict(PILImage.OPEN), list(PILImage.ID))
    seen = {}

    class Demo:
        def launch(self, **kwargs):
            seen.update(limit=PILImage.MAX_IMAGE_PIXELS, formats=set(PILImage.OPEN))

    monkeypatch.setattr(moda.catalog.search.CatalogIndex, "load", staticmethod(lambda directory: "index"))
    monkeypatch.setattr(app, "build_demo", lambda *args, **kwargs: Demo())
    try:
        assert app.main(["--model", str(tiny_moda_dir), "--index", str(tmp_path / "index")]) == 0
    finally:
        PILImage.MAX_IMAGE_PIXELS = saved[0]
        PILImage.OPEN.clear()
        PILImage.OPEN.update(saved[1])
        PILImage.ID[:] = saved[2]
    assert seen["limit"] * 2 == image_io_moda.MAX_IMAGE_PIXELS
    assert seen["formats"] <= set(image_io_moda.ALLOWED_FORMATS) and "PNG" in seen["formats"]


# ---------------------------------------------------------------------------------------------------------------
# Images far thinner than a photo
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width, height", [(4_000_000, 10), (10, 100_000), (20_200, 200)])
def test_an_image_far_thinner_than_a_photo_is_refused_before_decoding(width, height, tiny_model_and_processor):
    """CLIP resizes the short side to 224 before it crops: 100,000x10 took 5 GB and 16 s, 4,000,000x10 (40
    megapixels, a few KB of PNG) would take 60 GB."""
    _, processor = tiny_model_and_processor
    data = png_declaring(width, height)
    with pytest.raises(ImageInputError, match=rf"{width}x{height} pixels is over the 100:1 limit on the ratio of its "
                                              r"sides \(MAX_ASPECT_RATIO\)"):
        decode_image(data, "banner")
    with pytest.raises(ImageInputError, match="MAX_ASPECT_RATIO"):
        processor(images=Image.new("1", (width, height)) if width * height < 1e7 else lazily_opened(data))
    hundred_to_one = Image.new("1", (20_000, 200))
    assert image_io_moda.check_opened_image(hundred_to_one, "strip") is hundred_to_one
    assert processor(images=np.zeros((1, 70), dtype=np.uint8))["pixel_values"].shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------------------------------
# Large images shrunk after decoding
# ---------------------------------------------------------------------------------------------------------------

def test_a_large_image_is_shrunk_after_decoding_and_a_catalog_photo_is_left_as_it_is():
    wide = Image.new("RGB", (3000, 1500), (30, 120, 200))
    buffer = io.BytesIO()
    wide.save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), "wide").size == (1792, 896)  # short side MAX_DECODED_SHORT_SIDE
    long = io.BytesIO()
    Image.new("L", (9000, 900), 128).save(long, format="PNG")  # long side over MAX_DECODED_LONG_SIDE (7,168)
    assert decode_image(long.getvalue(), "long").size == (7168, 717)
    photo = Image.effect_noise((600, 896), 40).convert("RGB")
    assert image_io_moda.shrink(photo) is photo  # nothing over 896 on its short side is touched


def test_catalog_photos_decode_to_the_pixels_pillow_gives():
    """The shrink and the draft leave every catalog photo (short side at most 896) bit for bit as Pillow decodes it:
    captions do not change."""
    paths = sorted(SHARED_DATA.glob("*/*/images/*"))[:40] + sorted(SHARED_DATA.glob("*/images/*"))[:40]
    if not paths:
        pytest.skip(f"no catalog images under {SHARED_DATA}")
    for path in paths:
        expected = Image.open(path)
        expected = expected.convert("RGB")
        assert decode_image(path.read_bytes(), str(path)).tobytes() == expected.tobytes(), path


# ---------------------------------------------------------------------------------------------------------------
# A request's generation work
# ---------------------------------------------------------------------------------------------------------------

def test_min_new_tokens_is_capped_below_the_decoders_room(handler_module):
    room = 2000  # a decoder with room for 2,000 new tokens: min_new_tokens still forces at most 64 on every beam
    assert handler_module.pipeline_arguments({"min_new_tokens": 64}, room) == {
        "generate_kwargs": {"min_new_tokens": 64}}
    with pytest.raises(ValueError, match=r'^"min_new_tokens" must be an integer from 0 to 64; got int \'65\''):
        handler_module.pipeline_arguments({"min_new_tokens": 65}, room)
    with pytest.raises(ValueError, match=r'"min_new_tokens" must be an integer from 0 to 20;'):
        handler_module.pipeline_arguments({"min_new_tokens": 21}, 20)  # and never past the room


def test_a_requests_generation_work_is_bounded_before_any_image_is_read(handler_module, endpoint_handler, monkeypatch,
                                                                       network):
    check = handler_module.check_request_work
    budget = handler_module.MAX_REQUEST_TOKENS
    assert check(32, {"num_beams": 8, "max_new_tokens": 64}, 32) == budget  # the most a request may ask
    with pytest.raises(ValueError, match=rf"^The request asks for 32 image\(s\) x 8 sequence\(s\) .* x 65 new tokens "
                                         rf"\(max_new_tokens\) = 16640 tokens of generation, over the {budget} one "
                                         r"request may take \(MAX_REQUEST_TOKENS\)"):
        check(32, {"num_beams": 8, "min_new_tokens": 64, "max_new_tokens": 65}, 32)
    with pytest.raises(ValueError, match=r"2 sequence\(s\) .* x 2000 new tokens"):  # sampled sequences count too
        check(5, {"num_return_sequences": 2, "do_sample": True}, 2000)

    # the handler checks it before fetching or decoding: a lowered budget refuses a request of URLs unread
    monkeypatch.setattr(handler_module, "MAX_REQUEST_TOKENS", 100)
    urls = ["http://images.example.com/item.png"] * 4
    with pytest.raises(ValueError, match=r"4 image\(s\) x 8 sequence\(s\) .* x 4 new tokens .* = 128 tokens"):
        endpoint_handler({"inputs": urls, "parameters": {"num_beams": 8, "max_new_tokens": 4}})
    assert network["lookups"] == [] and network["connections"] == []
    assert len(endpoint_handler({"inputs": [RED_PNG] * 2, "parameters": {"num_beams": 2, "max_new_tokens": 4}})) == 2


def test_a_model_without_a_max_new_tokens_default_is_counted_at_its_max_length(handler_module, handler_folder,
                                                                                 tmp_path):
    """A model whose generation config sets no max_new_tokens writes up to max_length less the image prefix and BOS
    (MODA's generate counts so): the request budget counts that, not the decoder's whole room."""
    import json
    import shutil

    folder = shutil.copytree(handler_folder, tmp_path / "model")
    settings = json.loads((folder / "generation_config.json").read_text())
    settings.pop("max_new_tokens", None)
    settings["max_length"] = 12
    (folder / "generation_config.json").write_text(json.dumps(settings))
    handler = handler_module.EndpointHandler(str(folder))
    prefix = handler.captioner.model.config.num_image_tokens + 1
    assert handler.default_new_tokens == 12 - prefix < handler.max_new_tokens
