"""Checkpoints that only ever appear complete.

The Trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG states, trainer_state.json). Killed
half-way, it would leave a `checkpoint-N` folder that resumes "successfully" with a fresh optimizer or from step 0:
valid but wrong. Here each checkpoint is written into a hidden staging folder and published with one rename.
"""

import os

from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from moda.paths import fsync_directory

STAGING_DIR = ".staging"


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
        import shutil

        from transformers.trainer_utils import rotate_checkpoints

        shutil.rmtree(os.path.join(run_dir, STAGING_DIR), ignore_errors=True)
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )
