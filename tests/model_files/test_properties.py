"""Property tests: random images and prompts through the processor and the pipeline."""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline_moda import MODAImageToTextPipeline

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def images(draw):
    height, width = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    shape = (height, width) if channels is None else (height, width, channels)
    return draw(arrays(np.uint8, shape))


prompts = st.one_of(st.none(), st.text(max_size=40))


def encode_or_refuse(processor, **inputs):
    """The processor's output, or None when the text is longer than the tokenizer allows: then the error must say
    so (random unicode can take 4 byte-level tokens a character)."""
    try:
        return processor(**inputs)
    except ValueError as err:
        assert "tokens, more than the" in str(err), str(err)
        return None


@SETTINGS
@given(image=images(), prompt=prompts)
def test_processor_accepts_any_uint8_image_and_prompt(tiny_model_and_processor, image, prompt):
    _, processor = tiny_model_and_processor
    batch = encode_or_refuse(processor, images=image, text=prompt)
    if batch is None:
        return
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert torch.isfinite(batch["pixel_values"]).all()
    ids = batch["input_ids"][0].tolist()
    assert ids[0] == processor.tokenizer.bos_token_id
    # Byte-level BPE loses nothing: the prompt decodes back exactly.
    assert processor.tokenizer.decode(ids[1:]) == (prompt or "")


@SETTINGS
@given(image=images(), prompt=prompts)
def test_pipeline_describes_any_image(tiny_model_and_processor, image, prompt):
    model, processor = tiny_model_and_processor
    captioner = MODAImageToTextPipeline(model=model, processor=processor)
    if encode_or_refuse(processor, images=image, text=prompt) is None:
        return
    result = captioner(image, prompt=prompt, max_new_tokens=4)
    assert isinstance(result, list) and len(result) == 1 and isinstance(result[0]["generated_text"], str)


@SETTINGS
@given(description=st.text(min_size=1, max_size=40).filter(lambda text: text.strip()), prompt=prompts)
def test_training_labels_cover_exactly_the_description_and_eos(tiny_model_and_processor, description, prompt):
    _, processor = tiny_model_and_processor
    batch = encode_or_refuse(processor, images=np.zeros((8, 8, 3), np.uint8), text=prompt, descriptions=[description])
    if batch is None:
        return
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    scored = ids[labels != -100].tolist()
    assert scored[-1] == processor.tokenizer.eos_token_id
    assert processor.tokenizer.decode(scored[:-1]).strip() == description.strip()
    assert (labels[: len(ids) - len(scored)] == -100).all()  # BOS and prompt are never scored
