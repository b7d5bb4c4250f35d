"""The transformers 4.57 environment for the remote-code round trip: `python .ci/tf457_env.py .venv-tf457`.

A virtualenv of its own, with transformers 4.57 installed in it, that also sees every package of the interpreter
running this script (torch, PIL, ...), behind its own: its transformers shadows the 5.x one.
`python -m venv --system-site-packages` is not that when this script runs inside a virtualenv: it links the *base*
interpreter's site-packages, not the running virtualenv's, where CI installed everything. So the environment is
made plain, and a .pth file in it adds the running interpreter's site directories (with their own .pth files, as a
site directory's are read). Safe to run again: it rewrites the .pth file and pip installs only what is missing.
"""

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

TRANSFORMERS_4_57 = "transformers>=4.57,<4.58"
LINK_NAME = "moda-running-interpreter-site.pth"


def site_packages(python) -> Path:
    """The site-packages folder of the environment whose interpreter is `python`."""
    command = [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    return Path(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())


def environment_python(target) -> Path:
    return Path(target) / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def link_site_packages(target) -> Path:
    """Writes the .pth file that makes the environment at `target` see this interpreter's site directories after its
    own; returns its path."""
    own = site_packages(environment_python(target))
    # A line that starts with "import" is run: addsitedir also reads the .pth files of each directory it adds.
    lines = [f"import site; site.addsitedir({directory!r})" for directory in site.getsitepackages()
             if Path(directory).resolve() != own.resolve()]
    path = own / LINK_NAME
    path.write_text("\n".join(lines) + "\n")
    return path


def make_environment(target) -> Path:
    """Creates (where missing) the environment at `target`, links this interpreter's packages and installs
    transformers 4.57 into it; returns its interpreter."""
    python = environment_python(target)
    if not python.exists():
        venv.create(target, with_pip=True, symlinks=os.name != "nt")  # as `python -m venv` makes it
    link_site_packages(target)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", TRANSFORMERS_4_57], check=True)
    return python


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} ENVIRONMENT_FOLDER")
    print(make_environment(sys.argv[1]))
