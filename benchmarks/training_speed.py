"""Training speed of full-size MODA: the original notebook's way against cached image features (random weights).

    python benchmarks/training_speed.py --dataset ../shared/data/fashion-images --sample 256 --steps 4

"Notebook way": every step decodes the JPEGs, runs the CLIP vision tower (frozen, no gradients), then the projector
and OPT forward and backward, with torch's default AdamW and the model's default (SDPA) attention. "Cached": what
train_hf.py does: the image embeddings are computed once with moda/data/features.py (FeatureCache + compute_features),
every step runs only the projector and OPT, with train_hf's optimizer (the Trainer's: fused AdamW) and CPU attention
(eager).
"Cached, bf16 autocast": the same with the forward under `torch.autocast("cpu", torch.bfloat16)` (weights, gradients
and AdamW stay fp32), what `train_hf.py --bf16 true --use_cpu true` does through the Trainer. All use the same model,
batch size and collator (moda/train/collate.py), and are timed on the same sample of the real train split in the same run,
interleaved step by step; the epoch time is extrapolated from the median step time to the full train split.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration_moda import MODAConfig  # noqa: E402
from modeling_moda import MODAForConditionalGeneration  # noqa: E402
from moda.data.catalog import BadRows, examples_from_rows, load_catalog  # noqa: E402
from moda.data.features import FeatureCache, compute_features, image_embedding_encoder  # noqa: E402
from moda.io.images import load_image  # noqa: E402
from moda.model.build import image_processor_for  # noqa: E402
from moda.model.tokenizer import train_caption_tokenizer  # noqa: E402
from moda.train.collate import MODACollator  # noqa: E402
from processing_moda import MODAProcessor  # noqa: E402
from moda.train.model import use_training_attention  # noqa: E402
from benchmarks.results import print_and_save  # noqa: E402


def build(examples):
    """Full-size MODA (random weights) and a processor whose tokenizer is trained on the sample's captions."""
    tokenizer = train_caption_tokenizer([e["description"] for e in examples], vocab_size=1024, model_max_length=64)
    torch.manual_seed(0)
    model = MODAForConditionalGeneration(MODAConfig())
    processor = MODAProcessor(image_processor=image_processor_for(model.config), tokenizer=tokenizer)
    return model, processor


def notebook_step(model, processor, optimizer, examples):
    """JPEG decoding, preprocessing, the vision tower, projector and OPT: what the original notebook did per step."""
    model.set_attn_implementation("sdpa")
    images = [load_image(e["image"], e["row"].get("_where", "row")) for e in examples]
    batch = processor(images=images, descriptions=[e["description"] for e in examples])
    return train_step(model, optimizer, batch)


def cached_step(model, collator, optimizer, examples):
    """Projector and OPT on cached image embeddings (the collator stacks them as image_embeds)."""
    use_training_attention(model, torch.device("cpu"))
    return train_step(model, optimizer, collator(examples))


def cached_bf16_step(model, collator, optimizer, examples):
    """cached_step with the forward under bf16 autocast (the matmuls in bf16, fp32 weights and optimizer)."""
    use_training_attention(model, torch.device("cpu"))
    return train_step(model, optimizer, collator(examples), autocast=True)


def train_step(model, optimizer, batch, autocast: bool = False) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(Path(__file__).resolve().parents[2] / "shared/data/fashion-images"))
    parser.add_argument("--sample", type=int, default=256, help="train images to time on")
    parser.add_argument("--batch_size", type=int, default=32, help="train_hf.py's per_device_train_batch_size")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per method (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not Path(args.dataset).is_dir():
        raise SystemExit(f"--dataset {args.dataset!r} is not a folder: this benchmark needs the real train photos.")
    torch.set_num_threads(args.threads)

    bad_rows = BadRows("skip")
    train_rows = load_catalog(args.dataset)["train"]
    examples = examples_from_rows(train_rows[: args.sample], bad_rows)
    model, processor = build(examples)
    model.train()
    notebook_optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    training_args = TrainingArguments(output_dir=tempfile.mkdtemp(), use_cpu=True, learning_rate=1e-5, report_to=[])
    optimizer = Trainer(model=model, args=training_args).create_optimizer()  # train_hf.py's: the Trainer's own

    with tempfile.TemporaryDirectory() as cache_dir:
        encoder = image_embedding_encoder(model, processor)
        start = time.perf_counter()
        cached = compute_features(examples, encoder, FeatureCache(cache_dir, "bench"), bad_rows, batch_size=args.batch_size)
        feature_seconds = time.perf_counter() - start
    collator = MODACollator(processor, "image_embeds")

    batches = [range(i, i + args.batch_size) for i in range(0, len(cached) - args.batch_size + 1, args.batch_size)]
    if len(batches) < args.steps + 1:
        raise SystemExit(f"--sample {args.sample} gives {len(batches)} batches; --steps {args.steps} needs one more.")
    steps = {"notebook": (notebook_step, processor, examples, notebook_optimizer),
             "cached": (cached_step, collator, cached, optimizer),
             "cached_bf16_autocast": (cached_bf16_step, collator, cached, optimizer)}
    times = {name: [] for name in steps}
    for index, rows in enumerate(batches[: args.steps + 1]):  # interleaved, the first step of each is a warm-up
        seconds = {name: timed(step, model, inputs, step_optimizer, [items[i] for i in rows])
                   for name, (step, inputs, items, step_optimizer) in steps.items()}
        if index:
            for name, value in seconds.items():
                times[name].append(value)
        print(f"step {index}: " + ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items()), flush=True)

    full_train = len(train_rows)
    steps_per_epoch = -(-full_train // args.batch_size)
    per_step = {name: statistics.median(values) for name, values in times.items()}
    results = {
        "settings": vars(args) | {"torch": torch.__version__, "train_items": full_train, "sampled": len(cached),
                                  # the allocator's environment (see BENCHMARKS.md): none set means glibc's defaults
                                  "allocator_env": {k: v for k, v in os.environ.items()
                                                    if k.startswith("MALLOC_") or k == "LD_PRELOAD"}},
        "seconds_per_step": per_step,
        "all_step_seconds": times,
        "epoch_seconds_extrapolated": {name: value * steps_per_epoch for name, value in per_step.items()},
        # Computing the features once costs about this per epoch's worth of images (paid on the first epoch only).
        "feature_cache_seconds_full_train_extrapolated": feature_seconds * full_train / len(examples),
        "speedup_cached_over_notebook": per_step["notebook"] / per_step["cached"],
        "speedup_cached_bf16_autocast_over_notebook": per_step["notebook"] / per_step["cached_bf16_autocast"],
        "bad_rows": bad_rows.rows,
    }
    return print_and_save(results, args.output)


if __name__ == "__main__":
    main()
