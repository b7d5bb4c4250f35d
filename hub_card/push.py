"""`moda push FOLDER USER/NAME`: upload a trained MODA folder to the Hub with its card and endpoint handler.

    moda push moda-demo user/moda-demo
    moda push out user/moda --revision experiment --private --commit_message "Epoch 12"

Prints the commit hash: pin it with `revision=` when loading, since `trust_remote_code` runs the repo's code.
The Hub address comes from huggingface_hub (HF_ENDPOINT), the token from HF_TOKEN or `hf auth login`.
"""

import importlib
import json
import sys
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from transformers.dynamic_module_utils import get_relative_imports

from hub_card.card import (CARD_NAME, EXAMPLE_PRODUCTS, EXAMPLES_DIR, HANDLER_NAME, IMAGE_IO_NAME,
                           PLACEHOLDER_REPO_ID, PLACEHOLDER_REVISION, read_moda_config, write_example_images,
                           write_handler, write_image_io, write_model_card)
from moda.io.errors import run_command
from moda.io.options import add_option, command_parser
from moda.io.paths import write_atomically

# Never uploaded: Trainer checkpoints and logs inside an output folder, and pickles (a MODA folder's weights
# are safetensors; a pickle runs code when loaded).
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "runs/**", ".cache/**", "*.bin", "*.pt", "*.pth", "*.pkl",
                   "*.pickle", ".*.lock", ".staging*", "__pycache__/**", "*.pyc"]


def model_code_files(folder: Path, config: dict) -> set:
    """The .py files config.json's auto_map names and those they import relatively, as transformers needs them (e.g.
    modeling_moda.py imports fast_generation_moda.py, which no auto_map entry names)."""
    names = {reference.split(".")[0] + ".py" for reference in (config.get("auto_map") or {}).values()}
    pending = sorted(names)
    while pending:
        path = folder / pending.pop()
        if path.is_file():
            # transformers' own reading of the relative imports: the files it will look for at load time
            for module in get_relative_imports(path):
                name = f"{module}.py"
                if name not in names:
                    names.add(name)
                    pending.append(name)
    return names


def validate_model_folder(folder) -> Path:
    """A folder holding a MODA config.json, safetensors weights and the model code its auto_map names (with the
    files that code imports)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Model folder not found: {folder}")
    config = read_moda_config(folder)
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        raise ValueError(
            f"{folder} has no safetensors weights (model.safetensors or model.safetensors.index.json): save the "
            "model with save_pretrained (safe_serialization is the default)."
        )
    code_files = model_code_files(folder, config)
    missing = sorted(name for name in code_files if not (folder / name).is_file())
    if not code_files or missing:
        raise ValueError(
            f"{folder} lacks model code that its config.json names or that code imports ({missing or 'no auto_map'}): "
            "save the model with MODAForConditionalGeneration.save_pretrained, which copies the MODA .py files."
        )
    return folder


def push_model_folder(folder, repo_id: str, revision: str = None, private: bool = None, commit_message: str = None,
                      token: str = None, training_info: dict = None, eval_report=None) -> str:
    """Uploads `folder` to `repo_id` (created if needed) in one commit and returns that commit's hash.

    The card (README.md) and handler.py are written first where the folder has none; an existing card is kept
    (it may have been edited by hand), but for its usage examples' placeholder repo id, which becomes `repo_id`.
    Where the card's usage examples name the placeholder revision, a second commit names the returned hash there
    instead (the folder's card keeps the placeholder, for its next push).
    `training_info` and `eval_report` fill a new card: with an existing one they are refused, not dropped.
    `revision` is a branch, created from main when missing.
    """
    folder = validate_model_folder(folder)
    if "/" not in repo_id:
        raise ValueError(f"repo_id must be 'namespace/name'; got {repo_id!r}.")
    card = folder / CARD_NAME
    if not card.is_file():
        write_model_card(folder, training_info, eval_report, repo_id=repo_id)
    elif training_info or eval_report:
        given = " and ".join(name for name, value in (("training_info", training_info), ("eval_report", eval_report))
                             if value)
        raise ValueError(f"{card} exists, so the {given} given would not be used (an existing card is kept: it may "
                         f"have been edited by hand): delete it to write a new card with them, or write one with "
                         f"hub_card.prepare_model_folder.")
    elif PLACEHOLDER_REPO_ID in card.read_text(encoding="utf-8"):
        text = card.read_text(encoding="utf-8").replace(PLACEHOLDER_REPO_ID, repo_id)
        write_atomically(card, lambda handle: handle.write(text.encode("utf-8")))
    card_text = card.read_text(encoding="utf-8")
    if f"/{EXAMPLES_DIR}/" in card_text and not all((folder / EXAMPLES_DIR / name).is_file()
                                                    for name in EXAMPLE_PRODUCTS):
        write_example_images(folder)  # a kept card whose widget shows them, from a folder that lacks them
    if not (folder / HANDLER_NAME).is_file():
        write_handler(folder)
    elif not (folder / IMAGE_IO_NAME).is_file():  # a handler kept from a folder saved without it: it imports it
        write_image_io(folder)

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        revision=revision,
        commit_message=commit_message or f"Upload MODA model from {folder.resolve().name}",
        ignore_patterns=IGNORE_PATTERNS,
    )
    if PLACEHOLDER_REVISION in card_text:
        api.upload_file(
            path_or_fileobj=card_text.replace(PLACEHOLDER_REVISION, commit.oid).encode("utf-8"),
            path_in_repo=CARD_NAME,
            repo_id=repo_id,
            revision=revision,
            commit_message=f"Pin the card's usage examples to {commit.oid}",
            parent_commit=commit.oid,  # refused if another commit came in between: the card names this one
        )
    return commit.oid


def main(argv=None) -> int:
    parser = command_parser("push", __doc__)
    parser.add_argument("folder", help="a MODA model folder (as train_hf.py leaves one)")
    parser.add_argument("repo_id", help="the Hub repository, namespace/name")
    add_option(parser, "revision", "branch", default=None,
               help="the branch to push to (created when missing; default: main)")
    add_option(parser, "private", action="store_true", default=None, help="create the repository private")
    add_option(parser, "commit_message", default=None, help="default: Upload MODA model from FOLDER")
    add_option(parser, "training_info", default=None,
               help="a JSON file of training facts for a new card (keys: hub_card.TRAINING_INFO_KEYS)")
    args = parser.parse_args(argv)
    return run_command("moda push", push, args)


def push(args) -> int:
    training_info = read_training_info_file(args.training_info) if args.training_info else None
    try:
        sha = push_model_folder(args.folder, args.repo_id, revision=args.revision, private=args.private,
                                commit_message=args.commit_message, training_info=training_info)
    except HfHubHTTPError as err:  # no token, no write access, a bad branch name...
        raise ValueError(f"the Hub refused the upload of {args.folder} to {args.repo_id}: {err}") from err
    except connection_errors() as err:  # offline, or the Hub's name does not resolve
        raise ValueError(f"cannot reach the Hub to upload {args.folder} to {args.repo_id}: {err}") from err
    print(f"pushed {args.folder} to {args.repo_id} at commit {sha}")
    print(f'load it pinned: AutoModel.from_pretrained("{args.repo_id}", trust_remote_code=True, revision="{sha}")')
    print(sha)
    return 0


def connection_errors() -> tuple:
    """The errors of "could not connect": huggingface_hub's HTTP library (httpx2, httpx or requests, by version) has
    its own, which share no base class with ConnectionError."""
    errors = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def read_training_info_file(path) -> dict:
    """--training_info: a JSON object of training facts (a missing file or invalid JSON is named)."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"--training_info {path!r}: no such file.") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--training_info {path!r} is not valid JSON: {err}") from None
    if not isinstance(info, dict):
        raise ValueError(f"--training_info {path!r} must hold a JSON object of training facts; got "
                         f"{type(info).__name__}.")
    return info


if __name__ == "__main__":
    sys.exit(main())
