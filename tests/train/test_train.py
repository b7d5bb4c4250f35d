"""train_hf.py: masks, StepLR, gradient accumulation, feature cache, resume, LoRA, two stages, DDP, the demo."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import train_hf
from modeling_moda import MODAForConditionalGeneration
import moda.train.data
from moda.train.arguments import MODATrainingArguments, check_arguments, parse_arguments
from moda.train.defaults import resolve_demo_defaults, resolve_device_defaults, resolve_epochs
from moda.train.model import use_training_attention
from moda.train.optim import step_lr_schedule
from moda.train.trainer import MODATrainer, mean_tokens_per_example
from moda.train.collate import MODACollator
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
    from moda.data.synthetic import make_catalog

    return make_catalog(tmp_path_factory.mktemp("catalog") / "data", num_items=80, image_size=32, seed=0)


def run(tmp_path, catalog_dir, *extra, name="out"):
    output = tmp_path / name
    size = [] if "--model_name_or_path" in extra else ["--model_size", "test"]  # a trained model has its size
    argv = [
        "--dataset", str(catalog_dir), "--output_dir", str(output), *size,
        "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--logging_steps", "1",
        "--eval_steps", "5", "--save_steps", "5", "--feature_cache_dir", str(tmp_path / "cache"),
        "--tokenizer_vocab_size", "300", "--disable_tqdm", "true", *extra,
    ]
    summary = train_hf.main(argv)
    return output, summary


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weights(path):
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_collator_masks_bos_prompt_and_padding(tiny_model_and_processor):
    _, processor = tiny_model_and_processor
    collator = MODACollator(processor, "image_embeds")
    examples = [
        {"features": torch.zeros(24), "prompt": "What colour is this item?", "description": "Red"},
        {"features": torch.ones(24), "prompt": None, "description": "Black Sports Shoes for Men - Footwear Shoes"},
    ]
    batch = collator(examples)
    tok = processor.tokenizer
    prompt_len = len(tok("What colour is this item?")["input_ids"])  # BOS + prompt
    assert (batch["labels"][0, :prompt_len] == -100).all()
    red = tok(" Red", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert batch["labels"][0, prompt_len:prompt_len + len(red)].tolist() == red
    assert (batch["labels"][0, prompt_len + len(red):] == -100).all()  # padding
    assert (batch["attention_mask"][0, prompt_len + len(red):] == 0).all()
    assert batch["labels"][1, 0] == -100 and batch["input_ids"][1, 0] == tok.bos_token_id
    assert batch["image_embeds"].shape == (2, 24)


def test_steplr_decays_every_lr_step_size_optimizer_steps(tmp_path, catalog_dir):
    output, _ = run(tmp_path, catalog_dir, "--lr_step_size", "3", "--lr_gamma", "0.5", "--learning_rate", "0.01",
                    "--num_train_epochs", "1")
    checkpoint = sorted(output.glob("checkpoint-*"))[-1]
    state = json.loads(checkpoint.joinpath("trainer_state.json").read_text())
    # a checkpoint holds the model code that config.json names and modeling_moda.py imports: it loads on its own
    code = {"configuration_moda.py", "modeling_moda.py", "processing_moda.py", "pipeline_moda.py",
            "fast_generation_moda.py"}
    assert code <= {path.name for path in checkpoint.iterdir()} and code <= {path.name for path in output.iterdir()}
    lrs = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    # the rate each optimizer step used: steps 1-3 at 0.01, 4-6 at 0.005, 7 at 0.0025 (StepLR stepped per step)
    assert len(lrs) >= 7 and lrs[:7] == pytest.approx([0.01] * 3 + [0.005] * 3 + [0.0025])
    assert (output / "loss_curves.png").stat().st_size > 1000
    assert not (output / "training_args.bin").exists() and (output / "training_args.json").exists()


def test_warmup_rises_linearly_then_steplr_counts_from_its_end():
    training_args = MODATrainingArguments("unused", learning_rate=1.0, warmup_steps=3, lr_step_size=4, lr_gamma=0.5)
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = step_lr_schedule(optimizer, training_args, 16)
    lrs = []
    for _ in range(14):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75] + [1.0] * 4 + [0.5] * 4 + [0.25] * 3)


def test_the_optimizer_is_the_trainers_fused_adamw_without_decay_on_biases_and_layernorm(tiny_model_and_processor):
    model = copy.deepcopy(tiny_model_and_processor[0])
    training_args = MODATrainingArguments("unused", use_cpu=True, eval_strategy="no", adam_beta1=0.8,
                                          adam_beta2=0.95, adam_epsilon=1e-6)
    trainer = MODATrainer(model=model, args=training_args)
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"] is True
    assert optimizer.defaults["betas"] == (0.8, 0.95) and optimizer.defaults["eps"] == 1e-6
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    decayed, not_decayed = ([names[id(p)] for p in group["params"]] for group in optimizer.param_groups)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.01, 0.0]
    layer_norms = [name for name, module in model.named_modules()
                   if isinstance(module, torch.nn.LayerNorm) and module.weight.requires_grad]  # (not the frozen tower's)
    assert layer_norms and {f"{name}.weight" for name in layer_norms} <= set(not_decayed)
    assert all(name.endswith("bias") or name.rsplit(".", 1)[0] in layer_norms for name in not_decayed)
    assert any(name.endswith("bias") for name in not_decayed)
    assert "language_model.model.decoder.layers.0.self_attn.q_proj.weight" in decayed
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert set(decayed) | set(not_decayed) == trainable  # the frozen vision tower is left out, as before


def test_steplr_comes_from_create_scheduler_and_other_schedules_from_the_trainer(tiny_model_and_processor):
    model = copy.deepcopy(tiny_model_and_processor[0])

    def scheduler(**kwargs):
        trainer = MODATrainer(model=model, args=MODATrainingArguments("unused", use_cpu=True, eval_strategy="no", **kwargs))
        trainer.create_optimizer_and_scheduler(num_training_steps=8)
        return trainer.lr_scheduler

    step_lr = scheduler()
    assert isinstance(step_lr, torch.optim.lr_scheduler.StepLR) and step_lr.step_size == 2  # a quarter of 8
    assert scheduler(lr_step_size=3).step_size == 3
    cosine = scheduler(lr_scheduler_type="cosine")
    assert isinstance(cosine, torch.optim.lr_scheduler.LambdaLR)
    assert cosine.lr_lambdas[0](4) == pytest.approx(0.5)  # half-way down transformers' cosine


def test_cpu_training_attention_is_eager_computes_the_same_loss_and_is_not_saved(tmp_path, tiny_model_and_processor):
    model, processor = tiny_model_and_processor
    model = copy.deepcopy(model)
    batch = MODACollator(processor, "image_embeds")(
        [{"features": torch.randn(24), "prompt": None, "description": "Black Sports Shoes for Men"},
         {"features": torch.randn(24), "prompt": "What colour is this item?", "description": "Red"}]
    )
    sdpa_loss = model(**batch).loss
    use_training_attention(model, torch.device("cpu"))
    assert model.config.text_config._attn_implementation == "eager"
    torch.testing.assert_close(model(**batch).loss, sdpa_loss)
    model.save_pretrained(tmp_path)
    reloaded = MODAForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.config.text_config._attn_implementation == "sdpa"


def test_from_scratch_epochs_follow_the_catalog_size_unless_given(tmp_path):
    def epochs(num_train_examples, *extra):
        argv = ["--dataset", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--model_size", "tiny", *extra]
        model_args, data_args, training_args, given = parse_arguments(argv)
        resolve_epochs(model_args, data_args, training_args, given, num_train_examples)
        return training_args.num_train_epochs

    assert epochs(2337) == 160  # fashion-images' train split: the measured default
    assert epochs(18016) == 21  # fashion-product-images-small: the same number of examples seen
    assert epochs(10**7) == 1
    assert epochs(2337, "--num_train_epochs", "3") == 3
    pretrained = epochs(2337, "--model_size", "", "--model_name_or_path", str(tmp_path))
    assert pretrained == MODATrainingArguments.num_train_epochs != 160  # the write-up's default stays


def test_memory_is_pinned_only_for_an_accelerator_unless_given(tmp_path):
    def pinned(*extra):
        argv = ["--dataset", str(tmp_path), "--output_dir", str(tmp_path / "out"), *extra]
        model_args, data_args, training_args, given = parse_arguments(argv)
        resolve_device_defaults(training_args, given)
        return training_args.dataloader_pin_memory, training_args.device.type

    assert MODATrainingArguments.dataloader_pin_memory is True  # transformers' default, kept for accelerators
    pin, device = pinned()
    assert pin is (device != "cpu")  # on the CPU torch would warn at every epoch that pinning does nothing
    assert pinned("--dataloader_pin_memory", "true")[0] is True


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path, catalog_dir, tiny_moda_dir, monkeypatch):
    """The gradients an optimizer step applies are the same for 8 x 1 and 4 x 2 (accumulated) examples.
    (Weights after several AdamW steps are not compared: Adam turns float noise in near-zero gradients into
    lr-sized steps.) A frozen vision tower: cached embeddings, no random augmentation drawn per batch."""
    recorded = []
    original_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        recorded.append([p.grad.clone() for group in self.param_groups for p in group["params"] if p.grad is not None])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    common = ("--max_steps", "2", "--learning_rate", "0.003", "--eval_strategy", "no", "--save_strategy", "no",
              "--model_name_or_path", str(tiny_moda_dir))
    run(tmp_path, catalog_dir, *common, "--per_device_train_batch_size", "8", name="big")
    big, recorded[:] = list(recorded), []
    run(tmp_path, catalog_dir, *common, "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
        name="accumulated")
    assert len(big) == len(recorded) == 2
    for step_big, step_accumulated in zip(big, recorded):
        assert len(step_big) == len(step_accumulated) > 0
        for a, b in zip(step_big, step_accumulated):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_frozen_vision_features_are_cached_and_the_tower_is_not_run_again(tmp_path, catalog_dir, tiny_moda_dir,
                                                                         monkeypatch):
    calls = []
    original = MODAForConditionalGeneration.get_image_features

    def counting(self, pixel_values):
        calls.append(len(pixel_values))
        return original(self, pixel_values)

    monkeypatch.setattr(MODAForConditionalGeneration, "get_image_features", counting)
    args = ("--model_name_or_path", str(tiny_moda_dir), "--eval_strategy", "no", "--save_strategy", "no")
    run(tmp_path, catalog_dir, *args, name="first")
    first_run_images = sum(calls)
    assert first_run_images == 80  # every catalog image once, over 2 epochs and all splits
    calls.clear()
    run(tmp_path, catalog_dir, *args, name="second")
    assert sum(calls) == 0  # second run: every embedding comes from the disk cache


def test_killed_run_resumed_from_its_checkpoint_ends_with_the_same_weights(tmp_path, catalog_dir):
    import signal
    import time

    common = ("--save_total_limit", "10", "--eval_strategy", "no")
    full, _ = run(tmp_path, catalog_dir, *common, name="full")
    killed = tmp_path / "killed"
    argv = [sys.executable, str(REPO_ROOT / "train_hf.py"), "--dataset", str(catalog_dir), "--output_dir", str(killed),
            "--model_size", "test", "--num_train_epochs", "2", "--per_device_train_batch_size", "8",
            "--logging_steps", "1", "--eval_steps", "5", "--save_steps", "5", "--feature_cache_dir",
            str(tmp_path / "cache"), "--tokenizer_vocab_size", "300", "--disable_tqdm", "true", *common]
    process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint-15").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-run: checkpoint-10 is complete, later steps are lost
    process.wait()
    resumed, _ = run(tmp_path, catalog_dir, *common, "--resume_from_checkpoint", str(killed / "checkpoint-10"),
                     name="killed")
    a, b = weights(full), weights(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


# What train_hf.py leaves in its output folder at the end of a run (without checkpoints); examples/: the card's photos.
FINAL_FOLDER_FILES = ["README.md", "all_results.json", "config.json", "configuration_moda.py", "examples",
                      "fast_generation_moda.py",
                      "generation_config.json", "handler.py", "image_io_moda.py",
                      "loss_curves.png", "model.safetensors", "modeling_moda.py", "pipeline_moda.py",
                      "processing_moda.py", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
                      "train_results.json", "trainer_state.json", "training_args.json", "training_summary.json"]


def test_a_final_save_failing_half_way_leaves_the_earlier_model_whole(tmp_path, catalog_dir, tiny_moda_dir,
                                                                      monkeypatch):
    """A final save that dies while writing model.safetensors (the disk fills half-way through it) leaves the model
    already in the output folder whole and no staging folder; the next save replaces it, with every file."""
    import transformers.modeling_utils
    from safetensors.torch import save_file

    from moda.train.checkpointing import FINAL_STAGING_DIR

    common = ("--model_name_or_path", str(tiny_moda_dir), "--max_steps", "1", "--eval_strategy", "no",
              "--save_strategy", "no", "--learning_rate", "0.01")
    output, _ = run(tmp_path, catalog_dir, *common)
    assert sorted(path.name for path in output.iterdir()) == FINAL_FOLDER_FILES
    earlier = {path.name: path.read_bytes() for path in output.iterdir() if path.is_file()}

    def disk_fills_half_way(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as handle:
            handle.truncate(os.path.getsize(filename) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_fills_half_way)
    with pytest.raises(OSError, match="No space left on device"):
        run(tmp_path, catalog_dir, *common, "--seed", "7")
    assert {path.name: path.read_bytes() for path in output.iterdir() if path.is_file()} == earlier
    monkeypatch.undo()

    # A save killed half-way (SIGKILL: nothing cleans up) leaves its staging folder: the next save starts afresh.
    (output / FINAL_STAGING_DIR).mkdir()
    (output / FINAL_STAGING_DIR / "model.safetensors").write_bytes(b"half a tensor")
    run(tmp_path, catalog_dir, *common, "--seed", "7")
    assert sorted(path.name for path in output.iterdir()) == FINAL_FOLDER_FILES
    assert (output / "model.safetensors").read_bytes() != earlier["model.safetensors"]
    MODAForConditionalGeneration.from_pretrained(output)


def test_a_checkpoint_save_failing_half_way_leaves_no_staged_checkpoint(tmp_path, catalog_dir, tiny_moda_dir,
                                                                        monkeypatch):
    import transformers.modeling_utils

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a tensor")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        run(tmp_path, catalog_dir, "--model_name_or_path", str(tiny_moda_dir), "--max_steps", "1",
            "--eval_strategy", "no", "--save_steps", "1")
    assert list((tmp_path / "out").iterdir()) == []


def test_projector_only_stage_leaves_the_decoder_unchanged(tmp_path, catalog_dir, tiny_moda_dir):
    output, _ = run(tmp_path, catalog_dir, "--model_name_or_path", str(tiny_moda_dir), "--train_projector_only", "true")
    before, after = weights(tiny_moda_dir), weights(output)
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("projector."))
    for name in before:
        if not name.startswith("projector."):
            assert torch.equal(before[name], after[name]), name


def test_lora_stage_saves_adapter_and_merges_into_a_loadable_model(tmp_path, catalog_dir, tiny_moda_dir):
    from peft import PeftModel

    output, _ = run(tmp_path, catalog_dir, "--model_name_or_path", str(tiny_moda_dir), "--use_lora", "true",
                    "--lora_r", "4", "--lora_alpha", "8", "--learning_rate", "0.01")
    adapter_config = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert "language_model" in adapter_config["target_modules"]
    # the model card reads the run's arguments from here, as after a full fine-tune
    assert json.loads((output / "training_args.json").read_text())["learning_rate"] == 0.01
    merged = MODAForConditionalGeneration.from_pretrained(output)
    before = weights(tiny_moda_dir)
    after = merged.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert any("q_proj" in n for n in changed) and any("v_proj" in n for n in changed)
    assert not any(n.startswith("vision_tower.") for n in changed)  # LoRA never touched CLIP's q/v projections
    assert all(("q_proj" in n or "v_proj" in n or n.startswith("projector.")) for n in changed)
    # The adapter loads onto the base model and gives the merged weights.
    base = MODAForConditionalGeneration.from_pretrained(tiny_moda_dir)
    with_adapter = PeftModel.from_pretrained(base, output / "adapter").merge_and_unload()
    for name, tensor in with_adapter.state_dict().items():
        torch.testing.assert_close(tensor, after[name], atol=1e-6, rtol=0)


def test_qa_from_metadata_trains_prompted_answers(tmp_path, catalog_dir):
    _, summary = run(tmp_path, catalog_dir, "--qa_from_metadata", "true", "--num_train_epochs", "1")
    assert summary["num_eval_items"] == len(list((catalog_dir / "test" / "images").iterdir()))


def test_two_process_ddp_training(tmp_path, catalog_dir):
    output = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(REPO_ROOT / "train_hf.py"), "--dataset", str(catalog_dir), "--output_dir", str(output),
           "--model_size", "test", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
           "--feature_cache_dir", str(tmp_path / "cache"), "--tokenizer_vocab_size", "300", "--ddp_backend", "gloo",
           "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Without CUDA, DDP on the CPU needs use_cpu (train_hf.py sets it under torchrun); without it the Trainer warns
    # so and reports every loss summed over the processes.
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in proc.stderr + proc.stdout
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["num_eval_items"] > 0
    # 64 train items / (8 per device x 2 processes) = 4 optimizer steps for the epoch
    assert summary["global_step"] == 4 and summary["world_size"] == 2
    assert (output / "model.safetensors").exists()


def test_demo_at_reduced_size_leaves_a_pipeline_loadable_folder(tmp_path, red_image):
    output = tmp_path / "demo"
    summary = train_hf.main([
        "--output_dir", str(output), "--demo_items", "60", "--demo_dir", str(tmp_path / "synthetic"),
        "--num_train_epochs", "1", "--feature_cache_dir", str(tmp_path / "cache"), "--model_size", "test",
        "--tokenizer_vocab_size", "300", "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true",
    ])
    assert {"colour", "product_type", "gender", "usage"} <= set(summary["attribute_accuracy"])
    code = ("import sys; from transformers import pipeline; from PIL import Image; "
            "p = pipeline('image-to-text', model=sys.argv[1], trust_remote_code=True); "
            "print('CAPTION', p(Image.new('RGB', (40, 40), 'red'))[0]['generated_text'])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, str(output)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CAPTION" in proc.stdout


def test_blip_baseline_fine_tunes_on_the_same_data(tmp_path, catalog_dir):
    from transformers import BlipForConditionalGeneration

    from moda.model.blip_baseline import build_tiny_blip

    model, processor = build_tiny_blip(["Red Casual Tshirts for Men - Apparel Topwear"] * 4)
    model.save_pretrained(tmp_path / "tiny-blip")
    processor.save_pretrained(tmp_path / "tiny-blip")
    output, summary = run(tmp_path, catalog_dir, "--architecture", "blip", "--blip_model", str(tmp_path / "tiny-blip"),
                          "--learning_rate", "0.005")
    tuned = BlipForConditionalGeneration.from_pretrained(output)
    before = BlipForConditionalGeneration.from_pretrained(tmp_path / "tiny-blip").state_dict()
    assert any(not torch.equal(before[n], t) for n, t in tuned.state_dict().items())
    assert {"colour", "product_type", "gender", "usage"} <= set(summary["attribute_accuracy"])
    state = json.loads(sorted(output.glob("checkpoint-*"))[-1].joinpath("trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses[-1] < losses[0]


def test_a_catalog_of_images_and_captions_only_trains_without_attribute_scores(tmp_path, catalog_dir):
    import csv
    import shutil

    captions_only = tmp_path / "captions-only"
    for split in ("train", "validation", "test"):
        shutil.copytree(catalog_dir / split / "images", captions_only / split / "images")
        with open(catalog_dir / split / "metadata.csv", newline="") as handle:
            rows = [{"file_name": row["file_name"], "description": row["caption"]} for row in csv.DictReader(handle)]
        with open(captions_only / split / "metadata.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["file_name", "description"])
            writer.writeheader()
            writer.writerows(rows)
    output, _ = run(tmp_path, captions_only, "--caption_column", "description", "--num_train_epochs", "1")
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["attribute_accuracy"] is None and summary["scores"] is None
    assert summary["num_eval_items"] == 8 and 0 <= summary["exact_match"] <= 1
    assert (output / "model.safetensors").is_file()


def test_dashed_argument_names_count_as_given(tmp_path):
    model_args, data_args, training_args, given = parse_arguments(
        ["--dataset", str(tmp_path), "--output-dir", str(tmp_path / "out"), "--num-train-epochs", "3"]
    )
    assert {"output_dir", "num_train_epochs"} <= given
    resolve_demo_defaults(model_args, data_args, training_args, given)  # no "--output_dir is required"
    assert training_args.output_dir == str(tmp_path / "out") and training_args.num_train_epochs == 3


def captions_csv(tmp_path, catalog_dir, caption=lambda i, row: row["caption"], split="train"):
    """A split of the catalog (train by default) as a CSV file of images and a `description` column only."""
    import csv

    with open(catalog_dir / split / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    path = tmp_path / f"captions-{split}.csv" if split != "train" else tmp_path / "captions.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "description"])
        writer.writeheader()
        writer.writerows({"image": str(catalog_dir / split / row["file_name"]), "description": caption(i, row)}
                         for i, row in enumerate(rows))
    return path


def test_a_run_writes_the_example_scripts_files_and_pushes_with_the_hub_token(tmp_path, catalog_dir, monkeypatch):
    import math

    pushed = {}
    monkeypatch.setattr(train_hf, "push_model_folder",
                        lambda folder, repo_id, **kwargs: pushed.update(kwargs, repo_id=repo_id) or "0" * 40)
    output, summary = run(tmp_path, catalog_dir, "--num_train_epochs", "1", "--push_to_hub", "true",
                          "--hub_model_id", "me/moda", "--hub_token", "hf_secret")
    assert pushed["repo_id"] == "me/moda" and pushed["token"] == "hf_secret"
    assert "hf_secret" not in (output / "training_args.json").read_text()
    train_results = json.loads((output / "train_results.json").read_text())
    eval_results = json.loads((output / "eval_results.json").read_text())
    assert json.loads((output / "all_results.json").read_text()) == {**train_results, **eval_results}
    assert train_results["train_samples"] == 64 and train_results["train_loss"] > 0
    assert eval_results["eval_samples"] == 8 and eval_results["perplexity"] == pytest.approx(
        math.exp(eval_results["eval_loss"]))
    assert "eval_attr_overall" in eval_results  # the attribute scores of the final evaluation
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == summary["global_step"] == 8


def test_optim_and_lr_scheduler_type_given_are_the_trainers(tmp_path, catalog_dir, tiny_moda_dir):
    import math

    output, _ = run(tmp_path, catalog_dir, "--model_name_or_path", str(tiny_moda_dir), "--optim", "sgd",
                    "--lr_scheduler_type", "cosine", "--learning_rate", "0.01", "--max_steps", "4",
                    "--eval_strategy", "no", "--save_steps", "4")
    state = json.loads((output / "trainer_state.json").read_text())
    lrs = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    assert lrs == pytest.approx([0.01 * (1 + math.cos(math.pi * step / 4)) / 2 for step in range(4)])
    optimizer = torch.load(output / "checkpoint-4" / "optimizer.pt", weights_only=True)
    assert {"momentum", "nesterov"} <= set(optimizer["param_groups"][0]) and "betas" not in optimizer["param_groups"][0]
    assert json.loads((output / "training_args.json").read_text())["optim"] == "sgd"


def test_train_file_and_validation_file_are_the_train_and_validation_rows(tmp_path, catalog_dir):
    train_file = captions_csv(tmp_path, catalog_dir)
    validation_file = captions_csv(tmp_path, catalog_dir, split="validation")
    output = tmp_path / "out"
    summary = train_hf.main([
        "--train_file", str(train_file), "--validation_file", str(validation_file), "--output_dir", str(output),
        "--model_size", "test", "--caption_column", "description", "--max_steps", "2", "--eval_strategy", "no",
        "--save_strategy", "no", "--do_eval", "true", "--feature_cache_dir", str(tmp_path / "cache"),
        "--tokenizer_vocab_size", "300", "--disable_tqdm", "true"])
    validation_rows = len((catalog_dir / "validation" / "metadata.csv").read_text().splitlines()) - 1
    assert summary["dataset"] == str(train_file) and summary["eval_split"] == "validation"
    assert summary["num_eval_items"] == validation_rows == 8
    assert json.loads((output / "eval_results.json").read_text())["eval_samples"] == validation_rows
    assert json.loads((output / "train_results.json").read_text())["train_samples"] == 64  # the whole file


def test_model_revision_and_cache_dir_reach_every_from_pretrained(tmp_path, tiny_model_and_processor, tiny_moda_dir,
                                                                  monkeypatch):
    """Local folders load at any revision: what is checked is that each load is asked for it."""
    from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedModel, ProcessorMixin

    from moda.model.blip_baseline import build_tiny_blip
    from moda.train.model import build_model

    model, processor = tiny_model_and_processor
    model.vision_tower.save_pretrained(tmp_path / "clip")
    processor.image_processor.save_pretrained(tmp_path / "clip")
    model.language_model.save_pretrained(tmp_path / "opt")
    processor.tokenizer.save_pretrained(tmp_path / "opt")
    blip_model, blip_processor = build_tiny_blip(["Red Casual Tshirts for Men - Apparel Topwear"] * 4)
    blip_model.save_pretrained(tmp_path / "blip")
    blip_processor.save_pretrained(tmp_path / "blip")
    loads = []
    for owner in (PreTrainedModel, ProcessorMixin, AutoImageProcessor, AutoTokenizer):
        load = owner.__dict__["from_pretrained"].__func__

        def recording(cls, *args, load=load, **kwargs):
            loads.append((cls.__name__, kwargs.get("revision"), kwargs.get("cache_dir")))
            return load(cls, *args, **kwargs)

        monkeypatch.setattr(owner, "from_pretrained", classmethod(recording))
    cache = str(tmp_path / "hub-cache")
    for model_options, expected in [
        (["--model", str(tiny_moda_dir)], {"MODAForConditionalGeneration", "MODAProcessor"}),
        (["--vision_model", str(tmp_path / "clip"), "--text_model", str(tmp_path / "opt")],
         {"CLIPVisionModelWithProjection", "OPTForCausalLM", "AutoImageProcessor", "AutoTokenizer"}),
        (["--architecture", "blip", "--blip_model", str(tmp_path / "blip")],
         {"BlipForConditionalGeneration", "BlipProcessor"}),
    ]:
        loads.clear()
        model_args, data_args, training_args, _ = parse_arguments(
            ["--dataset", "x", "--output_dir", str(tmp_path), "--revision", "v2", "--cache_dir", cache, *model_options])
        build_model(model_args, data_args, training_args, [])
        assert expected <= {name for name, _, _ in loads}
        assert {(revision, cache_dir) for _, revision, cache_dir in loads} == {("v2", cache)}, loads


def test_published_checkpoints_record_the_best_checkpoint_where_it_was_published(tmp_path, catalog_dir):
    """A checkpoint written aside recorded the best one at its staging path: a resume from it forgot the best model
    (--load_best_model_at_end then kept the last one, and rotation could delete the best)."""
    output, _ = run(tmp_path, catalog_dir, "--num_train_epochs", "1", "--load_best_model_at_end", "true",
                    "--metric_for_best_model", "eval_loss", "--save_total_limit", "10")
    checkpoints = sorted(output.glob("checkpoint-*"))
    assert len(checkpoints) >= 2
    for checkpoint in checkpoints:
        best = json.loads((checkpoint / "trainer_state.json").read_text())["best_model_checkpoint"]
        assert os.path.dirname(best) == str(output) and os.path.isdir(best), (checkpoint.name, best)


@pytest.mark.parametrize("extra, message", [
    (["--lr_step_size", "0"], "--lr_step_size must be at least 1, got 0"),
    (["--lr_gamma", "0"], "--lr_gamma"),
    (["--max_train_items", "-5"], "--max_train_samples must be at least 1, got -5"),
    (["--max_eval_samples", "0"], "--max_eval_samples must be at least 1, got 0"),
    (["--attribute_eval_items", "-1"], "--attribute_eval_items"),
    (["--lr_scheduler_kwargs", '{"step_size": 3}'], "--lr_scheduler_kwargs: for transformers' schedules"),
    (["--lr_scheduler_type", "cosine", "--lr_gamma", "0.3"], "--lr_gamma: for MODA's StepLR"),
    (["--lr_scheduler_type", "steplr"], "--lr_scheduler_type must be one of step_lr, linear, .* got 'steplr'"),
    (["--do_train", "false"], "--do_train false: not used: train_hf.py always trains"),
    (["--do_predict", "false"], "--do_predict false: not used"),
    (["--do_eval", "false"], "--do_eval false: .* give --eval_strategy no"),
    (["--hub_strategy", "every_save"], '--hub_strategy "every_save": not used: .* once, at the end'),
    (["--hub_always_push", "true"], "--hub_always_push true: not used"),
    (["--hub_token", "secret"], "--hub_token: used only with --push_to_hub"),
    (["--label_smoothing_factor", "0.1"], "--label_smoothing_factor 0.1: not used: MODA computes its own loss"),
    (["--remove_unused_columns", "true"], "--remove_unused_columns true: not used"),
    (["--train_sampling_strategy", "group_by_length"], "group_by_length needs a length column"),
    (["--eval_accumulation_steps", "2"], "--eval_accumulation_steps 2: not used: .* loss only"),
    (["--streaming", "true"], "--streaming is not supported: .* a streamed dataset allows none"),
    (["--train_file", "rows.csv"], "--dataset and --train_file both name the training rows"),
    (["--model_size", "tiny", "--revision", "v1"], "--model_revision: nothing is downloaded"),
    (["--model_revision", "abc123"], "--model_revision names a commit of one repo, and this model is built from two"),
    (["--train_projector_only", "true", "--use_lora", "true"], "two stages"),
    (["--model_size", "small"], "--model_size must be one of 'test', 'tiny', got 'small'"),
    (["--model_size", "tiny", "--model_name_or_path", "stage1"], "give one of them"),
    (["--architecture", "blip", "--blip_model", "x", "--use_lora", "true"], "--use_lora: for MODA only"),
    (["--architecture", "git"], "--architecture must be 'moda' or 'blip', got 'git'"),
    (["--architecture", "blip"], "--architecture blip needs --blip_model"),
])
def test_arguments_that_would_be_ignored_or_fail_late_are_named_at_once(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train_hf.main(["--dataset", str(tmp_path), "--output_dir", str(tmp_path / "out"), *extra])


@pytest.mark.parametrize("extra, message", [
    (["--validation_file", "rows.csv"], "--validation_file goes with --train_file"),
    (["--train_file", "missing.csv"], "--train_file 'missing.csv': no such file"),
    (["--cache_dir", "cache"], "--cache_dir: nothing is downloaded: the model is built from scratch"),
])
def test_catalog_files_and_download_options_are_checked_at_once(tmp_path, extra, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train_hf.main(["--output_dir", str(tmp_path / "out"), *extra])


def test_the_command_line_gives_a_wrong_input_as_one_error_line(tmp_path, capsys):
    from moda.cli import main as moda_main

    for run_it in (train_hf.command_line, lambda argv: moda_main(["train", *argv])):
        assert run_it(["--dataset", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--do_train", "false"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("train_hf.py: error: --do_train false: not used") and err.count("\n") == 1, err


def test_a_saved_training_args_json_is_accepted_as_an_arguments_file(tmp_path):
    """train_hf.py writes training_args.json with every TrainingArguments option (the token as "<HUB_TOKEN>"):
    reusable as is, with the same settings."""
    _, _, saved, _ = parse_arguments(["--output_dir", str(tmp_path / "out"), "--optim", "sgd", "--lr_step_size", "7"])
    values = {**json.loads(saved.to_json_string()), "dataset": str(tmp_path)}
    assert values["hub_token"] == "<HUB_TOKEN>" and values["lr_scheduler_type"] == "step_lr"
    path = tmp_path / "args.json"
    path.write_text(json.dumps(values))
    model_args, data_args, training_args, given = parse_arguments([str(path)])
    check_arguments(model_args, data_args, training_args, given)
    assert training_args.hub_token is None and training_args.optim == "sgd" and training_args.lr_step_size == 7
    assert training_args.lr_scheduler_type == "step_lr" and training_args.do_eval is True
    path.write_text(json.dumps({**values, "lr_scheduler_type": "cosine", "lr_gamma": 0.2}))
    with pytest.raises(ValueError, match="--lr_gamma: for MODA's StepLR"):
        check_arguments(*parse_arguments([str(path)]))
    path.write_text(json.dumps({"dataset_name": str(tmp_path), "dataset": "x"}))
    with pytest.raises(ValueError, match="'dataset' is given twice"):
        parse_arguments([str(path)])
    path.write_text('{"dataset": "x",}')
    with pytest.raises(ValueError, match=r"args\.json: not valid JSON"):
        parse_arguments([str(path)])


def test_run_clm_names_are_aliases_in_either_spelling(tmp_path):
    argv = ["--dataset_name", "owner/catalog", "--output-dir", str(tmp_path), "--model", "stage1", "--revision", "v2",
            "--max-train-items", "5", "--max_eval_items", "3", "--no_augment_images"]
    model_args, data_args, training_args, given = parse_arguments(argv)
    assert data_args.dataset == "owner/catalog" and model_args.model_name_or_path == "stage1"
    assert model_args.model_revision == "v2" and data_args.max_train_samples == 5 and data_args.max_eval_samples == 3
    assert data_args.augment_images is False
    assert given == {"dataset", "output_dir", "model_name_or_path", "model_revision", "max_train_samples",
                     "max_eval_samples", "augment_images"}
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"dataset_name": "owner/catalog", "max_train_items": 5}))
    _, data_args, _, given = parse_arguments([str(path)])
    assert data_args.dataset == "owner/catalog" and data_args.max_train_samples == 5
    assert given == {"dataset", "max_train_samples"}
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['--num_train_ep'"):  # not as given
        parse_arguments(["--num_train_ep", "3"])


def test_help_is_short_clean_and_names_the_command_and_help_all_shows_every_option():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    short = subprocess.run([sys.executable, "-m", "moda.cli", "train", "--help"], cwd=REPO_ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert short.returncode == 0 and short.stderr == ""  # no warnings
    assert short.stdout.startswith("usage: moda train [options]")
    assert "--dataset, --dataset_name" in short.stdout and "--max_train_samples, --max_train_items" in short.stdout
    assert "--lr_scheduler_type" in short.stdout and "(default: step_lr)" in short.stdout
    assert "--ddp_backend" not in short.stdout and len(short.stdout.splitlines()) < 120
    full = subprocess.run([sys.executable, str(REPO_ROOT / "train_hf.py"), "--help_all"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0 and full.stderr == "" and full.stdout.startswith("usage: train_hf.py [options]")
    assert "--ddp_backend" in full.stdout and "--dataset-name" in full.stdout


def test_json_argument_values_must_have_their_types(tmp_path):
    path = tmp_path / "args.json"
    good = {"dataset": str(tmp_path), "output_dir": str(tmp_path / "out"), "use_lora": False, "num_train_epochs": 2,
            "lr_step_size": 3, "learning_rate": 1}
    path.write_text(json.dumps(good))
    model_args, _, training_args, given = parse_arguments([str(path)])
    assert model_args.use_lora is False and training_args.num_train_epochs == 2 and training_args.lr_step_size == 3
    assert given == set(good)
    for name, value, message in [("use_lora", "false", "'use_lora' must be a JSON true/false, got \"false\""),
                                 ("num_train_epochs", "2", "'num_train_epochs' must be a JSON number"),
                                 ("lr_step_size", 2.5, "'lr_step_size' must be a JSON number \\(whole\\)")]:
        path.write_text(json.dumps({**good, name: value}))
        with pytest.raises(ValueError, match=message):
            parse_arguments([str(path)])
    path.write_text(json.dumps(["--dataset", str(tmp_path)]))
    with pytest.raises(ValueError, match="one JSON object"):
        parse_arguments([str(path)])


def test_qa_from_metadata_needs_columns_to_ask_about(tmp_path, catalog_dir):
    path = captions_csv(tmp_path, catalog_dir)
    with pytest.raises(ValueError, match=r"--qa_from_metadata: no train row .*'Colour'.*its columns are: 'image', "
                                         r"'description'"):
        run(tmp_path, path, "--caption_column", "description", "--qa_from_metadata", "true")


def test_a_description_longer_than_the_decoder_is_a_bad_row_named_before_training(tmp_path, catalog_dir):
    from moda.data.catalog import BadRowError

    long = " ".join(["with a long tail of words"] * 20)
    path = captions_csv(tmp_path, catalog_dir, lambda i, row: row["caption"] + (long if i == 3 else ""))
    common = ("--caption_column", "description", "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no")
    _, summary = run(tmp_path, path, *common)
    assert [row["where"] for row in summary["bad_rows"]] == [f"{path} row 5"]  # (row 1 is the CSV header)
    assert "more than the 63 the decoder has after the image" in summary["bad_rows"][0]["reason"]
    with pytest.raises(BadRowError, match="row 5: the description: .* tokens"):
        run(tmp_path, path, *common, "--on_bad_row", "fail", name="fail")


def test_max_items_draw_a_seeded_sample_of_a_grouped_catalog_not_its_first_rows(tmp_path, monkeypatch):
    import csv

    # Grouped as fashion-images' train split is: all Girls' items first, then the Boys'.
    catalog = tmp_path / "grouped"
    for split, size in (("train", 100), ("validation", 40)):
        (catalog / split).mkdir(parents=True)
        with open(catalog / split / "metadata.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "id", "Gender", "caption"])
            for i in range(size):
                gender = "Girls" if i < size // 2 else "Boys"
                writer.writerow([f"images/{i}.jpg", i, gender, f"item {i} for {gender}"])

    def sampled_ids(seed):
        """The row ids train_hf.main turns into train and validation examples (it stops there: no examples)."""
        splits = []
        monkeypatch.setattr(moda.train.data, "examples_from_rows", lambda rows, *args: splits.append(rows) or [])
        with pytest.raises(ValueError, match="No training examples"):
            train_hf.main(["--dataset", str(catalog), "--output_dir", str(tmp_path / "out"), "--caption_column",
                           "caption", "--max_train_items", "10", "--max_eval_items", "6", "--seed", str(seed)])
        return [[int(row["id"]) for row in rows] for rows in splits]

    train, validation = sampled_ids(seed=42)
    assert len(train) == 10 and train != list(range(10)) and max(train) >= 50  # Boys' items too
    assert len(validation) == 6 and validation != list(range(6))
    assert train == sorted(train) and validation == sorted(validation)  # in the catalog's order
    assert sampled_ids(seed=42) == [train, validation]  # the run's seed decides the sample
    assert sampled_ids(seed=7)[0] != train


def test_tokens_per_example_are_counted_as_the_collator_lays_examples_out(tiny_model_and_processor):
    from moda.model.blip_baseline import BlipCollator, build_tiny_blip

    captions = ["Red Casual Dresses for Women - Apparel Dress", "Black Sports Shoes for Men - Footwear Shoes"]
    _, processor = tiny_model_and_processor
    examples = [{"features": torch.zeros(24), "prompt": None, "description": captions[0]},
                {"features": torch.zeros(24), "prompt": "What colour is this item?", "description": "Black"}]
    batch = MODACollator(processor, "image_embeds")(examples)
    assert mean_tokens_per_example(processor, examples) == batch["attention_mask"].sum().item() / 2

    # BLIP's layout is its own: [DEC] description [SEP], no EOS added after the [SEP].
    model, blip_processor = build_tiny_blip(captions * 4)
    examples = [{"features": torch.zeros(3, 32, 32), "prompt": None, "description": text} for text in captions]
    batch = BlipCollator(blip_processor, model.config.text_config.bos_token_id)(examples)
    assert mean_tokens_per_example(blip_processor, examples) == batch["attention_mask"].sum().item() / 2


def test_compute_features_reads_each_cached_image_once_and_gives_what_was_cached(tmp_path, product_images):
    """Examples sharing an image (question/answer examples share their row's) share one cache read."""
    import numpy as np

    from moda.data.catalog import BadRows
    from moda.data.features import FeatureCache, compute_features

    paths = []
    for i, image in enumerate(product_images[:2]):
        image.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    examples = [{"image": paths[i % 2], "row": {"_where": f"row {i}"}} for i in range(6)]
    cache = FeatureCache(tmp_path / "cache", "means")

    def channel_means(images):
        return torch.stack([torch.from_numpy(np.asarray(image, dtype=np.float32).mean((0, 1))) for image in images])

    computed = compute_features(examples, channel_means, cache, BadRows())
    reads, read = [], cache.get
    cache.get = lambda key: reads.append(key) or read(key)

    def not_again(images):
        raise AssertionError("cached images were encoded again")

    cached = compute_features(examples, not_again, cache, BadRows())
    assert len(reads) == 2  # one per distinct image (it was two per example)
    assert len(cached) == len(computed) == 6
    for first, second in zip(computed, cached):
        torch.testing.assert_close(first["features"], second["features"], rtol=0, atol=0)
    torch.testing.assert_close(cached[0]["features"], channel_means([product_images[0].convert("RGB")])[0])


def test_a_tiny_model_on_a_given_tower_loads_it_at_the_revision_and_cache_given(tmp_path, monkeypatch):
    """--model_size tiny --vision_model TOWER downloads TOWER: --model_revision and --cache_dir pin and place it."""
    import moda.model.build

    loads = []

    def refuse_to_download(name, **kwargs):  # stands in for the Hub: what would have been fetched, with what
        loads.append((name, kwargs))
        raise OSError("offline")

    monkeypatch.setattr(moda.model.build, "load_clip_vision", refuse_to_download)
    with pytest.raises(OSError, match="offline"):
        moda.model.build.build_from_scratch("test", None, vision_model="someone/tower",
                                            hub={"revision": "abc123", "cache_dir": str(tmp_path), "x": None})
    assert loads == [("someone/tower", {"trust_remote_code": False, "revision": "abc123",
                                        "cache_dir": str(tmp_path)})]
    # and the arguments' check allows them there: what stops this run is its empty catalog, checked after them
    with pytest.raises(ValueError, match="holds no metadata.csv"):
        train_hf.main(["--dataset", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--model_size", "tiny",
                       "--vision_model", "someone/tower", "--model_revision", "abc123"])
