"""The endpoint handler runs the model in the precision its deployer sets (MODA_PRECISION; "auto" by default, as
fast_generation_moda's policy decides for the CPU, whose flag reader is replaced here), and no request chooses it."""

import io

import pytest
import torch
from PIL import Image


NATIVE_BF16 = frozenset({"avx512f", "amx_tile", "amx_bf16"})
NO_BF16 = frozenset({"avx2", "avx512f"})


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 52), (30, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("variable, flags, dtype", [(None, NATIVE_BF16, torch.bfloat16), ("", NO_BF16, torch.float32),
                                                    ("auto", NO_BF16, torch.float32),
                                                    ("fp32", NATIVE_BF16, torch.float32),
                                                    ("bf16", NATIVE_BF16, torch.bfloat16)])
def test_the_handler_runs_in_the_precision_its_deployer_sets(handler_module, handler_folder, cpu_with, monkeypatch,
                                                             variable, flags, dtype):
    cpu_with(flags)
    if variable is None:
        monkeypatch.delenv("MODA_PRECISION")
    else:
        monkeypatch.setenv("MODA_PRECISION", variable)
    handler = handler_module.EndpointHandler(str(handler_folder))
    assert handler.captioner.model.dtype == dtype
    result = handler({"inputs": png_bytes(), "parameters": {"max_new_tokens": 4}})
    assert isinstance(result[0]["generated_text"], str)


def test_bf16_set_where_it_is_emulated_runs_with_a_warning(handler_module, handler_folder, cpu_with, monkeypatch):
    cpu_with(NO_BF16)
    monkeypatch.setenv("MODA_PRECISION", "bf16")
    with pytest.warns(UserWarning, match="without native bf16"):
        handler = handler_module.EndpointHandler(str(handler_folder))
    assert handler.captioner.model.dtype == torch.bfloat16


def test_a_bad_precision_stops_the_handler_naming_the_variable(handler_module, handler_folder, monkeypatch):
    monkeypatch.setenv("MODA_PRECISION", "fp16")
    with pytest.raises(ValueError, match="MODA_PRECISION 'fp16' is not one of auto, fp32, bf16"):
        handler_module.EndpointHandler(str(handler_folder))


def test_a_request_cannot_choose_the_precision(endpoint_handler):
    for parameters in ({"precision": "fp32"}, {"dtype": "bfloat16"}, {"generate_kwargs": {"torch_dtype": "float32"}}):
        with pytest.raises(ValueError, match="not allowed"):
            endpoint_handler({"inputs": png_bytes(), "parameters": parameters})
