"""A model folder (or Hub repo) can carry Python files that transformers imports when told trust_remote_code=True.

No command runs them unless --trust_remote_code asks, and a MODA model's never: the installed MODA code reads it.
Each malicious folder here carries an `evil.py` that writes a marker file when imported: the marker is the proof.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moda.cli import main
from tests.conftest import REPO_ROOT


def marker_code(marker: Path) -> str:
    return f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"


@pytest.fixture
def evil_model(tmp_path):
    """(folder, marker): a model type transformers does not know, whose auto_map names the folder's evil.py."""
    folder, marker = tmp_path / "evil-model", tmp_path / "evil-ran"
    folder.mkdir()
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
                "AutoModelForImageTextToText": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto_map}))
    (folder / "evil.py").write_text(marker_code(marker) + "from transformers import PretrainedConfig\n\n\n"
                                    "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    return folder, marker


@pytest.fixture
def image_file(tmp_path, red_image):
    path = tmp_path / "images" / "red.png"
    path.parent.mkdir()
    red_image.save(path)
    return path


def run_allowing_failure(command):
    """With --trust_remote_code the folder's code runs; being no model, it then fails, which is not what is tested."""
    try:
        command()
    except (Exception, SystemExit):  # noqa: BLE001  (whatever the evil folder's loading ends in)
        pass


def one_error_line(err: str, prefix: str, folder: Path) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix) and repr(str(folder)) in lines[0], lines[0]
    return lines[0]


# --- the policy ---------------------------------------------------------------------------------------------------

def test_check_model_code_decides_from_config_json_alone(evil_model, tiny_moda_dir, tmp_path):
    from moda.model.loading import check_model_code

    folder, marker = evil_model
    with pytest.raises(ValueError) as info:
        check_model_code(str(folder))
    message = str(info.value)
    assert repr(str(folder)) in message and "needs its own code" in message and "'evil'" in message
    assert "--trust_remote_code allows it" in message
    assert check_model_code(str(folder), trust_remote_code=True) is True
    assert not marker.exists()  # deciding read config.json as JSON: nothing of the folder was imported

    # A type transformers knows, but with an auto_map naming the folder's own files: its own code too.
    opt_with_code = tmp_path / "opt-with-code"
    opt_with_code.mkdir()
    (opt_with_code / "config.json").write_text(json.dumps({"model_type": "opt",
                                                           "auto_map": {"AutoModel": "evil.EvilModel"}}))
    with pytest.raises(ValueError, match="auto_map names files of its own for the 'opt' model type"):
        check_model_code(str(opt_with_code))
    assert check_model_code(str(opt_with_code), trust_remote_code=True) is True
    plain_opt = tmp_path / "plain-opt"
    plain_opt.mkdir()
    (plain_opt / "config.json").write_text(json.dumps({"model_type": "opt"}))
    assert check_model_code(str(plain_opt)) is False

    # MODA: the installed code, whatever the flag (True would let transformers run a folder's tokenizer auto_map).
    assert check_model_code(str(tiny_moda_dir)) is False
    assert check_model_code(str(tiny_moda_dir), trust_remote_code=True) is False


@pytest.mark.parametrize("config", [{"auto_map": {"AutoModel": "evil.EvilModel"}}, {"model_type": ""}, [1]],
                         ids=["no model_type", "empty model_type", "not an object"])
def test_a_config_without_a_model_type_is_refused(tmp_path, config):
    from moda.model.loading import check_model_code

    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"--model {str(tmp_path)!r}: its config.json names no model_type"):
        check_model_code(str(tmp_path), trust_remote_code=True)


def test_an_unreachable_hub_model_is_still_named_as_one_that_cannot_be_loaded():
    from moda.model.loading import check_model_code, load_captioner

    # offline (conftest): the config cannot be fetched
    for check in (check_model_code, load_captioner):
        with pytest.raises(FileNotFoundError, match="'someone/no-such-moda': no local model folder of that name, "
                                                    "and no Hub model of that name could be loaded"):
            check("someone/no-such-moda")


# --- each command -------------------------------------------------------------------------------------------------

def test_caption_image_refuses_a_model_that_needs_its_own_code(evil_model, image_file, capsys):
    folder, marker = evil_model
    assert main(["caption-image", str(folder), str(image_file)]) == 1
    line = one_error_line(capsys.readouterr().err, "moda caption-image: error: model ", folder)
    assert "needs its own code" in line and "--trust_remote_code" in line
    assert not marker.exists()

    run_allowing_failure(lambda: main(["caption-image", str(folder), str(image_file), "--trust-remote-code"]))
    assert marker.exists()  # the flag (either spelling) lets the folder's own code run


def test_caption_refuses_a_model_that_needs_its_own_code_before_writing(evil_model, image_file, tmp_path, capsys):
    folder, marker = evil_model
    output = tmp_path / "out" / "captions.jsonl"
    command = ["caption", "--model", str(folder), "--images", str(image_file.parent), "--output", str(output)]
    assert main(command) == 1
    one_error_line(capsys.readouterr().err, "moda caption: error: --model ", folder)
    assert not marker.exists()
    assert not output.parent.exists()  # refused before any output or parts folder

    run_allowing_failure(lambda: main(command + ["--trust_remote_code"]))
    assert marker.exists()


def test_eval_reads_only_moda_and_blip_with_installed_code(evil_model, tmp_path, capsys):
    """eval has no --trust_remote_code: it loads MODA and BLIP with installed classes only, so it never needs one."""
    folder, marker = evil_model
    assert main(["eval", "--model", str(folder), "--data", str(tmp_path), "--output_dir", str(tmp_path / "eval")]) == 1
    line = one_error_line(capsys.readouterr().err, "moda eval: error: --model ", folder)
    assert "is a 'evil' model; moda eval reads MODA and BLIP captioners" in line
    assert not marker.exists()


def test_train_continues_only_a_moda_model(evil_model, tmp_path, capsys):
    """train_hf.py --model_name_or_path has no --trust_remote_code: it continues MODA models with the installed code."""
    import train_hf

    folder, marker = evil_model
    assert train_hf.command_line(["--dataset", str(tmp_path), "--output_dir", str(tmp_path / "out"),
                                  "--model_name_or_path", str(folder)]) == 1
    line = one_error_line(capsys.readouterr().err, "train_hf.py: error: --model_name_or_path ", folder)
    assert "is a 'evil' model; train_hf.py continues MODA models" in line
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_the_app_refuses_a_model_that_needs_its_own_code(evil_model, tmp_path, monkeypatch):
    import app
    import moda.catalog.search

    folder, marker = evil_model
    with pytest.raises(SystemExit) as info:
        app.main(["--model", str(folder), "--index", str(tmp_path / "index")])
    message = str(info.value)
    assert message.startswith("app.py: error: --model ") and repr(str(folder)) in message and "needs its own code" in message
    assert not marker.exists()
    assert not (tmp_path / "index").exists()

    # With the flag, the model loads (no index needed for that; and no server may start whatever happens)
    monkeypatch.setattr(moda.catalog.search.CatalogIndex, "load", staticmethod(lambda directory: None))
    monkeypatch.setattr(app, "build_demo", lambda *args, **kwargs: pytest.fail("the evil folder loaded as a model"))
    run_allowing_failure(lambda: app.main(["--model", str(folder), "--index", str(tmp_path / "index"),
                                           "--trust_remote_code"]))
    assert marker.exists()


def test_index_refuses_an_image_model_that_needs_its_own_code(evil_model, image_file, tmp_path, capsys):
    from moda.cli.index import main as index_main

    folder, marker = evil_model
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"id": "1", "file": str(image_file), "description": "red shirt"}) + "\n")
    command = ["--captions", str(captions), "--output", str(tmp_path / "index"), "--image_model", str(folder)]
    with pytest.raises(SystemExit):
        index_main(command)
    err = capsys.readouterr().err
    assert repr(str(folder)) in err and "needs its own code" in err
    assert not marker.exists()

    run_allowing_failure(lambda: index_main(command + ["--trust-remote-code"]))
    assert marker.exists()


def test_search_by_image_passes_its_flag_to_the_loader(tmp_path, monkeypatch):
    import moda.catalog.search
    import moda.cli.search

    seen = []

    def image_embeddings_for(images, model_name, names=None, batch_size=64, trust_remote_code=False, revision=None):
        seen.append(trust_remote_code)
        raise ValueError("stop here: the flag is what is tested")

    class IndexWithImages:
        images = "embeddings"

    monkeypatch.setattr(moda.catalog.search.CatalogIndex, "load", staticmethod(lambda directory: IndexWithImages()))
    monkeypatch.setattr(moda.cli.search, "image_embeddings_for", image_embeddings_for)
    for extra in ([], ["--trust_remote_code"]):
        with pytest.raises(SystemExit):
            moda.cli.search.main([str(tmp_path), "--image", "red.png", "--image_model", "m", *extra])
    assert seen == [False, True]


# --- MODA folders carrying code of their own ----------------------------------------------------------------------

def moda_folder_with_code(source: Path, folder: Path, marker: Path, where: str) -> Path:
    """A copy of a MODA folder whose `where` names evil.py (or, for custom_generate, a generate.py)."""
    shutil.copytree(source, folder)
    (folder / "evil.py").write_text(marker_code(marker))
    if where == "config auto_map":
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {key: "evil." + ref.split(".")[-1] for key, ref in config["auto_map"].items()}
        (folder / "config.json").write_text(json.dumps(config))
    elif where == "tokenizer auto_map":
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    elif where == "custom_generate":
        (folder / "custom_generate").mkdir()
        (folder / "custom_generate" / "generate.py").write_text(marker_code(marker) + "def generate(model, **kw):\n"
                                                                "    return None\n")
    return folder


@pytest.mark.parametrize("where", ["config auto_map", "tokenizer auto_map", "custom_generate"])
def test_a_moda_folder_never_runs_its_own_code(tiny_moda_dir, tmp_path, red_image, where):
    """
    Under transformers 5.x the registered "moda" type wins over a config auto_map even with trust_remote_code=True;
    a tokenizer auto_map and custom_generate/generate.py do not: they run whenever transformers is told True.
    """
    from moda.model.auto_classes import MODAForConditionalGeneration
    from moda.model.loading import load_captioner, load_model_and_processor

    marker = tmp_path / "evil-ran"
    folder = moda_folder_with_code(tiny_moda_dir, tmp_path / "moda-with-code", marker, where)
    for trust_remote_code in (False, True):
        captioner = load_captioner(str(folder), trust_remote_code=trust_remote_code)
        assert type(captioner.model) is MODAForConditionalGeneration
        assert captioner(red_image)[0]["generated_text"].strip()
        assert not marker.exists(), f"trust_remote_code={trust_remote_code}"
    model, _ = load_model_and_processor(str(folder))
    assert type(model) is MODAForConditionalGeneration
    assert not marker.exists()


# --- loaders that never pass trust_remote_code: transformers must not ask ------------------------------------------

PROMPT_SCRIPT = r'''
import json, sys
from types import SimpleNamespace
sys.path.insert(0, sys.argv[1])
folders = json.loads(sys.argv[2])

import train_hf
from moda.model.blip_baseline import load_blip
from moda.model.build import build_from_backbones
from moda.model.loading import load_model_and_processor

moda_args = SimpleNamespace(architecture="moda", model_name_or_path=folders["train_hf"], train_projector_only=False,
                            use_lora=False)
attempts = {
    "eval": lambda: load_model_and_processor(folders["eval"]),
    "train_hf": lambda: train_hf.build_model(moda_args, None, None, None),
    "blip": lambda: load_blip(folders["blip"]),
    "vision backbone": lambda: build_from_backbones(folders["vision backbone"], folders["text"]),
    "vision image processor": lambda: build_from_backbones(folders["vision image processor"], folders["text"]),
}
for name, attempt in attempts.items():
    try:
        attempt()
    except Exception as err:  # refused: what matters is whether the code ran
        print(name, type(err).__name__, str(err)[:200])
'''


def asks_for_tokenizer_code(folder: Path, marker: Path) -> None:
    """A tokenizer_config.json naming a tokenizer class of the folder's own: left to itself, transformers asks."""
    (folder / "evil.py").write_text(marker_code(marker))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


def asks_for_image_processor_code(folder: Path, config_name: str, marker: Path) -> None:
    """An image processor config naming a class of the folder's own: left to itself, transformers asks."""
    (folder / "evil.py").write_text(marker_code(marker))
    config = json.loads((folder / config_name).read_text())
    image_processor = config.get("image_processor", config)  # processor_config.json nests it
    image_processor.update(image_processor_type="EvilImageProcessor",
                           auto_map={"AutoImageProcessor": "evil.EvilImageProcessor"})
    (folder / config_name).write_text(json.dumps(config))


def test_loaders_without_the_flag_never_ask_whether_to_run_a_folders_code(tiny_moda_dir, tiny_model_and_processor,
                                                                          tmp_path):
    """
    eval, train_hf's --model_name_or_path, the BLIP baseline and the CLIP backbone load with installed classes;
    with trust_remote_code left unset, transformers would ask on stdin whether to run code a folder names, and a "y"
    (typed, or piped in by a script) would run it. They say False outright: nothing is asked, nothing runs.
    """
    from moda.model.blip_baseline import build_tiny_blip

    model, processor = tiny_model_and_processor
    folders = {}
    markers = {name: tmp_path / f"{name.replace(' ', '-')}-ran"
               for name in ("eval", "train_hf", "blip", "vision backbone", "vision image processor")}
    for name in ("eval", "train_hf"):  # one MODA folder each: the marker tells which loader ran it
        folders[name] = str(shutil.copytree(tiny_moda_dir, tmp_path / f"moda-{name}"))
        asks_for_tokenizer_code(Path(folders[name]), markers[name])
    blip_model, blip_processor = build_tiny_blip(["red shirt for men", "blue jeans for women"] * 4)
    blip_model.save_pretrained(tmp_path / "blip")
    blip_processor.save_pretrained(tmp_path / "blip")
    asks_for_image_processor_code(tmp_path / "blip", "processor_config.json", markers["blip"])
    folders["blip"] = str(tmp_path / "blip")
    model.vision_tower.save_pretrained(tmp_path / "vision")
    processor.image_processor.save_pretrained(tmp_path / "vision")
    model.language_model.save_pretrained(tmp_path / "text")
    processor.tokenizer.save_pretrained(tmp_path / "text")
    folders["text"] = str(tmp_path / "text")
    vision_with_code = shutil.copytree(tmp_path / "vision", tmp_path / "vision-with-code")
    (vision_with_code / "evil.py").write_text(marker_code(markers["vision backbone"]))
    config = json.loads((vision_with_code / "config.json").read_text())
    config.update(model_type="evil_clip", auto_map={"AutoConfig": "evil.EvilConfig"})
    (vision_with_code / "config.json").write_text(json.dumps(config))
    folders["vision backbone"] = str(vision_with_code)
    folders["vision image processor"] = str(shutil.copytree(tmp_path / "vision", tmp_path / "vision-processor"))
    asks_for_image_processor_code(tmp_path / "vision-processor", "preprocessor_config.json",
                                  markers["vision image processor"])

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", PROMPT_SCRIPT, str(REPO_ROOT), json.dumps(folders)],
                          input="y\n" * 20, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = [name for name, marker in markers.items() if marker.exists()]
    assert ran == [], f"code ran for {ran}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "Do you wish to run the custom code" not in proc.stdout + proc.stderr
