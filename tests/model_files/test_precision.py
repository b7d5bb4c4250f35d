"""The inference precision policy (fast_generation_moda.inference_dtype): bf16 where the CPU computes bf16 natively,
fp32 elsewhere and on request. Every CPU here is described by its flags, so the tests hold on any machine."""

import warnings

import pytest
import torch

import fast_generation_moda
from fast_generation_moda import (configured_precision, cpu_computes_bf16_natively, cpu_flags, inference_dtype,
                                  precision_name, warn_bf16_is_emulated)

# Flag sets as /proc/cpuinfo lists them (abridged): Intel Sapphire Rapids (AMX), AMD Zen 4 (AVX512-BF16 without
# AMX), Intel Ice Lake (AVX-512 without bf16), an AVX2-only CPU.
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512bw", "amx_tile", "amx_int8", "amx_bf16"}
ZEN4 = {"avx2", "avx512f", "avx512bw", "avx512_bf16"}
ICE_LAKE = {"avx2", "avx512f", "avx512bw", "avx512_vnni"}
AVX2_ONLY = {"sse4_2", "avx", "avx2", "fma"}


@pytest.fixture
def warnings_anew():
    """warn_bf16_is_emulated warns once a process: forget that it did, before and after the test."""
    warn_bf16_is_emulated.cache_clear()
    yield
    warn_bf16_is_emulated.cache_clear()


@pytest.mark.parametrize("flags, native", [(SAPPHIRE_RAPIDS, True), (ZEN4, True), (ICE_LAKE, False),
                                           (AVX2_ONLY, False), (set(), False)])
def test_native_bf16_is_amx_or_avx512_bf16(flags, native):
    assert cpu_computes_bf16_natively(flags) is native
    assert inference_dtype("auto", "cpu", flags) == (torch.bfloat16 if native else torch.float32)


@pytest.mark.parametrize("flags", [SAPPHIRE_RAPIDS, ICE_LAKE, set()])
def test_fp32_on_request_everywhere_and_auto_is_fp32_on_a_gpu(flags):
    assert inference_dtype("fp32", "cpu", flags) == torch.float32
    assert inference_dtype("auto", "cuda", flags) == torch.float32
    assert inference_dtype("auto", torch.device("cuda", 1), flags) == torch.float32
    assert inference_dtype("bf16", "cuda:0", flags) == torch.bfloat16


def test_bf16_where_it_is_native_runs_without_a_warning(warnings_anew):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert inference_dtype("bf16", "cpu", ZEN4) == torch.bfloat16
        assert inference_dtype("bf16", "cuda", ICE_LAKE) == torch.bfloat16  # not a CPU: no emulation to warn of


def test_bf16_asked_for_without_native_bf16_runs_and_warns_once(warnings_anew):
    with pytest.warns(UserWarning, match="without native bf16.*slower than fp32") as caught:
        assert inference_dtype("bf16", "cpu", ICE_LAKE) == torch.bfloat16
        assert inference_dtype("bf16", "cpu", AVX2_ONLY) == torch.bfloat16
    assert len([each for each in caught if "native bf16" in str(each.message)]) == 1


@pytest.mark.parametrize("bad", ["fp16", "BF16", "float32", "", None, torch.bfloat16])
def test_a_bad_precision_is_one_error_naming_it(bad):
    with pytest.raises(ValueError, match=f"precision {bad!r} is not one of auto, fp32, bf16"):
        inference_dtype(bad, "cpu", ZEN4)


def test_the_environment_variable_sets_the_precision_and_a_bad_value_is_named():
    assert configured_precision({}) == "auto"
    assert configured_precision({"MODA_PRECISION": ""}) == "auto"  # empty counts as unset
    assert configured_precision({"MODA_PRECISION": "fp32"}) == "fp32"
    with pytest.raises(ValueError, match="MODA_PRECISION 'half' is not one of auto, fp32, bf16"):
        configured_precision({"MODA_PRECISION": "half"})


def test_the_default_flags_come_from_the_flag_reader(monkeypatch):
    monkeypatch.setattr(fast_generation_moda, "cpu_flags", lambda: frozenset(SAPPHIRE_RAPIDS))
    assert inference_dtype() == torch.bfloat16
    monkeypatch.setattr(fast_generation_moda, "cpu_flags", lambda: frozenset(ICE_LAKE))
    assert inference_dtype() == torch.float32


def test_cpu_flags_read_linux_cpuinfo_and_nothing_elsewhere(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512_bf16\n"
                       "bugs\t\t: sysret_ss_attrs\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()  # no /proc/cpuinfo: not Linux
    arm = tmp_path / "arm-cpuinfo"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # aarch64 names no "flags" line
    assert cpu_flags(str(arm)) == frozenset() and not cpu_computes_bf16_natively(cpu_flags(str(arm)))


def test_precision_names_round_trip():
    assert precision_name(inference_dtype("fp32")) == "fp32"
    assert precision_name(torch.bfloat16) == "bf16"
