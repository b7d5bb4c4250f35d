"""A pipeline call or a generate call never chooses code to run.

transformers 5's `generate` loads and runs `custom_generate/generate.py` from a folder or Hub repo named by
`custom_generate=` when `trust_remote_code=True` comes with it, and the pipeline passes its `generate_kwargs` on:
MODA's generate refuses `custom_generate` and `trust_remote_code` wherever its caller comes from.
"""

import pytest
from PIL import Image
from transformers import GenerationMixin, pipeline

MODA_REFUSES = r"MODA's generate refuses \['custom_generate', 'trust_remote_code'\]: .* code the caller chooses"


@pytest.fixture
def attack(tmp_path):
    """A folder holding a custom_generate (transformers 5's layout: custom_generate/generate.py with a `generate`
    function) that writes a marker file when it runs, and the marker's path."""
    marker = tmp_path / "custom_generate_ran"
    folder = tmp_path / "attacker_generate"
    (folder / "custom_generate").mkdir(parents=True)
    (folder / "custom_generate" / "generate.py").write_text(
        "from pathlib import Path\n\n\n"
        "def generate(model, **kwargs):\n"
        f"    Path({str(marker)!r}).write_text('caller-chosen code ran')\n"
        "    return None\n"
    )
    return str(folder), marker


def test_the_attack_folder_runs_where_nothing_refuses_it(tiny_model_and_processor, attack):
    """The folder is a custom_generate that transformers 5 runs: the refusals below are not vacuous."""
    model, processor = tiny_model_and_processor
    folder, marker = attack
    inputs = processor(images=Image.new("RGB", (40, 52)), return_tensors="pt")
    GenerationMixin.generate(model, inputs["input_ids"], custom_generate=folder, trust_remote_code=True)
    assert marker.read_text() == "caller-chosen code ran"


def test_model_generate_refuses_custom_generate_and_trust_remote_code(tiny_model_and_processor, attack):
    model, processor = tiny_model_and_processor
    folder, marker = attack
    inputs = processor(images=Image.new("RGB", (40, 52)), return_tensors="pt")
    with pytest.raises(ValueError, match=MODA_REFUSES):
        model.generate(**inputs, custom_generate=folder, trust_remote_code=True)
    # each alone too: trust_remote_code alone lets a decoding mode moved to the Hub (e.g. penalty_alpha's
    # contrastive search) fetch and run its repo's code
    for name, value in (("custom_generate", folder), ("trust_remote_code", True), ("trust_remote_code", False)):
        with pytest.raises(ValueError, match=rf"refuses \['{name}'\]"):
            model.generate(**inputs, **{name: value})
    assert not marker.exists()
    assert model.generate(**inputs, max_new_tokens=2, custom_generate=None, trust_remote_code=None).shape[1] <= 2


def test_the_pipeline_refuses_custom_generate_in_generate_kwargs(tiny_moda_dir, attack):
    folder, marker = attack
    captioner = pipeline("image-to-text", model=str(tiny_moda_dir), trust_remote_code=True)
    with pytest.raises(ValueError, match=MODA_REFUSES):
        captioner(Image.new("RGB", (40, 52)), generate_kwargs={"custom_generate": folder, "trust_remote_code": True})
    assert not marker.exists()
