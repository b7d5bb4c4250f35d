"""The BLIP captioning baseline: fine-tuned by train_hf.py (`--architecture blip`) on the same data as MODA.

BLIP's text decoder cross-attends to every patch of its vision encoder, so it trains on pixel_values (cached once per
image, like a from-scratch MODA) rather than on one pooled embedding.
"""

import torch
from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor, BertTokenizerFast

IGNORE_INDEX = -100


def load_blip(blip_model: str, revision: str = None, cache_dir: str = None):
    """A BlipForConditionalGeneration and its BlipProcessor (Hub id or local folder, at `revision`), with transformers'
    own code only."""
    # trust_remote_code=False said outright: left unset, transformers asks on stdin whether to run the code that a
    # folder's processor config names for its image processor, and a "y" runs it.
    model = BlipForConditionalGeneration.from_pretrained(blip_model, trust_remote_code=False, revision=revision,
                                                         cache_dir=cache_dir)
    processor = BlipProcessor.from_pretrained(blip_model, trust_remote_code=False, revision=revision,
                                              cache_dir=cache_dir)
    return model, processor


class BlipCollator:
    """Descriptions -> BLIP decoder inputs: [BOS] text [SEP]; labels ignore BOS and padding."""

    def __init__(self, processor, bos_token_id: int, max_length: int = 64):
        self.processor = processor
        self.bos_token_id = bos_token_id
        self.max_length = max_length

    def __call__(self, examples):
        if any(example["prompt"] for example in examples):
            raise ValueError("The BLIP baseline trains captions only: drop --qa_from_metadata for --architecture blip.")
        text = self.processor.tokenizer(
            [example["description"] for example in examples], padding=True, truncation=True,
            max_length=self.max_length, return_tensors="pt",
        )
        input_ids = text["input_ids"].clone()
        input_ids[:, 0] = self.bos_token_id  # BLIP's decoder starts from its BOS ([DEC]), as generate() does
        labels = input_ids.masked_fill(text["attention_mask"] == 0, IGNORE_INDEX)
        labels[:, 0] = IGNORE_INDEX
        pixel_values = torch.stack([example["features"] for example in examples]).float()
        return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": text["attention_mask"],
                "labels": labels}


def build_tiny_blip(captions, image_size: int = 32):
    """A small random BLIP with a WordPiece tokenizer trained on `captions` (offline; for tests and CPU trials)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    wordpiece.train_from_iterator(captions, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", bos_token="[DEC]")
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, encoder_hidden_size=32, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id),
        projection_dim=32,
    )
    from transformers import BlipImageProcessor  # here: without torchvision the name's lookup warns (see build.py)

    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return BlipForConditionalGeneration(config), BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
