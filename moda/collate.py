"""Batches for the Trainer: token ids with label masks from MODAProcessor, plus the cached image tensors."""

import torch
from torch.utils.data import Dataset


class ExampleDataset(Dataset):
    """Examples as compute_features leaves them: image features, an optional prompt and the target description."""

    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        example = self.examples[index]
        return {"features": example["features"], "prompt": example["prompt"], "description": example["description"]}


class MODACollator:
    """
    [BOS] + prompt + description + [EOS], right-padded; labels are -100 for BOS, prompt and padding (the processor
    makes them). `feature_name` is "image_embeds" (frozen vision tower, cached embeddings) or "pixel_values".
    With `flip_images`, pixel_values are mirrored left-right at random: a mirrored garment is the same garment.
    """

    def __init__(self, processor, feature_name: str, max_length: int = None, flip_images: bool = False):
        if feature_name not in ("image_embeds", "pixel_values"):
            raise ValueError(f"feature_name must be 'image_embeds' or 'pixel_values', got {feature_name!r}.")
        self.processor = processor
        self.feature_name = feature_name
        self.max_length = max_length
        self.flip_images = flip_images and feature_name == "pixel_values"

    def __call__(self, examples):
        encoded = self.processor.encode_examples(
            [example["prompt"] for example in examples],
            [example["description"] for example in examples],
            max_length=self.max_length,
        )
        batch = self.processor.pad(encoded, padding_side="right")
        features = torch.stack([example["features"] for example in examples]).float()
        if self.flip_images:
            flip = torch.rand(len(examples)) < 0.5
            features[flip] = features[flip].flip(-1)
        batch[self.feature_name] = features
        return batch
