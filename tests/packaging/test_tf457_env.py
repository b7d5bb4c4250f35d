"""The transformers 4.57 environment that .ci/run makes (.ci/tf457_env.py) sees the packages of the interpreter that
made it, behind its own, also when that interpreter is a virtualenv's: CI on a fresh clone may run in one, with
torch and PIL installed there and not in the base interpreter that `venv --system-site-packages` would link.

The environments here are made without pip (transformers 4.57 is not installed: a stand-in package shows what wins).
"""

import importlib.util
import json
import subprocess
import venv

from tests.conftest import REPO_ROOT

SCRIPT_PATH = REPO_ROOT / ".ci" / "tf457_env.py"
spec = importlib.util.spec_from_file_location("tf457_env", SCRIPT_PATH)
tf457_env = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tf457_env)

# What a linked environment imports, and from where.
PROBE = """
import importlib.util, json
import transformers
print(json.dumps({"transformers": transformers.__version__,
                  **{name: getattr(importlib.util.find_spec(name), "origin", None)
                     for name in ("PIL", "torch", "installed_in_outer")}}))
"""


def probe(python) -> dict:
    proc = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def add_stand_in_transformers(environment):
    package = tf457_env.site_packages(tf457_env.environment_python(environment)) / "transformers"
    package.mkdir()
    (package / "__init__.py").write_text("__version__ = '4.57.0 (stand-in)'\n")


def test_the_environment_sees_this_interpreters_packages_behind_its_own(tmp_path):
    environment = tmp_path / "tf457"
    venv.create(environment, with_pip=False)
    tf457_env.link_site_packages(environment)
    add_stand_in_transformers(environment)
    found = probe(tf457_env.environment_python(environment))
    assert found["transformers"] == "4.57.0 (stand-in)"  # its own transformers shadows this interpreter's 5.x
    for name in ("PIL", "torch"):
        assert found[name] and not found[name].startswith(str(environment)), found


def test_made_from_inside_a_virtualenv_it_sees_that_virtualenvs_packages(tmp_path):
    outer = tmp_path / "outer"
    venv.create(outer, with_pip=False)  # a virtualenv whose packages are its own, as CI's on a fresh clone
    outer_site = tf457_env.site_packages(tf457_env.environment_python(outer))
    (outer_site / "installed_in_outer.py").write_text("")
    environment = tmp_path / "tf457"
    make = (f"import importlib.util, sys, venv\n"
            f"spec = importlib.util.spec_from_file_location('tf457_env', {str(SCRIPT_PATH)!r})\n"
            f"module = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(module)\n"
            f"venv.create({str(environment)!r}, with_pip=False)\nmodule.link_site_packages({str(environment)!r})\n")
    subprocess.run([str(tf457_env.environment_python(outer)), "-c", make], check=True, timeout=120)
    add_stand_in_transformers(environment)
    found = probe(tf457_env.environment_python(environment))
    assert found["installed_in_outer"] == str(outer_site / "installed_in_outer.py")
    assert found["transformers"] == "4.57.0 (stand-in)"
