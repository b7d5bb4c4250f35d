"""The `moda` command: it answers --help without importing the model stack, and captions with this package's code."""

import os
import subprocess
import sys

import pytest

from moda.cli import COMMANDS, main, usage
from tests.conftest import REPO_ROOT


def test_help_lists_every_command_without_importing_torch_or_transformers():
    # a fresh interpreter: this test process has long imported torch
    script = ("import sys\nfrom moda.cli import main\nmain(['--help'])\n"
              "print('heavy:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    for name in COMMANDS:
        assert f"  {name} " in result.stdout
    assert "heavy: []" in result.stdout


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_package_version(capsys, flag):
    import moda

    assert main([flag]) == 0
    assert capsys.readouterr().out == f"moda {moda.__version__}\n"
    assert "moda --version" in usage()


def test_unknown_command_is_named_with_the_usage(capsys):
    assert main(["captoin"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'captoin'" in err and "caption-image" in err


def test_captioner_runs_this_packages_model_code_not_the_folders_copy(tiny_moda_dir):
    # A fresh process: in this one some other test has long registered MODA. Under transformers 5.x the registered
    # classes win over the folder's copy of the model files (which can be older, or someone else's from the Hub).
    script = ("import sys\nfrom moda.model.loading import load_captioner\n"
              "captioner = load_captioner(sys.argv[1])\n"
              "print('modules:', type(captioner.model).__module__, type(captioner.processor).__module__)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script, str(tiny_moda_dir)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "modules: modeling_moda processing_moda" in result.stdout, result.stdout


def _returns_a_summary(argv):
    return {"train_loss": 0.5}  # as train_hf.main does, for callers in Python


def test_a_command_that_returns_what_it_made_exits_with_success(monkeypatch):
    import train_hf

    # `moda train` runs train_hf.command_line, not train_hf.main (which returns its summary)
    assert COMMANDS["train"][:2] == ("moda.cli.train", "main")
    monkeypatch.setattr(train_hf, "command_line", lambda argv, prog: 7 if (argv, prog) == (["--help"], "moda train") else 0)
    assert main(["train", "--help"]) == 7
    monkeypatch.setitem(COMMANDS, "summary", ("tests.cli.test_cli", "_returns_a_summary", "returns a dict"))
    assert main(["summary"]) == 0
    monkeypatch.setitem(COMMANDS, "status", ("tests.cli.test_cli", "_returns_a_status", "returns 3"))
    assert main(["status"]) == 3


def _returns_a_status(argv):
    return 3


def test_caption_image_describes_each_readable_image_and_names_an_unreadable_one(tiny_moda_dir, tmp_path, red_image,
                                                                                capsys):
    image = tmp_path / "red.png"
    red_image.save(image)
    missing = tmp_path / "missing.jpg"
    assert main(["caption-image", str(tiny_moda_dir), str(image), str(missing), str(image)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(image), str(image)]
    assert lines[0] == lines[1] and lines[0].split("\t")[1]
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert errors == [f"moda caption-image: error: Image file not found: {str(missing)!r}"]


def test_caption_image_names_a_model_it_cannot_load(tmp_path, red_image, capsys):
    image = tmp_path / "red.png"
    red_image.save(image)
    assert main(["caption-image", str(tmp_path / "no-such-model"), str(image)]) == 1
    assert "no-such-model" in capsys.readouterr().err
    from moda.model.loading import load_captioner

    # offline (conftest): a Hub id that cannot be loaded is named, as an input error the commands report in one line
    with pytest.raises(FileNotFoundError, match="'someone/no-such-moda': no local model folder of that name"):
        load_captioner("someone/no-such-moda")
    with pytest.raises(SystemExit):
        main(["caption-image", str(tmp_path), str(image), "--max_new_tokens", "0"])
    assert "--max_new_tokens must be at least 1" in capsys.readouterr().err
