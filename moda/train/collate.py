"""Batches for the Trainer: token ids with label masks from MODAProcessor, plus the cached image tensors."""

import torch
from torch.utils.data import Dataset


class ExampleDataset(Dataset):
    """
    Examples as compute_features leaves them: image features, an optional prompt and the target description.

    With `augment` (pixel_values of a vision tower that trains from scratch on a small catalog), each image is
    mirrored left-right and shifted by a few pixels at random: the same garment either way. Colours are never
    touched: colour is a label. The randomness is a function of (seed, epoch, index) alone, so a run resumed from a
    checkpoint sees exactly the images the uninterrupted run saw; `set_epoch` is called at each epoch's start.
    """

    def __init__(self, examples, augment: bool = False, max_shift: int = 4, seed: int = 0):
        self.examples = examples
        self.augment = augment
        self.max_shift = max_shift
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        example = self.examples[index]
        features = example["features"]
        if self.augment:
            generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
            features = flip_and_shift(features.float(), self.max_shift, generator)
        return {"features": features, "prompt": example["prompt"], "description": example["description"]}


def flip_and_shift(pixels: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Mirrors one (channels, height, width) image with probability 1/2 and moves it by up to max_shift pixels
    (edges repeated), as in CIFAR training."""
    if torch.rand((), generator=generator) < 0.5:
        pixels = pixels.flip(-1)
    if max_shift <= 0:
        return pixels
    height, width = pixels.shape[-2:]
    padded = torch.nn.functional.pad(pixels[None], [max_shift] * 4, mode="replicate")[0]
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=generator).tolist()
    return padded[:, dy:dy + height, dx:dx + width]


class MODACollator:
    """
    [BOS] + prompt + description + [EOS], right-padded; labels are -100 for BOS, prompt and padding (the processor
    makes them). `feature_name` is "image_embeds" (frozen vision tower, cached embeddings) or "pixel_values".
    """

    def __init__(self, processor, feature_name: str, max_length: int = None):
        if feature_name not in ("image_embeds", "pixel_values"):
            raise ValueError(f"feature_name must be 'image_embeds' or 'pixel_values', got {feature_name!r}.")
        self.processor = processor
        self.feature_name = feature_name
        self.max_length = max_length

    def __call__(self, examples):
        encoded = self.processor.encode_examples(
            [example["prompt"] for example in examples],
            [example["description"] for example in examples],
            max_length=self.max_length,
        )
        batch = self.processor.pad(encoded, padding_side="right")
        batch[self.feature_name] = torch.stack([example["features"] for example in examples]).float()
        return batch
