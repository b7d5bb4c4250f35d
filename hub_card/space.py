"""A Hugging Face Space that describes product photos with a MODA model on the Hub (`moda space MODEL SPACE_ID`).

    make_space("your-name/moda", "your-name/moda-demo")                  # writes the Space, creates it, uploads it
    make_space("your-name/moda", "your-name/moda-demo", output_dir="space")   # only writes the folder

What a Space needs to start: README.md's front matter (sdk: gradio at the installed gradio's version, app_file), the
app, and the PyPI packages requirements.txt names. The moda package is not on PyPI, so the Space's app.py is
hub_card/space_app.py, which imports none of it: it describes photos with the model's own code (trust_remote_code),
from the model repo at the commit its revision pointed to when the Space was written (space.json), under the copy of
image_io_moda.py written next to it, and shows example photos drawn by moda/data/synthetic.py. Search needs the moda
package (a FAISS index, a sentence embedder), so the Space only describes; app.py in the repository does both.
"""

import json
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from huggingface_hub import HfApi, SpaceCardData
from huggingface_hub.errors import HfHubHTTPError

from hub_card.card import HUB_ID, write_image_io
from hub_card.push import connection_errors
from hub_card.space_app import EXAMPLES_NAME, SETTINGS_NAME
from moda.data.synthetic import draw_examples
from moda.io.paths import write_atomically
from moda.model.loading import MODA_MODEL_TYPE, read_model_config

SPACE_APP_SOURCE = Path(__file__).with_name("space_app.py")
# What the Space's app needs from PyPI beyond gradio (which the Space's SDK installs at sdk_version): the model code's
# packages, pinned to the versions installed here, which that code was run with.
REQUIREMENTS = ("torch", "transformers", "pillow")
NUM_EXAMPLES = 4
# The card's looks, and the license when the model's card names none (as hub_card's model card does by default).
CARD_LOOKS = {"emoji": "👗", "colorFrom": "pink", "colorTo": "indigo",
              "short_description": "Describe fashion product photos with MODA"}
DEFAULT_LICENSE = "other"
IGNORE_PATTERNS = ["__pycache__/**", "*.pyc"]


def make_space(model: str, space_id: str, revision: str = None, private: bool = None, output_dir=None,
               token: str = None) -> dict:
    """Writes the Space folder for `model` at `revision` (default: main) and, without `output_dir`, creates the Space
    `space_id` (if needed) and uploads it. Returns {"model_commit", "folder" (None once uploaded), "space_commit"
    (None when only written)}. A wrong input, a refusal of the Hub or a Hub out of reach raises ValueError naming it."""
    if not isinstance(space_id, str) or not HUB_ID.fullmatch(space_id):
        raise ValueError(f"SPACE_ID must be 'namespace/name'; got {space_id!r}.")
    if output_dir is not None and private is not None:
        raise ValueError("--private is a setting of the Space on the Hub, and with --output_dir nothing is pushed: "
                         "it would be ignored.")
    try:
        model_commit, licence = resolve_model(model, revision, token)
        if output_dir is not None:
            folder = write_space_folder(output_dir, model, model_commit, licence, space_id)
            return {"model_commit": model_commit, "folder": folder, "space_commit": None}
        with tempfile.TemporaryDirectory() as temporary:
            folder = write_space_folder(Path(temporary) / "space", model, model_commit, licence, space_id)
            space_commit = push_space(folder, space_id, model, model_commit, private, token)
        return {"model_commit": model_commit, "folder": None, "space_commit": space_commit}
    except HfHubHTTPError as err:  # no token, no write access, a name taken...
        raise ValueError(f"the Hub refused the Space {space_id} for {model}: {' '.join(str(err).split())}") from err
    except connection_errors() as err:  # offline (HF_HUB_OFFLINE=1), or the Hub's name does not resolve
        raise ValueError(f"cannot reach the Hub for the Space {space_id} of {model}: {err}") from err


def resolve_model(model: str, revision: str = None, token: str = None) -> tuple:
    """(commit hash, licence fields) of the MODA model repo `model` at `revision` on the Hub. A local folder, a repo that is
    not there, or a model that is not MODA saved with its code raises ValueError."""
    if not isinstance(model, str) or Path(model).exists() or not HUB_ID.fullmatch(model):
        raise ValueError(f"MODEL {model!r} is not a model repo on the Hub (namespace/name): a Space loads its model "
                         "from the Hub, so push a model folder first (moda push FOLDER NAMESPACE/NAME) and name that.")
    where = f"MODEL {model!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        info = HfApi(token=token).model_info(model, revision=revision)
    except HfHubHTTPError as err:  # RepositoryNotFoundError, RevisionNotFoundError, ...
        raise ValueError(f"{where} cannot be found on the Hub ({' '.join(str(err).split())})") from err
    config = read_model_config(model, revision=info.sha, label="MODEL")
    if config["model_type"] != MODA_MODEL_TYPE or not config.get("auto_map"):
        raise ValueError(f"{where} is not a MODA model saved with its code (model_type {config['model_type']!r}, "
                         f"auto_map {config.get('auto_map')!r}): the Space runs the model repo's own MODA code.")
    card_data = info.card_data or {}
    license_name = card_data.get("license", DEFAULT_LICENSE)
    if not isinstance(license_name, str) or not license_name:
        raise ValueError(f"{where}: its model card's license must be one license id; got {license_name!r}.")
    # `other` needs its name and link on the Hub: the Space carries the model card's.
    licence = {"license": license_name}
    licence.update({key: card_data[key] for key in ("license_name", "license_link") if card_data.get(key)})
    return info.sha, licence


def write_space_folder(folder, model: str, model_commit: str, licence: dict, space_id: str) -> Path:
    """Writes the Space into `folder` (new, empty, or one written so before, whose files are replaced): app.py,
    space.json, image_io_moda.py, requirements.txt, README.md and examples/."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder: the Space is written into a folder.")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / SETTINGS_NAME).is_file():
        raise ValueError(f"{folder} is a non-empty folder without {SETTINGS_NAME}, so not one a Space was written into: "
                         "refusing to write into it; give a new or empty folder.")
    folder.mkdir(parents=True, exist_ok=True)
    # Each file is written aside and renamed over its name: a link planted in a folder written before is replaced,
    # never followed out of the folder.
    write_text_file(folder / "app.py", SPACE_APP_SOURCE.read_text(encoding="utf-8"))
    write_image_io(folder)
    settings = {"model": model, "revision": model_commit}
    write_text_file(folder / SETTINGS_NAME, json.dumps(settings, indent=2) + "\n")
    write_text_file(folder / "requirements.txt", "".join(f"{line}\n" for line in requirements()))
    write_text_file(folder / "README.md", space_card(model, model_commit, licence, space_id))
    if (folder / EXAMPLES_NAME).is_dir():  # written before: the examples are replaced whole
        shutil.rmtree(folder / EXAMPLES_NAME)
    draw_examples(folder / EXAMPLES_NAME, num_items=NUM_EXAMPLES)
    return folder


def write_text_file(path: Path, text: str) -> None:
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def installed_version(package: str) -> str:
    """The installed version of `package`, without a local label (torch's "+cpu"), as PyPI knows it."""
    try:
        return version(package).split("+")[0]
    except PackageNotFoundError:
        raise ValueError(f"{package} is not installed, and the Space takes its version from this installation "
                         "(pip install -e '.[app]').") from None


def requirements() -> list:
    """requirements.txt's lines: the packages the Space's app and the model's code import, as installed here."""
    return [f"{package}=={installed_version(package)}" for package in REQUIREMENTS]


def space_card(model: str, model_commit: str, licence: dict, space_id: str) -> str:
    """The Space's README.md: the front matter the Hub starts the Space from, and what it runs."""
    data = SpaceCardData(title=space_id.split("/")[1], sdk="gradio", sdk_version=installed_version("gradio"),
                         app_file="app.py", models=[model], **licence, **CARD_LOOKS)
    return (f"---\n{data.to_yaml()}\n---\n\n# {space_id.split('/')[1]}\n\n"
            f"Describes a fashion product photo with the MODA model [{model}](https://huggingface.co/{model}), run by "
            f"the model's own code at commit `{model_commit}` (space.json): a later push to the model changes this "
            "Space only when `moda space` writes it again.\n\n"
            "`app.py` needs gradio and the packages of `requirements.txt`, not the moda package; images are read "
            "under MODA's policy (`image_io_moda.py`: formats, size and pixel limits, checked before decoding).\n")


def push_space(folder, space_id: str, model: str, model_commit: str, private: bool = None, token: str = None) -> str:
    """Creates the Gradio Space `space_id` (if needed) and uploads `folder` to it in one commit; returns its hash.
    Example photos already in the Space are replaced by the folder's; other files its owner added stay."""
    api = HfApi(token=token)
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=folder, repo_id=space_id, repo_type="space",
                               commit_message=f"MODA Space for {model} at {model_commit[:12]}",
                               ignore_patterns=IGNORE_PATTERNS, delete_patterns=[f"{EXAMPLES_NAME}/*"])
    return commit.oid
