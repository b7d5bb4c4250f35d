"""Do the fast loop and reduced precision write the same captions as fp32 GenerationMixin, on real photos?

    python benchmarks/precision_agreement.py --model_dir ./moda-demo --dataset ../shared/data/fashion-images

Captions the test split's photos with a trained MODA four ways: fp32 through GenerationMixin (the reference, the
implementation before the fast loop), fp32 through the fast greedy loop (must be identical), bf16
(`model.to(torch.bfloat16)`) and int8 (dynamic quantization of the decoder's Linear layers). Reports the fraction of
captions equal to the reference, and the CPU's bf16 flags with the precision that `--precision auto` picks on it
(bf16 is the default of moda caption, the app and the endpoint where the CPU computes it natively).
"""

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moda.data.catalog import load_catalog  # noqa: E402
from moda.io.images import load_image  # noqa: E402
from moda.model.auto_classes import MODAForConditionalGeneration, MODAProcessor  # noqa: E402
from benchmarks.results import print_and_save  # noqa: E402
from fast_generation_moda import NATIVE_BF16_CPU_FLAGS, cpu_flags, inference_dtype, precision_name  # noqa: E402


def load_variant(model_dir: str, variant: str):
    model = MODAForConditionalGeneration.from_pretrained(model_dir).eval()
    if variant == "fp32-generation-mixin":
        model.fast_greedy = False
    elif variant == "bf16":
        model.to(torch.bfloat16)
    elif variant == "int8":
        model.language_model = torch.ao.quantization.quantize_dynamic(
            model.language_model, {torch.nn.Linear}, dtype=torch.qint8
        )
    return model


def captions(model, processor, images, batch_size: int, max_new_tokens: int) -> list:
    out = []
    for start in range(0, len(images), batch_size):
        inputs = processor(images=images[start:start + batch_size])
        if next(model.parameters()).dtype == torch.bfloat16:
            inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens)
        out += processor.batch_decode(ids, skip_special_tokens=True)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="a trained MODA folder (train_hf.py's output)")
    parser.add_argument("--dataset", default=str(Path(__file__).resolve().parents[2] / "shared/data/fashion-images"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="caption only the first N photos")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    for path, what in ((args.model_dir, "--model_dir"), (args.dataset, "--dataset")):
        if not Path(path).is_dir():
            raise SystemExit(f"{what} {path!r} is not a folder.")
    torch.set_num_threads(args.threads)

    rows = load_catalog(args.dataset)[args.split][: args.limit]
    images = [load_image(row["image"], row.get("_where", "row")) for row in rows]
    processor = MODAProcessor.from_pretrained(args.model_dir)
    results = {"settings": vars(args), "photos": len(images), "torch": torch.__version__,
               "cpu_bf16_flags": sorted(cpu_flags() & NATIVE_BF16_CPU_FLAGS),
               "auto_precision_here": precision_name(inference_dtype("auto")),
               "agreement_with_fp32_generation_mixin": {}}
    reference = captions(load_variant(args.model_dir, "fp32-generation-mixin"), processor, images,
                         args.batch_size, args.max_new_tokens)
    for variant in ("fp32-fast", "bf16", "int8"):
        written = captions(load_variant(args.model_dir, variant), processor, images, args.batch_size,
                           args.max_new_tokens)
        same = sum(a == b for a, b in zip(written, reference))
        results["agreement_with_fp32_generation_mixin"][variant] = same / len(reference)
        results.setdefault("examples_that_differ", {})[variant] = [
            {"fp32": b, variant: a} for a, b in zip(written, reference) if a != b
        ][:5]
    return print_and_save(results, args.output)


if __name__ == "__main__":
    main()
