"""Text-generation pipelines and their answers: build-dataset's refiner and teacher, and moda eval's LLM judge."""


def load_text_generator(model, device=None, trust_remote_code=False):
    """A text-generation pipeline set up for batched answers (build-dataset's refiner, the eval judge)."""
    from transformers import pipeline

    generator = pipeline("text-generation", model=model, device=device, dtype="auto",
                         trust_remote_code=trust_remote_code)
    if generator.tokenizer.pad_token is None:  # batching needs one; decoder-only models pad on the left
        generator.tokenizer.pad_token = generator.tokenizer.eos_token
    generator.tokenizer.padding_side = "left"
    return generator


def generated_text(output) -> str:
    """The new text of one pipeline answer, whether it is a string or a chat (the last message's content)."""
    while isinstance(output, list):  # one input's answers: [{"generated_text": ...}]
        output = output[0] if output else {}
    text = output.get("generated_text", "") if isinstance(output, dict) else output
    if isinstance(text, list):  # a chat: the assistant's message
        text = text[-1].get("content", "") if text else ""
    if isinstance(text, list):  # content given as parts
        text = " ".join(part.get("text", "") for part in text if isinstance(part, dict))
    return text if isinstance(text, str) else ""
