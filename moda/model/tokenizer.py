"""Trains the byte-level BPE tokenizer a from-scratch MODA uses (OPT's kind of tokenizer, fitted to captions)."""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2TokenizerFast

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"


def train_caption_tokenizer(texts, vocab_size: int = 1024, model_max_length: int = 128) -> GPT2TokenizerFast:
    """
    A GPT-2 style byte-level BPE trained offline on `texts`. Every encoded sequence starts with BOS: the
    template lives in tokenizer.json, so the saved tokenizer does this under any transformers version.
    """
    texts = [text for text in texts if isinstance(text, str) and text.strip()]
    if not texts:
        raise ValueError("Cannot train a tokenizer: no non-empty caption text was given.")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    bos_id = bpe.token_to_id(BOS)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return GPT2TokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        add_prefix_space=False,
    )
