"""`moda space`: the Space folder it writes, and the Space it creates on the loopback Hub (tests/hub_card/hub_server.py).

The test process is offline (conftest), so the commands that reach the Hub run in a subprocess pointed at it; the app
in the Space is started from the written folder in tests/app/test_app.py."""

import ast
import json
import re
import shutil
import subprocess
import sys

import PIL
import pytest
import torch
import transformers
import yaml
from PIL import Image

from hub_card.space import NUM_EXAMPLES
from moda.cli import main as moda_main
from tests.conftest import MODA_REPO_ID, REPO_ROOT

# the Space's sdk_version is the installed gradio's, and its app is a Gradio app
gradio = pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[app]')")

SPACE_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from moda.cli import main

print("RESULT" + json.dumps([main(["space", *json.loads(arguments)]) for arguments in sys.argv[2:]]))
"""


def run_space_commands(hub, home, cwd, *commands):
    """Runs `moda space` with each argument list in one process pointed at the loopback Hub: exit statuses, output."""
    proc = subprocess.run([sys.executable, "-c", SPACE_SCRIPT, str(REPO_ROOT), *map(json.dumps, commands)], cwd=cwd,
                          env=hub.environment(home), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):]), proc.stdout + proc.stderr


OPT_LICENCE = ("\nlicense: other\nlicense_name: opt-175b-license\n"
               "license_link: https://example.org/LICENSE.md\n")


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_moda_space_creates_a_space_that_needs_no_moda_package(moda_on_local_hub, handler_folder, tmp_path):
    hub, model_commit = moda_on_local_hub
    licensed = shutil.copytree(handler_folder, tmp_path / "licensed")
    card = (licensed / "README.md").read_text()
    assert front_matter(card)["license"] == "apache-2.0"  # a tiny model trained from scratch; one built on OPT:
    (licensed / "README.md").write_text(re.sub(r"\nlicense: [^\n]*\n", OPT_LICENCE, card, count=1))
    licensed_commit = hub.add_folder("local-user/moda-opt", licensed)
    hub.store.create_repo("spaces/local-user/old-space", private=False, sdk="gradio")  # a Space written before
    (tmp_path / "old-space" / "examples").mkdir(parents=True)
    (tmp_path / "old-space" / "examples" / "stale.png").write_bytes(b"an example no longer drawn")
    (tmp_path / "old-space" / "notes.md").write_text("the owner's own file")
    hub.add_folder("spaces/local-user/old-space", tmp_path / "old-space")
    statuses, output = run_space_commands(
        hub, tmp_path / "home", tmp_path,
        [MODA_REPO_ID, "local-user/moda-space"],
        ["--model", "local-user/moda-opt", "local-user/moda-opt-space", "--private"],
        ["--model-name-or-path", MODA_REPO_ID, "local-user/not-pushed", "--output-dir", str(tmp_path / "written")],
        [MODA_REPO_ID, "local-user/moda-space", "--revision", "no-such-branch"],
        [MODA_REPO_ID, "local-user/old-space"],
    )
    assert statuses == [0, 0, 0, 1, 0], output
    assert "pushed the Space local-user/moda-space at commit " in output and f"at commit {model_commit}" in output
    assert "moda space: error: MODEL 'local-user/moda' at revision 'no-such-branch' cannot be found" in output

    store = hub.store
    space = store.repos["spaces/local-user/moda-space"]
    assert space["sdk"] == "gradio" and not space["private"]
    assert store.repos["spaces/local-user/moda-opt-space"]["private"]
    assert "spaces/local-user/not-pushed" not in store.repos  # --output_dir only writes the folder
    files = store.files("spaces/local-user/moda-space", space["branches"]["main"])

    def read(path, repo="spaces/local-user/moda-space"):
        return store.blob_path(store.files(repo, store.repos[repo]["branches"]["main"])[path]).read_bytes()

    assert read("app.py") == (REPO_ROOT / "hub_card" / "space_app.py").read_bytes()
    assert read("image_io_moda.py") == (REPO_ROOT / "image_io_moda.py").read_bytes()
    assert json.loads(read("space.json")) == {"model": MODA_REPO_ID, "revision": model_commit}
    assert read("requirements.txt").decode().splitlines() == [
        f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
        f"pillow=={PIL.__version__}"]
    metadata = front_matter(read("README.md").decode())
    assert {key: metadata[key] for key in ("title", "sdk", "sdk_version", "app_file", "models", "license")} == {
        "title": "moda-space", "sdk": "gradio", "sdk_version": gradio.__version__, "app_file": "app.py",
        "models": [MODA_REPO_ID], "license": "apache-2.0"}
    assert metadata["emoji"] and metadata["colorFrom"] and metadata["colorTo"]
    examples = sorted(path for path in files if path.startswith("examples/"))
    assert len(examples) == NUM_EXAMPLES and all(path.endswith(".png") for path in examples)
    assert Image.open(store.blob_path(files[examples[0]])).format == "PNG"

    opt_space = "spaces/local-user/moda-opt-space"
    opt_front_matter = front_matter(read("README.md", opt_space).decode())  # the model card's licence, whole
    assert {key: opt_front_matter[key] for key in ("license", "license_name", "license_link")} == {
        "license": "other", "license_name": "opt-175b-license", "license_link": "https://example.org/LICENSE.md"}
    assert json.loads(read("space.json", opt_space)) == {"model": "local-user/moda-opt", "revision": licensed_commit}

    old_space = "spaces/local-user/old-space"
    old_files = store.files(old_space, store.repos[old_space]["branches"]["main"])
    assert "examples/stale.png" not in old_files and "notes.md" in old_files and "space.json" in old_files
    assert sorted(path for path in old_files if path.startswith("examples/")) == examples

    written = tmp_path / "written"
    assert sorted(path.relative_to(written).as_posix() for path in written.rglob("*") if path.is_file()) == \
        sorted(path for path in files if path != ".gitattributes")
    assert json.loads((written / "space.json").read_text())["revision"] == model_commit


def test_moda_space_refuses_a_model_that_is_not_a_moda_repo(moda_on_local_hub, tmp_path):
    hub, _ = moda_on_local_hub
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    hub.add_folder("local-user/bert", tmp_path / "bert")
    statuses, output = run_space_commands(hub, tmp_path / "home", tmp_path,
                                          ["local-user/bert", "local-user/bert-space"],
                                          ["local-user/nothing", "local-user/nothing-space"])
    assert statuses == [1, 1], output
    assert "moda space: error: MODEL 'local-user/bert' is not a MODA model saved with its code" in output
    assert "moda space: error: MODEL 'local-user/nothing' cannot be found on the Hub" in output
    assert not {"spaces/local-user/bert-space", "spaces/local-user/nothing-space"} & set(hub.store.repos)


def test_moda_space_input_errors_before_any_request(tiny_moda_dir, tmp_path, capsys):
    # in this (offline) process: each is refused before the Hub is asked anything
    assert moda_main(["space", str(tiny_moda_dir), "me/space"]) == 1
    assert "moda space: error: MODEL " in capsys.readouterr().err
    assert moda_main(["space", "me/moda", "no-namespace"]) == 1
    assert "SPACE_ID must be 'namespace/name'; got 'no-namespace'" in capsys.readouterr().err
    assert moda_main(["space", "me/moda", "me/space", "--output_dir", str(tmp_path), "--private"]) == 1
    assert "--private is a setting of the Space on the Hub" in capsys.readouterr().err
    for arguments in (["me/space"], ["me/moda", "me/space", "--model", "me/moda"]):
        with pytest.raises(SystemExit) as info:
            moda_main(["space", *arguments])
        assert info.value.code == 2 and "give MODEL once" in capsys.readouterr().err
    assert moda_main(["space", "me/moda", "me/space"]) == 1  # HF_HUB_OFFLINE=1 here: the Hub is out of reach
    assert "moda space: error: cannot reach the Hub for the Space me/space of me/moda" in capsys.readouterr().err


def test_the_space_folder_is_never_written_over_a_foreign_folder(tmp_path):
    from hub_card.space import write_space_folder

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="non-empty folder without space.json"):
        write_space_folder(tmp_path / "mine", MODA_REPO_ID, "a" * 40, {"license": "apache-2.0"}, "me/space")
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    folder = write_space_folder(tmp_path / "space", MODA_REPO_ID, "a" * 40, {"license": "apache-2.0"}, "me/space")
    (folder / "examples" / "old.png").write_bytes(b"stale")
    write_space_folder(folder, MODA_REPO_ID, "b" * 40, {"license": "apache-2.0"}, "me/space")  # a Space folder: written again
    assert json.loads((folder / "space.json").read_text())["revision"] == "b" * 40
    assert len(list((folder / "examples").iterdir())) == NUM_EXAMPLES


def test_the_space_app_imports_only_what_a_space_installs():
    tree = ast.parse((REPO_ROOT / "hub_card" / "space_app.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    # gradio: the Space's SDK; transformers: requirements.txt; image_io_moda: written next to it
    assert imported == {"json", "sys", "pathlib", "gradio", "transformers", "image_io_moda"}, imported


def load_space_app(folder):
    """The app.py of a written Space folder, imported from its file as a Space runs it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("moda_space_app", folder / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_space_app_limits_pillow_and_uploads_before_it_serves(tmp_path, monkeypatch):
    import image_io_moda
    from PIL import Image as PILImage

    from hub_card.space import write_space_folder

    space = write_space_folder(tmp_path / "space", MODA_REPO_ID, "c" * 40, {"license": "apache-2.0"}, "me/space")
    app = load_space_app(space)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() puts the Space folder first, as `python app.py` does
    seen = {}

    class Demo:
        def launch(self, **kwargs):
            seen.update(kwargs, limit=PILImage.MAX_IMAGE_PIXELS, formats=set(PILImage.OPEN))

    def built(captioner, model, revision, examples):
        seen.update(captioner=captioner, model=model, revision=revision, examples=examples)
        return Demo()

    monkeypatch.setattr(transformers, "pipeline", lambda *args, **kwargs: ("pipeline", args, kwargs))
    monkeypatch.setattr(app, "build_demo", built)
    saved = (PILImage.MAX_IMAGE_PIXELS, dict(PILImage.OPEN), list(PILImage.ID))
    try:
        assert app.main() == 0
    finally:
        PILImage.MAX_IMAGE_PIXELS = saved[0]
        PILImage.OPEN.clear()
        PILImage.OPEN.update(saved[1])
        PILImage.ID[:] = saved[2]
    assert seen["captioner"] == ("pipeline", ("image-to-text",),
                                 {"model": MODA_REPO_ID, "revision": "c" * 40, "trust_remote_code": True})
    assert (seen["model"], seen["revision"]) == (MODA_REPO_ID, "c" * 40)
    assert [path.parent for path in seen["examples"]] == [space / "examples"] * NUM_EXAMPLES
    assert seen["max_file_size"] == image_io_moda.MAX_IMAGE_BYTES
    assert seen["limit"] * 2 == image_io_moda.MAX_IMAGE_PIXELS
    assert seen["formats"] <= set(image_io_moda.ALLOWED_FORMATS) and "PNG" in seen["formats"]

    (space / "space.json").write_text(json.dumps({"model": MODA_REPO_ID}))
    with pytest.raises(SystemExit) as info:
        app.main()
    assert str(info.value).startswith("app.py: error: ") and "pinned \"revision\"" in str(info.value)


def test_the_space_app_names_a_refused_photo():
    import gradio as gr

    from hub_card.space_app import describe
    from image_io_moda import ImageInputError

    def refusing(image):
        raise ImageInputError("The image is 9000x9000 pixels, over the limit")

    assert describe(lambda image: [{"generated_text": "Red Dress"}], Image.new("RGB", (8, 8))) == "Red Dress"
    assert describe(refusing, None) == "Upload a product photo first."
    with pytest.raises(gr.Error, match="9000x9000 pixels, over the limit"):
        describe(refusing, Image.new("RGB", (8, 8)))


def test_a_link_planted_in_a_space_folder_is_replaced_not_followed(tmp_path):
    from hub_card.space import write_space_folder

    folder = write_space_folder(tmp_path / "space", MODA_REPO_ID, "a" * 40, {"license": "apache-2.0"}, "me/space")
    outside = tmp_path / "outside.txt"
    outside.write_text("not the Space's")
    for name in ("README.md", "app.py", "requirements.txt", "space.json"):
        (folder / name).unlink()
        (folder / name).symlink_to(outside)
    write_space_folder(folder, MODA_REPO_ID, "b" * 40, {"license": "apache-2.0"}, "me/space")  # written again
    assert outside.read_text() == "not the Space's"
    for name in ("README.md", "app.py", "requirements.txt", "space.json"):
        assert not (folder / name).is_symlink() and (folder / name).read_text() != "not the Space's"
