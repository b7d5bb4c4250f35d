"""The catalog job end to end: `moda caption` over fashion-product-images-small's test photos with a full-size MODA
(random weights, nothing downloaded), against the model alone at the same batch size, and GIT-base and Florence-2-base
doing the same job with their own processors.

    python benchmarks/catalog_job.py --max_samples 256 --chunk 128        # a quick check
    python benchmarks/catalog_job.py --output catalog_job.json            # all 1,984 test photos, in chunks of 248
    python benchmarks/catalog_job.py --precision bf16 --peer_max_samples 0

What is timed, per chunk of photos (the two interleaved, their order alternating, so that a machine shared with other
work slows both alike; the spread of the per-chunk ratios is reported):
- model only: `model.generate(**inputs)` on the chunk's batches, read and preprocessed beforehand by MODA's processor;
- the job: `moda caption --images chunk.csv --output ...` through the CLI's own main (in this process), everything
  included: listing the catalog, loading the saved model, reading, decoding and preprocessing the photos (overlapped
  with the model by moda caption's prefetch), generating, decoding the text, attributes, part files and the merge.
Both write exactly `--max_new_tokens` tokens per photo (the saved model's generation config sets min_new_tokens too:
random weights may stop at any token), and the job's captions are checked against the model-only run's tokens.
The peers run the same job in this script (read and decode through moda.io.images, preprocess with their own
processor in the same prefetch thread, generate exactly as many tokens, decode the text) over `--peer_max_samples`
photos: they are 5-50x slower. Florence-2-base is transformers' native Florence2 at the base text size (768-d BART,
6 + 6 layers) and 768 px; every tokenizer is built offline from a generated vocabulary of the real size.
"""

import argparse
import contextlib
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generation_speed import build_model  # noqa: E402
from benchmarks.results import machine, print_and_save  # noqa: E402

DEFAULT_CATALOG = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-product-images-small" / "test"
# moda caption's defaults (moda/cli/caption.py): the job is timed as users run it.
BATCH_SIZE, MAX_NEW_TOKENS = 32, 32


# ---------------------------------------------------------------------------------------------------------------
# Models, processors and tokenizers, offline
# ---------------------------------------------------------------------------------------------------------------

def byte_level_vocabulary(folder: Path, size: int, specials: list) -> tuple:
    """vocab.json and merges.txt of a byte-level BPE with `size` tokens: `specials` first (at the ids their model
    uses), the 256 byte symbols, then made-up word pieces ("Ġw123"); no merges. Decoding costs what a real one does."""
    from tokenizers import pre_tokenizers

    vocabulary = {token: i for i, token in enumerate(specials)}
    for symbol in pre_tokenizers.ByteLevel.alphabet():
        vocabulary.setdefault(symbol, len(vocabulary))
    for n in range(size - len(vocabulary)):
        vocabulary[f"Ġw{n}"] = len(vocabulary)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocabulary))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return str(folder / "vocab.json"), str(folder / "merges.txt")


def save_moda(folder: Path, precision: str, max_new_tokens: int):
    """A full-size MODA (MODAConfig() defaults, random weights) and its processor saved as `moda caption` loads them;
    returns the model (for the model-only timing) and the processor."""
    from transformers import GPT2TokenizerFast

    from moda.model.build import image_processor_at, set_generation_defaults
    from processing_moda import MODAProcessor

    model, image_size = build_model("moda", precision)
    # OPT's layout: <s> 0, <pad> 1, </s> 2 (OPT's BOS and EOS), <unk> 3.
    files = byte_level_vocabulary(folder / "vocabulary", model.config.text_config.vocab_size,
                                  ["<s>", "<pad>", "</s>", "<unk>"])
    tokenizer = GPT2TokenizerFast(*files, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    processor = MODAProcessor(image_processor=image_processor_at(image_size), tokenizer=tokenizer)
    set_generation_defaults(model, tokenizer, max_new_tokens)
    model.generation_config.min_new_tokens = max_new_tokens
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def git_base(folder: Path, precision: str):
    """GIT-base (GitConfig(), random weights) and its own processor: CLIP's image processor at 224 px and a BERT
    WordPiece tokenizer of BERT's layout and size (30,522)."""
    from transformers import BertTokenizerFast, CLIPImageProcessor, GitProcessor

    model, image_size = build_model("git-base", precision)
    specials = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{n}" for n in range(model.config.vocab_size - len(specials))]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(specials + words) + "\n")
    tokenizer = BertTokenizerFast(str(folder / "vocab.txt"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    return model, GitProcessor(image_processor=image_processor, tokenizer=tokenizer), None


def florence_2_base(folder: Path, precision: str):
    """Florence-2-base: transformers' native Florence2 with the base text size (768-d BART, 6 + 6 layers; DaViT's
    default stages, projected to 768), 768 px, random weights, and its own Florence2Processor (the image processor
    at 768 px, a BART tokenizer of the real size with the <image> token) answering "<CAPTION>"."""
    from transformers import (BartTokenizerFast, CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor)

    files = byte_level_vocabulary(folder, 51289, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = BartTokenizerFast(*files, extra_special_tokens={"image_token": "<image>"})
    text = dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12, decoder_attention_heads=12,
                encoder_ffn_dim=3072, decoder_ffn_dim=3072, vocab_size=len(tokenizer))
    config = Florence2Config(text_config=text, vision_config=dict(projection_dim=768),
                             image_token_id=tokenizer.image_token_id)
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(config).eval()
    if precision == "bf16":
        model.to(torch.bfloat16)
    image_processor = CLIPImageProcessor(size={"height": 768, "width": 768}, do_center_crop=False,
                                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                         image_seq_length=577)
    return model, Florence2Processor(image_processor=image_processor, tokenizer=tokenizer), "<CAPTION>"


PEERS = {"git-base": git_base, "florence-2-base": florence_2_base}


# ---------------------------------------------------------------------------------------------------------------
# The photos and the two ways of captioning them
# ---------------------------------------------------------------------------------------------------------------

def catalog_rows(catalog: Path, max_samples: int) -> list:
    """The first `max_samples` rows of the catalog's metadata.csv, each with `image`: its photo's absolute path."""
    with open(catalog / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:max_samples]
    for row in rows:
        row["image"] = str((catalog / row.pop("file_name")).resolve())
    return rows


def write_chunk(rows: list, path: Path) -> Path:
    """The chunk as a catalog table that `moda caption --images` reads (image path, id and the attribute columns)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def batches_of(rows: list, size: int) -> list:
    return [rows[start:start + size] for start in range(0, len(rows), size)]


def read_photos(rows: list) -> list:
    from moda.io.images import load_image

    return [load_image(row["image"], row["image"]) for row in rows]


def clocks() -> tuple:
    """Wall seconds and this process's CPU seconds (every thread's): on a shared machine the CPU seconds are what
    the work itself cost, the wall seconds also how much of the CPUs the others left."""
    return time.perf_counter(), time.process_time()


def since(start: tuple) -> tuple:
    return tuple(now - then for now, then in zip(clocks(), start))


@torch.no_grad()
def model_only(model, prepared: list, generate_kwargs: dict) -> tuple:
    """(wall, CPU) seconds of `model.generate` over batches prepared beforehand, and the generated ids."""
    ids = []
    start = clocks()
    for inputs in prepared:
        ids.append(model.generate(**inputs, **generate_kwargs))
    return since(start), ids


def caption_job(chunk_csv: Path, folder: Path, output: Path, vocabulary: Path, batch_size: int,
                max_new_tokens: int, precision: str) -> tuple:
    """(wall, CPU) seconds of one `moda caption` run over the chunk, through the CLI's main."""
    from moda.cli.caption import main

    argv = ["--model", str(folder), "--images", str(chunk_csv), "--output", str(output), "--vocabulary",
            str(vocabulary), "--batch_size", str(batch_size), "--max_new_tokens", str(max_new_tokens), "--overwrite",
            "--precision", precision]  # the model-only side's precision, not the CPU's default
    start = clocks()
    with contextlib.redirect_stdout(sys.stderr):
        status = main(argv)
    seconds = since(start)
    if status != 0:
        raise RuntimeError(f"moda caption {' '.join(argv)} exited with {status}.")
    return seconds


def peer_job(model, processor, rows: list, batch_size: int, max_new_tokens: int, prompt: str = None) -> tuple:
    """A peer doing the catalog job: read and decode (moda.io.images), preprocess with its own processor in a
    background thread (as moda caption does), generate exactly `max_new_tokens` tokens, decode the text."""
    from moda.io.prefetch import prefetched

    def prepare(batch):
        text = {} if prompt is None else {"text": [prompt] * len(batch)}
        return processor(images=read_photos(batch), return_tensors="pt", **text)

    texts = []
    start = time.perf_counter()
    with torch.no_grad(), contextlib.closing(prefetched(batches_of(rows, batch_size), prepare)) as batches:
        for inputs in batches:
            if model.dtype == torch.bfloat16:
                inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                 do_sample=False, num_beams=1)
            texts += processor.batch_decode(ids, skip_special_tokens=True)
    return time.perf_counter() - start, texts


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------

def measure_moda(args, work: Path) -> dict:
    """Model only and the job, interleaved chunk by chunk; the captions of the two checked against each other."""
    from moda.catalog.caption import read_output
    from moda.model.loading import load_captioner

    rows = catalog_rows(args.catalog, args.max_samples)
    folder = work / "moda"
    model, processor = save_moda(folder, args.precision, args.max_new_tokens)
    load_start = time.perf_counter()
    loaded = load_captioner(str(folder), precision=args.precision)  # as the job loads it
    load_seconds = time.perf_counter() - load_start
    loaded_dtype = str(loaded.model.dtype)
    del loaded
    generate_kwargs = dict(max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens)
    warm = processor(images=read_photos(rows[:args.batch_size]), return_tensors="pt")
    model_only(model, [warm], generate_kwargs)  # first call: oneDNN's kernels chosen, the fast path's packing
    chunks = []
    for number, chunk in enumerate(batches_of(rows, args.chunk)):
        prepared = [processor(images=read_photos(batch), return_tensors="pt")
                    for batch in batches_of(chunk, args.batch_size)]
        chunk_csv = write_chunk(chunk, work / f"chunk-{number}.csv")
        output = work / f"captions-{number}.jsonl"
        model_first = number % 2 == 0
        if model_first:
            model_seconds, ids = model_only(model, prepared, generate_kwargs)
        job_seconds = caption_job(chunk_csv, folder, output, args.catalog, args.batch_size, args.max_new_tokens,
                                  args.precision)
        if not model_first:
            model_seconds, ids = model_only(model, prepared, generate_kwargs)
        expected = [text.strip() for batch_ids in ids
                    for text in processor.batch_decode(batch_ids, skip_special_tokens=True)]
        written = [row.get("description", "") for row in read_output(output)]
        new_tokens = [batch_ids.shape[1] for batch_ids in ids]  # MODA's generate returns the new tokens only
        chunks.append({"images": len(chunk), "model_only_s": model_seconds[0], "job_s": job_seconds[0],
                       "model_only_cpu_s": model_seconds[1], "job_cpu_s": job_seconds[1],
                       "ratio": model_seconds[0] / job_seconds[0], "cpu_ratio": model_seconds[1] / job_seconds[1],
                       "captions_match": written == expected, "new_tokens": sorted(set(new_tokens))})
        print(f"chunk {number + 1}: {len(chunk)} photos, model only {len(chunk) / model_seconds[0]:.2f} images/s, "
              f"job {len(chunk) / job_seconds[0]:.2f} images/s, ratio {chunks[-1]['ratio']:.3f}, "
              f"CPU-time ratio {chunks[-1]['cpu_ratio']:.3f}", file=sys.stderr, flush=True)
    images = sum(chunk["images"] for chunk in chunks)
    results = {"photos": images, "batch_size": args.batch_size, "chunks": chunks, "model_load_s": load_seconds,
               "loaded_dtype": loaded_dtype, "captions_match": all(chunk["captions_match"] for chunk in chunks)}
    for clock, suffix in (("wall", "s"), ("cpu", "cpu_s")):
        model_total, job_total = sum(c[f"model_only_{suffix}"] for c in chunks), sum(c[f"job_{suffix}"] for c in chunks)
        ratios = [c["ratio" if clock == "wall" else "cpu_ratio"] for c in chunks]
        results[clock] = {
            "model_only_images_per_s": images / model_total, "job_images_per_s": images / job_total,
            "ratio": model_total / job_total,
            "ratio_per_chunk": {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)},
        }
    return results


def measure_peers(args, work: Path) -> dict:
    results = {}
    for name in args.peers:
        photos = args.florence_max_samples if name == "florence-2-base" else args.peer_max_samples
        rows = catalog_rows(args.catalog, photos)
        model, processor, prompt = PEERS[name](work / name, args.precision)
        peer_job(model, processor, rows[:2], args.peer_batch_size, 2, prompt)  # warm up
        seconds, texts = peer_job(model, processor, rows, args.peer_batch_size, args.max_new_tokens, prompt)
        results[name] = {"photos": len(rows), "batch_size": min(args.peer_batch_size, len(rows)), "job_s": seconds,
                         "job_images_per_s": len(rows) / seconds, "captions": len(texts)}
        print(f"{name}: {len(rows)} photos, {len(rows) / seconds:.3f} images/s", file=sys.stderr, flush=True)
        del model
    return results


def spread(clock: dict) -> str:
    chunks = clock["ratio_per_chunk"]
    return f"{clock['ratio']:.3f} (chunks {chunks['min']:.3f}-{chunks['max']:.3f})"


def print_table(results: dict) -> None:
    moda = results["moda"]
    wall, cpu = moda["wall"], moda["cpu"]
    lines = ["| job | photos | batch | images/s | share of MODA's model-only | by CPU time |",
             "| --- | --- | --- | --- | --- | --- |",
             f"| MODA model only | {moda['photos']} | {moda['batch_size']} | "
             f"{wall['model_only_images_per_s']:.2f} | 1.00 | 1.00 |",
             f"| MODA `moda caption` | {moda['photos']} | {moda['batch_size']} | {wall['job_images_per_s']:.2f} | "
             f"{spread(wall)} | {spread(cpu)} |"]
    for name, peer in results["peers"].items():
        lines.append(f"| {name} job | {peer['photos']} | {peer['batch_size']} | {peer['job_images_per_s']:.3f} | "
                     f"{peer['job_images_per_s'] / wall['model_only_images_per_s']:.3f} | |")
    print("\n".join(lines), file=sys.stderr)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG, help="an imagefolder split (metadata.csv)")
    parser.add_argument("--max_samples", type=int, default=1984, help="photos for MODA (the first N)")
    parser.add_argument("--chunk", type=int, default=248,
                        help="photos per interleaved chunk (model only and the job, in alternating order)")
    parser.add_argument("--peer_max_samples", type=int, default=64, help="photos for GIT-base (0: no peers)")
    parser.add_argument("--florence_max_samples", type=int, default=16, help="photos for Florence-2-base (slowest)")
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--peer_batch_size", type=int, default=BATCH_SIZE)
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE)
    parser.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if not (args.catalog / "metadata.csv").exists():
        parser.error(f"--catalog {args.catalog}: no metadata.csv there (see ../shared/data/README.md)")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="moda-catalog-job-") as work:
        results = {"machine": machine(), "moda": measure_moda(args, Path(work))}
        results["peers"] = measure_peers(args, Path(work)) if args.peer_max_samples > 0 else {}
    results["settings"] = {key: str(value) for key, value in vars(args).items()}
    results["minutes"] = (time.perf_counter() - started) / 60
    print_table(results)
    return print_and_save(results, args.output)


if __name__ == "__main__":
    main()
