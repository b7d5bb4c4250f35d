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
    With `augment` (pixel_values only, for a vision tower that trains from scratch on a small catalog), images are
    mirrored left-right and shifted by a few pixels at random: the same garment either way. Colours are never
    touched: colour is a label.
    """

    def __init__(self, processor, feature_name: str, max_length: int = None, augment: bool = False, max_shift: int = 4):
        if feature_name not in ("image_embeds", "pixel_values"):
            raise ValueError(f"feature_name must be 'image_embeds' or 'pixel_values', got {feature_name!r}.")
        self.processor = processor
        self.feature_name = feature_name
        self.max_length = max_length
        self.augment = augment and feature_name == "pixel_values"
        self.max_shift = max_shift

    def __call__(self, examples):
        encoded = self.processor.encode_examples(
            [example["prompt"] for example in examples],
            [example["description"] for example in examples],
            max_length=self.max_length,
        )
        batch = self.processor.pad(encoded, padding_side="right")
        features = torch.stack([example["features"] for example in examples]).float()
        if self.augment:
            features = random_flip_and_shift(features, self.max_shift)
        batch[self.feature_name] = features
        return batch


def random_flip_and_shift(pixels: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Mirrors half the images and moves each by up to max_shift pixels (edges repeated), as in CIFAR training."""
    flip = torch.rand(len(pixels)) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    if max_shift <= 0:
        return pixels
    height, width = pixels.shape[-2:]
    padded = torch.nn.functional.pad(pixels, [max_shift] * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (len(pixels), 2))
    return torch.stack([
        image[:, dy:dy + height, dx:dx + width] for image, (dy, dx) in zip(padded, offsets.tolist())
    ])
