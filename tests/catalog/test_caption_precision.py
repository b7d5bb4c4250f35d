"""`moda caption` and `moda caption-image` run in the precision --precision (or MODA_PRECISION) names; "auto" is what
fast_generation_moda's policy says for the CPU (its flag reader is replaced here: the tests hold on any CPU)."""

import contextlib
import json

import pytest
import torch

import moda.cli.caption_image
from moda.catalog.caption import parts_dir_for, read_output
from moda.cli.caption import main as caption_main
from moda.cli.caption import parse_arguments
from moda.cli.caption_image import main as caption_image_main
from moda.model.loading import load_captioner

NATIVE_BF16 = frozenset({"avx512f", "avx512_bf16", "amx_bf16"})
NO_BF16 = frozenset({"avx2", "avx512f"})


@pytest.fixture
def photos(tmp_path, product_images):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(product_images):
        image.save(folder / f"{i}.png")
    return folder


def caption(tiny_moda_dir, photos, output, *options) -> list:
    assert caption_main(["--model", str(tiny_moda_dir), "--images", str(photos), "--output", str(output),
                         "--max_new_tokens", "4", *options]) == 0
    return read_output(output)


def recorded_precision(output) -> str:
    return json.loads(output.with_name(output.name + ".run.json").read_text())["precision"]


def test_fp32_and_bf16_both_caption_and_record_their_precision(tiny_moda_dir, photos, tmp_path, cpu_with, capsys):
    cpu_with(NATIVE_BF16)
    rows = {}
    for precision in ("fp32", "bf16"):
        output = tmp_path / f"{precision}.jsonl"
        rows[precision] = caption(tiny_moda_dir, photos, output, "--precision", precision)
        assert recorded_precision(output) == precision
        assert f"items/s, {precision})" in capsys.readouterr().err
    assert len(rows["bf16"]) == len(rows["fp32"]) == 4
    assert all(isinstance(row["description"], str) and "error" not in row for row in rows["bf16"])


@pytest.mark.parametrize("flags, expected", [(NATIVE_BF16, "bf16"), (NO_BF16, "fp32")])
def test_auto_follows_the_policy(tiny_moda_dir, photos, tmp_path, cpu_with, monkeypatch, flags, expected):
    cpu_with(flags)
    monkeypatch.delenv("MODA_PRECISION")
    assert parse_arguments(["--model", "m", "--images", "i", "--output", "o.jsonl"]).precision == "auto"
    output = tmp_path / "auto.jsonl"
    caption(tiny_moda_dir, photos, output, "--device", "cpu")
    assert recorded_precision(output) == expected


def test_a_rerun_in_another_precision_is_refused_not_mixed_into_the_output(tiny_moda_dir, photos, tmp_path,
                                                                           cpu_with, capsys):
    cpu_with(NATIVE_BF16)
    output = tmp_path / "captions.jsonl"
    first = caption(tiny_moda_dir, photos, output, "--precision", "fp32")
    args = ["--model", str(tiny_moda_dir), "--images", str(photos), "--output", str(output), "--max_new_tokens", "4"]
    assert caption_main(args + ["--precision", "bf16"]) == 1
    assert "other precision ({'precision': 'fp32'}): pass --overwrite" in capsys.readouterr().err
    # An output written before the precision was recorded was written in fp32: fp32 reuses it, bf16 does not.
    settings = output.with_name(output.name + ".run.json")
    settings.write_text(json.dumps({k: v for k, v in json.loads(settings.read_text()).items() if k != "precision"}))
    assert caption_main(args + ["--precision", "fp32"]) == 0 and read_output(output) == first
    assert caption_main(args + ["--precision", "bf16"]) == 1


def test_an_unfinished_run_from_before_the_precision_was_recorded_resumes_in_fp32(tiny_moda_dir, photos, tmp_path,
                                                                                   cpu_with, capsys):
    cpu_with(NATIVE_BF16)
    output = tmp_path / "captions.jsonl"
    caption(tiny_moda_dir, photos, output, "--precision", "fp32")
    settings = json.loads(output.with_name(output.name + ".run.json").read_text())
    # What a run killed before this version recorded precisions leaves: a parts folder whose run.json lacks one.
    output.unlink()
    output.with_name(output.name + ".run.json").unlink()
    parts_dir_for(output).mkdir()
    (parts_dir_for(output) / "run.json").write_text(json.dumps({k: v for k, v in settings.items() if k != "precision"}))
    args = ["--model", str(tiny_moda_dir), "--images", str(photos), "--output", str(output), "--max_new_tokens", "4"]
    assert caption_main(args + ["--precision", "bf16"]) == 1
    err = capsys.readouterr().err
    assert "holds an unfinished run with other settings" in err and "(it ran in fp32: --precision fp32)" in err
    assert caption_main(args + ["--precision", "fp32"]) == 0 and len(read_output(output)) == 4


def test_a_bad_precision_is_refused_naming_it(tiny_moda_dir, photos, tmp_path, monkeypatch, capsys):
    args = ["--model", str(tiny_moda_dir), "--images", str(photos), "--output", str(tmp_path / "c.jsonl")]
    with pytest.raises(SystemExit):
        caption_main(args + ["--precision", "fp16"])
    assert "--precision: invalid choice: 'fp16'" in capsys.readouterr().err
    monkeypatch.setenv("MODA_PRECISION", "half")
    with pytest.raises(SystemExit):
        caption_main(args)
    assert "MODA_PRECISION 'half' is not one of auto, fp32, bf16" in capsys.readouterr().err
    with pytest.raises(ValueError, match="precision 'fp16' is not one of"):
        load_captioner(str(tiny_moda_dir), precision="fp16")


@pytest.mark.parametrize("flags, option, dtype", [(NATIVE_BF16, [], torch.bfloat16), (NO_BF16, [], torch.float32),
                                                  (NATIVE_BF16, ["--precision", "fp32"], torch.float32),
                                                  (NO_BF16, ["--precision", "bf16"], torch.bfloat16)])
def test_caption_image_runs_the_model_in_the_chosen_precision(tiny_moda_dir, photos, cpu_with, monkeypatch, capsys,
                                                              flags, option, dtype):
    cpu_with(flags)
    monkeypatch.delenv("MODA_PRECISION")
    loaded = []

    def recording_loader(*args, **kwargs):
        loaded.append(load_captioner(*args, **kwargs, device="cpu"))
        return loaded[-1]

    monkeypatch.setattr(moda.cli.caption_image, "load_captioner", recording_loader)
    slow_bf16 = flags == NO_BF16 and bool(option)  # bf16 asked for where it is emulated: one warning
    with pytest.warns(UserWarning, match="without native bf16") if slow_bf16 else contextlib.nullcontext():
        assert caption_image_main(["--model", str(tiny_moda_dir), str(photos / "0.png"), *option]) == 0
    assert loaded[0].model.dtype == dtype
    assert capsys.readouterr().out.startswith(f"{photos / '0.png'}\t")

