"""Captioning speed of full-size MODA against GIT-base and BLIP-base on this CPU (random weights, nothing downloaded).

    python benchmarks/generation_speed.py                      # fp32 and bf16, all models, interleaved
    python benchmarks/generation_speed.py --rss                # also peak RSS, one fresh process per model
    python benchmarks/generation_speed.py --threads 1 --precisions fp32 bf16 int8

Every model gets the same treatment: `model.generate(pixel_values=...)` as a user calls it, greedy, exactly
`--new_tokens` new tokens (min = max new tokens), batch 1 (latency) and batch `--batch` (images/s), all models and
precisions interleaved in one process with `--repeats` repeats and the median reported, so that the ratios hold even
when other work shares the CPU: within a repeat the models run back to back for each precision and batch (in an order
that rotates), and "paired_ratios" gives the median of each repeat's ratio next to the ratio of the medians.
"moda-plain" is MODA through GenerationMixin (`fast_greedy = False`), the implementation before the fast greedy loop.
The machine's matmul GFLOP/s and read bandwidth are measured in the same run, and MODA's share of each bound is
reported: at batch 1 decoding reads the decoder's weights once per token (bandwidth bound), at batch 16 it is closer
to matmul bound.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration_moda import MODAConfig  # noqa: E402
from modeling_moda import MODAForConditionalGeneration  # noqa: E402
from benchmarks.results import machine, print_and_save  # noqa: E402

# moda: the fast path as it comes (model.pack_weights = None: it packs bf16 where the CPU computes bf16, fp32 never);
# moda-packed / moda-unpacked: the fast path with every / no weight packed; moda-plain: GenerationMixin and CLIP's
# forward (fast_greedy = False).
MODA_VARIANTS = {"moda": (True, None), "moda-packed": (True, True), "moda-unpacked": (True, False),
                 "moda-plain": (False, None)}  # name -> (fast_greedy, pack_weights)
MODELS = (*MODA_VARIANTS, "git-base", "blip-base")
DEFAULT_MODELS = (*MODA_VARIANTS, "git-base")
PRECISIONS = ("fp32", "bf16", "int8")


def build_model(name: str, precision: str, built_in_bf16: bool = False):
    """A full-size model with random weights (speed does not depend on the weight values), in eval mode (as
    from_pretrained leaves it). bf16: built in fp32 and converted, or with `built_in_bf16` made in bf16 from the
    start (as from_pretrained(..., dtype=torch.bfloat16) loads it: no fp32 copy ever in memory)."""
    torch.manual_seed(0)
    if name in MODA_VARIANTS:
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16 if built_in_bf16 else default_dtype)
        try:
            model = MODAForConditionalGeneration(MODAConfig())
        finally:
            torch.set_default_dtype(default_dtype)
        text = model.config.text_config
        model.generation_config.update(bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id,
                                       pad_token_id=text.pad_token_id)
        model.fast_greedy, model.pack_weights = MODA_VARIANTS[name]
        image_size = model.config.vision_config.image_size
    elif name == "git-base":
        from transformers import GitConfig, GitForCausalLM

        model = GitForCausalLM(GitConfig())
        image_size = model.config.vision_config.image_size
    elif name == "blip-base":
        from transformers import BlipConfig, BlipForConditionalGeneration

        model = BlipForConditionalGeneration(BlipConfig())
        image_size = model.config.vision_config.image_size
    else:
        raise ValueError(f"Unknown model {name!r}; choose from {MODELS}.")
    model.eval()
    if precision == "bf16":
        model.to(torch.bfloat16)
    elif precision == "int8":
        # Dynamic int8 quantization of every Linear layer (weights int8, activations quantized per batch).
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    elif precision != "fp32":
        raise ValueError(f"Unknown precision {precision!r}; choose from {PRECISIONS}.")
    return model, image_size


def pixel_values(image_size: int, batch: int, precision: str) -> torch.Tensor:
    values = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(batch))
    return values.to(torch.bfloat16) if precision == "bf16" else values


def caption(model, pixels, new_tokens: int) -> torch.Tensor:
    return model.generate(pixel_values=pixels, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          num_beams=1)


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def machine_bounds(repeats: int = 5) -> dict:
    """Matmul GFLOP/s (fp32, bf16; 1024^3 GEMM) and read bandwidth (sum over 256 MB) with the current threads."""
    bounds = {}
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        a @ b
        best = min(timed(lambda: a @ b) for _ in range(repeats))
        bounds[f"matmul_gflops_{label}"] = 2 * 1024**3 / best / 1e9
    array = torch.randn(64 * 1024 * 1024)  # 256 MB: far beyond the caches
    array.sum()
    best = min(timed(array.sum) for _ in range(repeats))
    bounds["read_gb_per_s"] = array.numel() * 4 / best / 1e9
    return bounds


def moda_work(model, batch: int, new_tokens: int, precision: str) -> dict:
    """MODA's bytes read per decoding step (decoder + lm_head weights) and FLOPs of one generate call."""
    bytes_per_weight = {"fp32": 4, "bf16": 2, "int8": 1}[precision]
    decoder = model.language_model.model.decoder
    decoder_weights = sum(p.numel() for n, p in decoder.named_parameters() if "embed" not in n)
    lm_head = model.config.text_config.vocab_size * model.config.text_config.word_embed_proj_dim
    vision = sum(p.numel() for p in model.vision_tower.parameters())
    patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2 + 1
    tokens = batch * (2 + new_tokens)  # image prefix + BOS, then the new tokens
    return {
        "bytes_per_step": (decoder_weights + lm_head) * bytes_per_weight,
        "flops": 2 * vision * patches * batch + 2 * (decoder_weights + lm_head) * tokens,
    }


def run_timings(args) -> dict:
    models = {}
    for name in args.models:
        for precision in args.precisions:
            model, image_size = build_model(name, precision)
            inputs = {batch: pixel_values(image_size, batch, precision) for batch in (1, args.batch)}
            for batch in inputs:  # warm up (first-call allocations, oneDNN kernel selection) and check the length
                out = caption(model, inputs[batch], args.new_tokens)
                if out.shape[1] < args.new_tokens:
                    raise RuntimeError(f"{name} {precision} wrote {out.shape[1]} tokens, not {args.new_tokens}.")
            models[(name, precision)] = (model, inputs)
            print(f"built {name} {precision}", flush=True)
    times = {key: {1: [], args.batch: []} for key in models}
    bounds = []
    for repeat in range(args.repeats):
        bounds.append(machine_bounds())
        # Interleaved so that for each precision and batch the models run one after another, in an order that rotates
        # each repeat: the machine is shared and its speed drifts by tens of percent within minutes.
        for precision in args.precisions:
            for batch in sorted({1, args.batch}):
                names = [name for name in args.models if (name, precision) in models]
                for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                    model, inputs = models[(name, precision)]
                    times[(name, precision)][batch].append(timed(lambda: caption(model, inputs[batch], args.new_tokens)))
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    results = {"bounds": {k: statistics.median(b[k] for b in bounds) for k in bounds[0]}, "models": {}}
    for (name, precision), series in times.items():
        entry = {
            "latency_batch1_s": statistics.median(series[1]),
            f"images_per_s_batch{args.batch}": args.batch / statistics.median(series[args.batch]),
            "all_times_s": {str(batch): values for batch, values in series.items()},
        }
        if name.startswith("moda"):
            model = models[(name, precision)][0]
            entry.update(moda_shares(model, precision, args, entry, results["bounds"]))
        results["models"][f"{name} {precision}"] = entry
    return results


def moda_shares(model, precision, args, entry, bounds) -> dict:
    """MODA's share of the bandwidth bound (batch 1 decoding) and of the matmul bound (batch N)."""
    work1 = moda_work(model, 1, args.new_tokens, precision)
    workn = moda_work(model, args.batch, args.new_tokens, precision)
    read_rate = work1["bytes_per_step"] * args.new_tokens / entry["latency_batch1_s"] / 1e9
    flop_rate = workn["flops"] / (args.batch / entry[f"images_per_s_batch{args.batch}"]) / 1e9
    matmul = bounds["matmul_gflops_bf16" if precision == "bf16" else "matmul_gflops_fp32"]
    return {
        "batch1_weight_read_gb_per_s": read_rate,
        "batch1_share_of_read_bandwidth": read_rate / bounds["read_gb_per_s"],
        f"batch{args.batch}_gflops": flop_rate,
        f"batch{args.batch}_share_of_matmul_gflops": flop_rate / matmul,
    }


def fresh_process(name: str, precision: str, args, built_in_bf16: bool = False) -> dict:
    """A fresh process that builds one model and captions one image, again, then a batch: its peak RSS (MB), its
    first and second batch-1 caption times (s) and their ratio."""
    command = [sys.executable, __file__, "--rss-child", name, precision, "--batch", str(args.batch),
               "--new_tokens", str(args.new_tokens), "--threads", str(args.threads)]
    if built_in_bf16:
        command.append("--built_in_bf16")
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def rss_child(name: str, precision: str, args) -> None:
    model, image_size = build_model(name, precision, args.built_in_bf16)
    one = pixel_values(image_size, 1, precision)
    first = timed(lambda: caption(model, one, args.new_tokens))
    second = timed(lambda: caption(model, one, args.new_tokens))
    caption(model, pixel_values(image_size, args.batch, precision), args.new_tokens)
    # VmHWM, not getrusage's ru_maxrss: on Linux ru_maxrss keeps the forking parent's peak across exec.
    status = Path("/proc/self/status")
    if status.exists():
        line = next(l for l in status.read_text().splitlines() if l.startswith("VmHWM:"))
        peak = int(line.split()[1]) / 1024
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak, "first_caption_s": first, "second_caption_s": second,
                      "first_over_second": first / second}))


def fresh_process_ratios(results: dict, args) -> dict:
    """Each MODA variant's peak RSS over the plain path's (the target: at most 1.15x) and its first caption over
    its second (at most 1.10x), per precision and, in bf16, per way the model was made."""
    out = {}
    for key, entry in results["fresh_processes"].items():
        name, rest = key.split(" ", 1)
        plain = results["fresh_processes"].get(f"moda-plain {rest}")
        if name in MODA_VARIANTS and plain:
            out[f"{key}: peak RSS / moda-plain's"] = entry["peak_rss_mb"] / plain["peak_rss_mb"]
            out[f"{key}: first caption / second"] = entry["first_over_second"]
    return out


def ratios(results: dict, args, paired: bool = False) -> dict:
    """
    MODA over each peer, per precision (throughput: higher is better; latency: lower is better): the ratio of the
    median times, or with `paired` the median of each repeat's ratio (within a repeat the models ran one after another).
    """
    out = {}
    for precision in args.precisions:
        moda = results["models"].get(f"moda {precision}")
        if moda is None:
            continue
        for peer in ("moda-plain", "moda-packed", "moda-unpacked", "git-base", "blip-base"):
            other = results["models"].get(f"{peer} {precision}")
            if other is None:
                continue
            for batch, label in ((args.batch, f"throughput batch {args.batch}"), (1, "latency batch 1")):
                ours, theirs = moda["all_times_s"][str(batch)], other["all_times_s"][str(batch)]
                if paired:
                    time_ratio = statistics.median(a / b for a, b in zip(ours, theirs))
                else:
                    time_ratio = statistics.median(ours) / statistics.median(theirs)
                out[f"{precision}: moda/{peer} {label}"] = time_ratio if label.startswith("latency") else 1 / time_ratio
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=PRECISIONS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS (a fresh process per model)")
    parser.add_argument("--rss-child", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--built_in_bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.models = list(dict.fromkeys(args.models))  # a model named twice would run twice a repeat
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(*args.rss_child, args)
        return {}

    results = run_timings(args)
    results["ratios"] = ratios(results, args)
    results["paired_ratios"] = ratios(results, args, paired=True)
    if args.rss:
        results["fresh_processes"] = {}
        for name in args.models:
            for precision in args.precisions:
                results["fresh_processes"][f"{name} {precision}"] = fresh_process(name, precision, args)
                if precision == "bf16" and name in MODA_VARIANTS:
                    results["fresh_processes"][f"{name} bf16-built"] = fresh_process(name, precision, args, True)
        results["fresh_process_ratios"] = fresh_process_ratios(results, args)
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("rss_child",)}
    results["settings"]["torch"] = torch.__version__
    results["machine"] = machine()
    return print_and_save(results, args.output)


if __name__ == "__main__":
    main()
