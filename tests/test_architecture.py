"""The package's architecture, as .importlinter states it: moda's layers import one way (cli > hub_card > train |
catalog > evaluate > data | model > io), with no cycle; the root model files (the remote code the Hub serves) import
neither moda nor hub_card, and their tests (tests/model_files/) run without the workshop; and no module reaches into
another's private (underscore) names."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

MODEL_FILES = ("configuration_moda.py", "modeling_moda.py", "processing_moda.py", "pipeline_moda.py",
               "fast_generation_moda.py", "image_io_moda.py")
WORKSHOP_FILES = sorted([*REPO_ROOT.glob("moda/**/*.py"), *REPO_ROOT.glob("hub_card/**/*.py"),
                         REPO_ROOT / "app.py", REPO_ROOT / "train_hf.py"])


def relative(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def imports_in(path: Path):
    """(line, module) of every import in the file, at the top or inside a function (lazy imports count)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.lineno, node.module


def test_the_import_contract_holds():
    lint_imports = shutil.which("lint-imports")
    if lint_imports is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]'), so .importlinter is not checked")
    result = subprocess.run([lint_imports, "--no-cache", "--no-logo", "--config", str(REPO_ROOT / ".importlinter")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("name", MODEL_FILES)
def test_a_model_file_imports_neither_moda_nor_hub_card(name):
    """The model files travel to the Hub with the weights: the workshop around them must not leak into them."""
    found = [f"line {line}: {module}" for line, module in imports_in(REPO_ROOT / name)
             if module.split(".")[0] in ("moda", "hub_card", "train_hf", "app")]
    assert not found, f"{name} imports the workshop: {found}"


# Runs pytest with the workshop hidden: any import of moda, hub_card, train_hf or app fails, and none may be loaded.
WITHOUT_WORKSHOP = r"""
import sys
import pytest

WORKSHOP = ("moda", "hub_card", "train_hf", "app")


class HideWorkshop:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in WORKSHOP:
            raise ModuleNotFoundError(f"{name} is hidden: the model-file tests must not need the workshop", name=name)
        return None


sys.meta_path.insert(0, HideWorkshop())
code = pytest.main(sys.argv[1:])
loaded = sorted(name for name in sys.modules if name.split(".")[0] in WORKSHOP)
print("workshop modules loaded:", loaded)
sys.exit(code or (3 if loaded else 0))
"""


@pytest.mark.parametrize("arguments", [
    ["--collect-only", "tests/model_files"],                 # every model-file test collects (conftest included)
    ["tests/model_files/test_fast_generation.py"],            # and these run, on MODAModelTester's tiny models
], ids=["collect model_files", "run test_fast_generation"])
def test_model_file_tests_need_no_workshop(arguments):
    """The model files' tests need only those files, transformers and torch: conftest and tests/model_files/ import
    the workshop (moda, hub_card) only inside the fixtures and tests that build with it."""
    result = subprocess.run([sys.executable, "-c", WITHOUT_WORKSHOP, "-q", "-p", "no:cacheprovider", *arguments],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "workshop modules loaded: []" in result.stdout


def test_train_hf_does_not_import_the_moda_command():
    """`moda train` (moda.cli.train) runs train_hf: train_hf importing moda.cli (or app) would close a circle."""
    found = [f"line {line}: {module}" for line, module in imports_in(REPO_ROOT / "train_hf.py")
             if module == "app" or module == "moda.cli" or module.startswith("moda.cli.")]
    assert not found, f"train_hf.py imports {found}"


def repository_module(name: str) -> bool:
    """Whether `name` is a module or package of this repository (found by path: nothing is imported)."""
    path = REPO_ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_names_used(path: Path) -> list:
    """`from x import _y`, and `x._y` where x names a module of this repository that the file imports (import x /
    import x as m / from pkg import module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    modules, found = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    modules[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    modules[top] = top
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            for alias in node.names:
                if private(alias.name):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                elif repository_module(f"{node.module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            chain, base = [], node.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules:
                module = ".".join([modules[base.id], *reversed(chain)])
                if repository_module(module):  # (os._exit and the like are public, whatever their names)
                    found.append(f"line {node.lineno}: {module}.{node.attr}")
    return found


def test_the_private_name_check_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nimport moda.data.catalog as catalog\nfrom moda.data.catalog import _hidden\n"
                      "from moda.io import paths\n\n"
                      "def f(self):\n    return os._exit, catalog._load_hub_dataset, paths._x, self._own, os.__name__\n")
    assert private_names_used(sample) == ["line 3: from moda.data.catalog import _hidden",
                                          "line 7: moda.data.catalog._load_hub_dataset", "line 7: moda.io.paths._x"]


@pytest.mark.parametrize("path", WORKSHOP_FILES, ids=relative)
def test_no_module_uses_another_modules_private_names(path):
    """A name with a leading underscore is its module's own: a module that needs it elsewhere makes it public."""
    assert not private_names_used(path), f"{relative(path)} uses private names: {private_names_used(path)}"
