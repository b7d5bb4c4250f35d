"""pyproject.toml builds the wheel users install: its files, its metadata and the one version moda.__version__ holds.

The wheel is built from the checkout's tracked files (and the new, not ignored, ones) copied aside (the build writes build/ and *.egg-info next to
its sources), without build isolation: the installed setuptools builds it, offline.
"""

import email
import shutil
import subprocess
import sys
import zipfile

import pytest

import moda
from tests.conftest import REPO_ROOT

MODEL_FILES = ["configuration_moda.py", "modeling_moda.py", "processing_moda.py", "pipeline_moda.py",
               "fast_generation_moda.py", "image_io_moda.py"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("building the wheel copies the checkout's tracked files: needs git and a git checkout")
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    source = tmp_path_factory.mktemp("source")
    for name in tracked.decode().split("\0"):
        if name and (REPO_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           str(source), "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (path,) = out.glob("*.whl")
    return path


def wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        return email.message_from_bytes(archive.read(f"moda_vlm-{moda.__version__}.dist-info/METADATA"))


def test_the_wheel_holds_the_model_files_the_packages_and_their_data(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert wheel.name == f"moda_vlm-{moda.__version__}-py3-none-any.whl"  # the version is moda.__version__
    assert set(MODEL_FILES) | {"train_hf.py"} <= names
    sources = {path.relative_to(REPO_ROOT).as_posix() for folder in ("moda", "hub_card")
               for path in (REPO_ROOT / folder).rglob("*.py") if "__pycache__" not in path.parts}
    assert sources <= names, sorted(sources - names)  # moda/metrics' metric script among them, as package data
    assert {"hub_card/template.md", "moda/metrics/fashion_attributes/fashion_attributes.py"} <= names
    assert f"moda_vlm-{moda.__version__}.dist-info/licenses/LICENSE" in names
    assert not any(name.startswith(("tests/", "benchmarks/")) or name == "app.py" for name in names)
    with zipfile.ZipFile(wheel) as archive:
        entry_points = archive.read(f"moda_vlm-{moda.__version__}.dist-info/entry_points.txt").decode()
    assert "moda = moda.cli:main" in entry_points


def test_the_wheel_metadata_names_the_distribution_licence_and_requirements(wheel):
    metadata = wheel_metadata(wheel)
    assert metadata["Name"] == "moda-vlm" and metadata["Version"] == moda.__version__
    assert metadata["License-Expression"] == "Apache-2.0"
    requirements = metadata.get_all("Requires-Dist")
    assert "torch>=2.1" in requirements  # no upper cap: pip never has to replace an installed torch
    assert "transformers<6,>=5.0" in requirements
    extras = {}
    for requirement in requirements:
        if "; extra ==" in requirement:
            name, extra = requirement.split("; extra ==")
            extras.setdefault(extra.strip().strip('"'), set()).add(name.strip())
    assert set(extras) == {"eval", "search", "app", "dev", "all"}
    for tool in ("pytest", "pytest-timeout", "hypothesis", "import-linter", "playwright", "nbclient", "ipykernel"):
        assert tool in extras["dev"] and tool not in extras["app"], tool
    assert extras["all"] == {"moda-vlm[app,dev,eval,search]"}  # every other extra
