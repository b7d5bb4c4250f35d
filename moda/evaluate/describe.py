"""Descriptions of images by a captioning model (MODA or BLIP), in batches: what moda eval scores, what moda caption
writes, what the training callback tracks."""

import torch


@torch.no_grad()
def describe_images(model, processor, images, batch_size: int = 16, max_new_tokens: int = 32, progress: bool = False,
                    prompt: str = None):
    """
    Greedy descriptions for PIL images, in batches (processor + model.generate; no pipeline), answering `prompt` when
    one is given. `max_new_tokens=None` leaves the length to the model's generation config.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    was_training = model.training
    model.eval()
    texts = []
    starts = range(0, len(images), batch_size)
    try:
        for start in tqdm(starts, desc="describing", unit="batch", disable=not progress):
            inputs = processor(images=list(images[start:start + batch_size]), text=prompt or None, return_tensors="pt")
            texts += describe_inputs(model, processor, inputs, max_new_tokens)
    finally:
        model.train(was_training)
    return texts


@torch.no_grad()
def describe_inputs(model, processor, inputs, max_new_tokens: int = 32) -> list:
    """Greedy descriptions for one batch of the processor's outputs (describe_images' model half: moda caption
    prepares the next batch's inputs while the model describes these)."""
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in inputs.items()}
    # None is left out rather than passed: generate would take it as a value.
    limits = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    ids = model.generate(**inputs, **limits)
    return [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]
