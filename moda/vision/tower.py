"""The vision tower that learns to meet locked caption embeddings: where it starts, its loss, how it is saved.

The saved folder is a plain CLIPVisionModelWithProjection with its CLIPImageProcessor (what
MODAForConditionalGeneration.from_backbones and `train_hf.py --vision_model` take), plus vision_adaptation.json:
which text side it was trained to meet (search must embed queries with the same one) and its learned temperature.
"""

import json
import math
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModelWithProjection

from modeling_moda import load_clip_vision
from moda.io.paths import write_atomically
from moda.model.build import clip_image_processor, image_processor_at, vision_config_for_size
from moda.train.checkpointing import FINAL_STAGING_DIR, publish_staged_folder

ADAPTATION_FILE = "vision_adaptation.json"
NEGATIVES = ("batch", "catalog")
# In-batch negatives won the calibration (BENCHMARKS.md, "Vision tower adapted first"): higher zero-shot accuracy,
# P@10 and R@10 than every caption of the catalogs as negatives, at the same minutes.
DEFAULT_NEGATIVES = "batch"
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: a temperature below 0.01 makes the loss spiky


def new_tower(size: str, projection_dim: int, image_size: int = None, patch_size: int = None):
    """A from-scratch tower of a moda.model.build size whose projection has the text side's width."""
    overrides = {name: value for name, value in (("image_size", image_size), ("patch_size", patch_size)) if value}
    config = vision_config_for_size(size, projection_dim=projection_dim, **overrides)
    if config.image_size % config.patch_size:
        raise ValueError(f"--image_size {config.image_size} is not a multiple of --patch_size {config.patch_size}")
    return CLIPVisionModelWithProjection(config), image_processor_at(config.image_size)


def pretrained_tower(model_name_or_path: str, projection_dim: int):
    """A pretrained CLIP's tower (full CLIPModel or vision-only checkpoint) and its image processor; a projection of
    another width than the text side's is replaced by a new one (the rest of the tower keeps what it learned)."""
    tower = load_clip_vision(model_name_or_path, trust_remote_code=False)
    if tower.config.projection_dim != projection_dim:
        tower.visual_projection = nn.Linear(tower.config.hidden_size, projection_dim, bias=False)
        tower.config.projection_dim = projection_dim
    return tower, clip_image_processor(model_name_or_path)


def contrastive_loss(image_embeds, caption_embeds, caption_ids, scale, negatives: str = DEFAULT_NEGATIVES):
    """
    InfoNCE between L2-normalised image embeddings (B, d) and the locked caption embeddings (C, d); caption_ids (B,)
    is each image's caption. `catalog`: each image against every caption of the catalogs, which a locked text side
    has at hand (C-way cross-entropy). `batch`: CLIP's symmetric in-batch loss, where images that share a caption
    (common with template captions) are positives of each other, not negatives.
    """
    if negatives == "catalog":
        return F.cross_entropy(scale * image_embeds @ caption_embeds.T, caption_ids)
    logits = scale * image_embeds @ caption_embeds[caption_ids].T
    positives = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = positives / positives.sum(1, keepdim=True)  # symmetric: the same targets for text -> image
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class ContrastiveTower(nn.Module):
    """A CLIP vision tower with projection and a learnable temperature, trained against locked caption embeddings."""

    def __init__(self, tower, caption_embeds: torch.Tensor, negatives: str = DEFAULT_NEGATIVES):
        super().__init__()
        if negatives not in NEGATIVES:
            raise ValueError(f"--negatives must be one of {', '.join(NEGATIVES)}, got {negatives!r}")
        self.tower = tower
        self.negatives = negatives
        # Locked and rebuilt from the captions each run: not part of the checkpoint.
        self.register_buffer("caption_embeds", F.normalize(caption_embeds.float(), dim=-1), persistent=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, pixel_values, caption_ids):
        image_embeds = F.normalize(self.tower(pixel_values=pixel_values).image_embeds, dim=-1)
        loss = contrastive_loss(image_embeds, self.caption_embeds, caption_ids, self.scale(), self.negatives)
        return {"loss": loss, "image_embeds": image_embeds}


class PairCollator:
    """Batches of ExampleDataset items: the images' pixel_values and the index of each one's caption."""

    def __init__(self, captions: list):
        self.caption_ids = {caption: i for i, caption in enumerate(captions)}

    def __call__(self, items):
        return {"pixel_values": torch.stack([item["features"] for item in items]).float(),
                "caption_ids": torch.tensor([self.caption_ids[item["description"]] for item in items])}


def save_tower(tower, image_processor, output_dir, adaptation: dict) -> None:
    """The tower folder, through a staging folder whose files are moved in whole (weights last)."""
    output_dir = Path(output_dir)
    staging = output_dir / FINAL_STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        tower.save_pretrained(staging)
        image_processor.save_pretrained(staging)
        data = json.dumps(adaptation, indent=2).encode("utf-8")
        write_atomically(staging / ADAPTATION_FILE, lambda handle: handle.write(data))
        publish_staged_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_tower(path):
    """A tower folder: (tower, image processor, its vision_adaptation.json or {} for a plain CLIP checkpoint)."""
    tower = load_clip_vision(str(path), trust_remote_code=False).eval()
    image_processor = clip_image_processor(str(path))
    return tower, image_processor, read_adaptation(path)


# The fields of vision_adaptation.json that MODA reads (eval-vision, moda index), and the JSON types they must have.
ADAPTATION_FIELD_TYPES = {"text_encoder": (str,), "text_model": (str,), "logit_scale": (float, int)}


def read_adaptation(path) -> dict:
    """A tower folder's vision_adaptation.json (the text side it was adapted to, its temperature, ...), or {} for a
    plain CLIP checkpoint (or a Hub name), which records none."""
    info_file = Path(path) / ADAPTATION_FILE
    if not info_file.is_file():
        return {}
    try:
        adaptation = json.loads(info_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{str(info_file)!r} is not JSON: {err}") from None
    if not isinstance(adaptation, dict):
        raise ValueError(f"{str(info_file)!r} must hold a JSON object, not {type(adaptation).__name__}")
    for key, kinds in ADAPTATION_FIELD_TYPES.items():  # the fields MODA reads, each of the type it expects
        if key in adaptation and (not isinstance(adaptation[key], kinds) or isinstance(adaptation[key], bool)):
            raise ValueError(f"{str(info_file)!r}: {key!r} must be {kinds[0].__name__}, not {adaptation[key]!r}")
    return adaptation
