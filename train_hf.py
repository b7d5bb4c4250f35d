"""Train MODA with the Hugging Face Trainer.

    python train_hf.py                      # offline demo: synthetic catalog -> tiny MODA from scratch -> ./moda-demo
    python train_hf.py --model_size tiny --dataset ../shared/data/fashion-images --output_dir out
    python train_hf.py --dataset ../shared/data/fashion-images --output_dir out      # FashionCLIP + OPT-125m (Hub)
    python train_hf.py args.json            # the same arguments from a JSON file

Reads top to bottom: arguments -> catalog -> model -> cached image features -> Trainer (its --optim, fused AdamW by
default, with MODA's StepLR) -> metrics files and save -> held-out report -> card (and push). Each step is one function of moda.train; the card and the push are hub_card's.
"""

import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from transformers import set_seed

from hub_card import describe_hardware, prepare_model_folder, push_model_folder
from moda.io.errors import run_command
from moda.train.arguments import check_arguments, parse_arguments
from moda.train.data import examples_for_model, load_examples, training_texts
from moda.train.defaults import resolve_defaults, resolve_epochs
from moda.train.model import build_model
from moda.train.report import report_held_out
from moda.train.saving import (final_evaluation, save_final_model, save_loss_curves, save_run_metrics,
                               write_summary)
from moda.train.trainer import attribute_vocabulary, build_trainer, take_over_push


def main(argv=None, prog: str = "train_hf.py"):
    model_args, data_args, training_args, given = parse_arguments(argv, prog)
    check_arguments(model_args, data_args, training_args, given)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    resolve_defaults(model_args, data_args, training_args, given)
    set_seed(training_args.seed)
    started = time.time()

    # 1. Catalog -> (image, prompt, description) examples.
    catalog, splits, bad_rows = load_examples(data_args, training_args.seed)
    resolve_epochs(model_args, data_args, training_args, given, len(splits["train"]))
    # 2. Model and processor (a from-scratch tokenizer learns the training captions and questions).
    model, processor = build_model(model_args, data_args, training_args, training_texts(splits["train"]))
    # 3. Image features, computed once and cached on disk.
    splits, feature_name = examples_for_model(model, processor, model_args.architecture, splits, data_args, bad_rows)
    # 4. The Trainer (its optimizer, MODA's StepLR unless --lr_scheduler_type says otherwise); attribute scores on a
    # validation sample; a final evaluation (--do_eval).
    vocabulary = attribute_vocabulary(catalog)
    push_to_hub = take_over_push(training_args)
    trainer = build_trainer(model, processor, splits, feature_name, vocabulary, model_args, data_args, training_args)
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    eval_metrics = final_evaluation(trainer, len(splits["validation"])) if training_args.do_eval else None

    # 5. Save a folder that pipeline("image-to-text", trust_remote_code=True) loads, then the example scripts' files:
    # train_results.json, eval_results.json, all_results.json, trainer_state.json.
    output_dir = Path(training_args.output_dir)
    final_model = save_final_model(trainer, model, processor, output_dir)
    save_run_metrics(trainer, train_result, len(splits["train"]), eval_metrics)
    if not trainer.is_world_process_zero():
        return
    save_loss_curves(trainer.state.log_history, output_dir / "loss_curves.png")

    # 6. Held-out evaluation: captions next to the truth and per-attribute accuracy; the summary.
    held_out = report_held_out(final_model, processor, splits, feature_name, vocabulary)
    print(bad_rows.summary())
    summary = {"dataset": data_args.catalog_name, **held_out, "train_runtime_s": round(time.time() - started, 1),
               "global_step": trainer.state.global_step, "world_size": training_args.world_size,
               "bad_rows": [{"where": where, "reason": reason} for where, reason in bad_rows.rows],
               "model_args": asdict(model_args)}
    write_summary(output_dir, summary)

    # 7. The model card (README.md) and the Inference Endpoints handler; then one push of the finished folder.
    finish_model_folder(output_dir, model_args, data_args, training_args, push_to_hub, len(splits["train"]))
    print(f"saved to {output_dir}/ ({summary['train_runtime_s']} s)")
    return summary


def finish_model_folder(output_dir, model_args, data_args, training_args, push_to_hub: bool, num_train_items: int):
    """hub_card's part (above moda.train): the model card and handler of a MODA folder, then one push if asked."""
    hub_id = training_args.hub_model_id if push_to_hub else None
    if model_args.architecture == "moda":  # the BLIP baseline is a plain transformers model: no MODA card
        prepare_model_folder(output_dir, repo_id=hub_id, training_info={
            "hardware": describe_hardware(), "num_train_items": num_train_items})
    if push_to_hub:
        commit = push_model_folder(output_dir, hub_id, revision=getattr(training_args, "hub_revision", None),
                                   private=training_args.hub_private_repo or None, token=training_args.hub_token,
                                   commit_message=f"MODA trained on {data_args.catalog_name}")
        print(f"pushed to {hub_id} at commit {commit} (pin it with revision=)")


def command_line(argv=None, prog: str = "train_hf.py") -> int:
    """`python train_hf.py` and `moda train` (prog: the name --help shows): main's summary is for callers in Python; on
    the command line a wrong input is one error line and exit status 1, as the moda commands give it."""
    def train(argv):
        main(argv, prog)
        return 0

    return run_command("train_hf.py", train, argv)


if __name__ == "__main__":
    sys.exit(command_line())
