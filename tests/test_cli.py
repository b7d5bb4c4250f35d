"""The `moda` command's dispatcher: it answers --help without importing the model stack."""

import subprocess
import sys

from moda.cli import COMMANDS, main
from tests.conftest import REPO_ROOT


def test_help_lists_every_command_without_importing_torch_or_transformers():
    # a fresh interpreter: this test process has long imported torch
    script = ("import sys\nfrom moda.cli import main\nmain(['--help'])\n"
              "print('heavy:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    for name in COMMANDS:
        assert f"  {name} " in result.stdout
    assert "heavy: []" in result.stdout


def test_unknown_command_is_named_with_the_usage(capsys):
    assert main(["captoin"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'captoin'" in err and "caption-image" in err
