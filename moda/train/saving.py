"""What a run leaves in its output folder: the final model (never torn), the example scripts' metrics files, the loss
curves and the training summary."""

import json
import math
import shutil

from moda.evaluate.report import pyplot
from moda.io.paths import write_atomically
from moda.train.checkpointing import FINAL_STAGING_DIR, publish_staged_folder


def save_final_model(trainer, model, processor, output_dir):
    """
    Saves the trained model into output_dir (write_final_model), through a staging folder whose files are then moved
    in one by one, weights last (moda.train.checkpointing.publish_staged_folder): a save that fails or is killed half-way
    leaves the earlier model in output_dir whole, never a torn model.safetensors. A failed save removes its staging
    folder; one that a killed save left is removed by the next save.
    """
    main_process = trainer.is_world_process_zero()
    staging = output_dir / FINAL_STAGING_DIR
    if main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    trainer.accelerator.wait_for_everyone()  # (DeepSpeed and FSDP write from every rank)
    try:
        model = write_final_model(trainer, model, processor, staging)
        trainer.accelerator.wait_for_everyone()
        if main_process:
            publish_staged_folder(staging, output_dir)
    except BaseException:
        if main_process:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return model


def write_final_model(trainer, model, processor, output_dir):
    """Writes the trained model; a LoRA run saves its adapter in adapter/ and the merged full model at the top."""
    if hasattr(model, "merge_and_unload"):
        if trainer.is_world_process_zero():
            model.save_pretrained(output_dir / "adapter")
        model = model.merge_and_unload()
        if trainer.is_world_process_zero():
            model.save_pretrained(output_dir)
            processor.save_pretrained(output_dir)
    else:
        trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        # The final folder holds no pickle: the arguments go to JSON (checkpoints keep the Trainer's own files).
        (output_dir / "training_args.bin").unlink(missing_ok=True)
        (output_dir / "training_args.json").write_text(trainer.args.to_json_string())
    return model


def final_evaluation(trainer, num_eval_examples: int) -> dict:
    """The validation split's loss and perplexity after training (and the attribute scores, where the callback runs),
    as run_clm.py reports them."""
    metrics = trainer.evaluate()
    metrics["eval_samples"] = num_eval_examples
    metrics["perplexity"] = math.exp(metrics["eval_loss"]) if metrics["eval_loss"] < 700 else math.inf
    return metrics


def save_run_metrics(trainer, train_result, num_train_examples: int, eval_metrics: dict = None) -> None:
    """
    train_results.json, eval_results.json (after a final evaluation), all_results.json and trainer_state.json, as
    transformers' example scripts write them. Written after the final model, which they describe: a save that fails
    leaves the earlier model's.
    """
    train_metrics = {**train_result.metrics, "train_samples": num_train_examples}
    for split, metrics in (("train", train_metrics), ("eval", eval_metrics)):
        if metrics is not None:
            trainer.log_metrics(split, metrics)
            trainer.save_metrics(split, metrics)
    trainer.save_state()


def save_loss_curves(log_history, path):
    plt = pyplot()
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evals = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="training loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("MODA training")
    ax.legend()
    fig.tight_layout()
    write_atomically(path, lambda handle: fig.savefig(handle, format="png", dpi=120))
    plt.close(fig)


def write_summary(output_dir, summary: dict) -> None:
    write_atomically(output_dir / "training_summary.json",
                     lambda handle: handle.write(json.dumps(summary, indent=2).encode("utf-8")))
