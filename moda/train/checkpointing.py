"""Checkpoints and final models that only ever appear complete.

The Trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG states, trainer_state.json). Killed
half-way, it would leave a `checkpoint-N` folder that resumes "successfully" with a fresh optimizer or from step 0:
valid but wrong. Here each checkpoint is written into a hidden staging folder and published with one rename.

The final model goes to the top of the output folder, next to the checkpoints, so it cannot arrive in one rename:
it is written into FINAL_STAGING_DIR and its files are moved in one by one (publish_staged_folder), each whole.
"""

import contextlib
import os
import re
import shutil
from pathlib import Path

from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from moda.io.paths import fsync_directory

STAGING_DIR = ".staging"
# Where train_hf.py writes the final model before moving it to the top of the output folder.
FINAL_STAGING_DIR = ".staging-final"
# Weights files as save_pretrained names them (one file, or shards and the index that names them).
WEIGHTS_FILE = re.compile(r"(?:model|pytorch_model)(?:-\d+-of-\d+)?\.(?:safetensors|bin)")
WEIGHTS_INDEX = re.compile(r"(?:model\.safetensors|pytorch_model\.bin)\.index\.json")


def weights_last(path: Path) -> int:
    """Publishing order: other files first, then weights files, then a sharded model's index (which names them)."""
    if WEIGHTS_INDEX.fullmatch(path.name):
        return 2
    return 1 if WEIGHTS_FILE.fullmatch(path.name) else 0


def publish_staged_folder(staging, output_dir) -> None:
    """
    Moves every file of the folder `staging` into `output_dir` with os.replace, weights last, then removes the
    weights files of an earlier save that this one does not have (a single model.safetensors would be loaded
    before a new sharded model's index) and `staging`. A reader of output_dir sees each file old or new and whole,
    never a torn weights file, and a failure part-way leaves the files not yet moved as they were. A sub-folder (a
    LoRA run's adapter/) replaces the one of its name whole.
    """
    staging, output_dir = Path(staging), Path(output_dir)
    published = set()
    for entry in sorted(staging.iterdir(), key=lambda path: (weights_last(path), path.name)):
        target = output_dir / entry.name
        if entry.is_dir() and target.is_dir():
            os.replace(target, staging / f".replaced-{entry.name}")
        os.replace(entry, target)
        published.add(entry.name)
    for path in output_dir.iterdir():
        if weights_last(path) and path.name not in published and path.is_file():
            path.unlink()
    fsync_directory(output_dir)
    shutil.rmtree(staging)


class AtomicCheckpointTrainer(Trainer):
    """A Trainer whose `checkpoint-N` folders appear in one rename, once every file in them is written."""

    def _save_checkpoint(self, model, trial):
        run_dir = super()._get_output_dir(trial)
        staging_root = os.path.join(run_dir, STAGING_DIR)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        get_output_dir = self._get_output_dir
        self._get_output_dir = lambda trial: staging_root  # the Trainer writes checkpoint-N under .staging/
        try:
            super()._save_checkpoint(model, trial)
        except BaseException:
            if self.args.should_save:  # (a full disk): the half-written checkpoint is not left behind
                shutil.rmtree(os.path.join(staging_root, name), ignore_errors=True)
                with contextlib.suppress(OSError):  # (not empty: another checkpoint's, removed at the next one)
                    os.rmdir(staging_root)
            raise
        finally:
            self._get_output_dir = get_output_dir
        self.accelerator.wait_for_everyone()  # every rank's RNG state is in the staging folder
        # A checkpoint that is the best so far was recorded at its staging path (every rank keeps that record, and
        # loads the best model from it at the end): it is published under run_dir.
        best = self.state.best_model_checkpoint
        staged_best = bool(best) and best.startswith(staging_root + os.sep)
        if staged_best:
            self.state.best_model_checkpoint = os.path.join(run_dir, best[len(staging_root + os.sep):])
        if self.args.should_save:
            staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
            if staged_best:  # its trainer_state.json (what a resume reads) must name the published folder too
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
            if os.path.isdir(final):  # saving the same step again (e.g. after a resume): replace it whole
                os.replace(final, staged + ".old")
            os.replace(staged, final)
            fsync_directory(run_dir)
            self._rotate_published_checkpoints(run_dir)
        self.accelerator.wait_for_everyone()

    def _rotate_published_checkpoints(self, run_dir):
        from transformers.trainer_utils import rotate_checkpoints

        shutil.rmtree(os.path.join(run_dir, STAGING_DIR), ignore_errors=True)
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )
