"""`moda adapt-vision`: a CLIP vision tower learns to meet locked caption embeddings of one or more catalogs' train
splits (the reverse of LiT's locked-image tuning), through the Trainer as train_hf.py trains MODA.

Reads top to bottom: catalogs -> (image, caption) pairs -> locked caption embeddings (cached) -> tower (pretrained
or from scratch) -> cached pixel_values -> Trainer (AdamW + StepLR, InfoNCE with a learnable temperature) -> tower
folder -> optional evaluation on another catalog's test split.
"""

import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import TrainerCallback, set_seed

from moda.data.catalog import BadRows
from moda.data.features import FeatureCache, compute_features, model_fingerprint, pixel_values_encoder
from moda.io.paths import write_atomically
from moda.train.collate import ExampleDataset
from moda.train.arguments import MODATrainingArguments
from moda.train.trainer import EpochToDataset, MODATrainer
from moda.vision.evaluate import embed_pixel_values, evaluate_tower, label_captions, score_embeddings
from moda.vision.pairs import cached_text_embeddings, load_pairs, text_encoder
from moda.vision.tower import (DEFAULT_NEGATIVES, ContrastiveTower, PairCollator, new_tower, pretrained_tower,
                               save_tower)


def cached_pixel_values(examples, image_processor, cache_dir, bad_rows):
    """The examples with their preprocessed pixel_values (decoded once, cached as train_hf.py caches them)."""
    namespace = "pixels-" + model_fingerprint(torch.nn.Identity(), image_processor.to_dict())
    processor = SimpleNamespace(image_processor=image_processor)  # (pixel_values_encoder reads only this)
    return compute_features(examples, pixel_values_encoder(processor), FeatureCache(cache_dir, namespace), bad_rows,
                            desc="pixel values")


class GrowthCurve(TrainerCallback):
    """
    Every `every` epochs, the tower's scores on a validation split (score_embeddings) next to the minutes trained so
    far (the evaluations' own time left out): how the tower grows with minutes, from one run. The validation
    split, not the test split: the curve may be used to choose a run's length.
    """

    def __init__(self, model, examples, candidates: dict, encoder, cache_dir, every: int):
        self.model, self.examples, self.candidates = model, examples, candidates
        self.encoder, self.cache_dir, self.every = encoder, cache_dir, every
        self.points, self.started, self.evaluating = [], time.time(), 0.0

    def on_epoch_end(self, args, state, control, **kwargs):
        epoch = round(state.epoch)
        if epoch % self.every:
            return
        began = time.time()
        self.model.tower.eval()
        embeds = embed_pixel_values(self.model.tower, self.examples)
        self.model.tower.train()
        scores = score_embeddings(embeds, self.examples, self.candidates, self.encoder, self.cache_dir,
                                  float(self.model.scale().detach()))
        minutes = (began - self.started - self.evaluating) / 60
        self.evaluating += time.time() - began
        self.points.append({"epoch": epoch, "train_minutes": round(minutes, 2), **scores})
        print(f"epoch {epoch} ({minutes:.1f} min): zero-shot {scores['zero_shot_marginal']}, "
              f"P@10 {scores.get('attribute_query_precision@10')}")


def growth_curve(model, eval_dataset, image_processor, encoder, cache_dir, every: int, bad_rows):
    """The GrowthCurve callback on `eval_dataset`'s validation split, or None (off, or no such split)."""
    if not every or not eval_dataset:
        return None
    try:
        examples = load_pairs([eval_dataset], "validation", bad_rows)
    except ValueError:  # no validation split: no curve (the test split is never used to watch a run)
        return None
    examples = cached_pixel_values(examples, image_processor, cache_dir, bad_rows)
    return GrowthCurve(model, examples, label_captions(eval_dataset, bad_rows), encoder, cache_dir, every)


def training_arguments(output_dir, num_train_epochs, batch_size, learning_rate, weight_decay, seed, logging_steps):
    """No checkpoints or Trainer evaluation: the stage is minutes long, and a tower is judged by evaluate_tower."""
    return MODATrainingArguments(  # MODA's defaults: the Trainer's fused AdamW, StepLR (a quarter of the run, x0.5)
        output_dir=str(output_dir), num_train_epochs=num_train_epochs, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, weight_decay=weight_decay, seed=seed, logging_steps=logging_steps,
        save_strategy="no", eval_strategy="no", report_to="none", remove_unused_columns=False,
        dataloader_pin_memory=False, dataloader_drop_last=True, disable_tqdm=True,
    )


def adapt_vision(datasets: list, output_dir, model_name_or_path: str = None, text_encoder_kind: str = "minilm",
                 tower_size: str = "tiny", image_size: int = None, patch_size: int = None,
                 caption_template: str = None, max_train_samples: int = None, negatives: str = DEFAULT_NEGATIVES,
                 augment_images: bool = True, num_train_epochs: float = 10, batch_size: int = 128,
                 learning_rate: float = 1e-3, weight_decay: float = 0.05, seed: int = 42,
                 feature_cache_dir=".cache/moda-features", eval_dataset: str = None, logging_steps: int = 50,
                 eval_every_epochs: int = 0, encoder=None) -> dict:
    """
    Trains a tower on the train splits of `datasets` (never another split) and saves it in `output_dir`; with
    `eval_dataset`, measures it on that catalog's test split (evaluate_tower), and with `eval_every_epochs` on its
    validation split every so many epochs (GrowthCurve). `encoder` (encode, key) stands in for
    the text side named by `text_encoder_kind` (tests). Returns the summary it writes to adaptation_summary.json.
    """
    if not datasets:
        raise ValueError("give at least one --dataset to adapt the tower to")
    started = time.time()
    set_seed(seed)
    bad_rows = BadRows("skip")
    examples = load_pairs(datasets, "train", bad_rows, caption_template, max_train_samples, seed)
    if not examples:
        raise ValueError(f"No usable train rows in {', '.join(map(repr, datasets))}: {bad_rows.summary()}")
    encoder = encoder or text_encoder(text_encoder_kind, model_name_or_path)
    captions = sorted({example["description"] for example in examples})
    caption_embeds = cached_text_embeddings(captions, encoder, feature_cache_dir)
    dim = caption_embeds.shape[1]
    if model_name_or_path:
        tower, image_processor = pretrained_tower(model_name_or_path, dim)
    else:
        tower, image_processor = new_tower(tower_size, dim, image_size, patch_size)
    examples = cached_pixel_values(examples, image_processor, feature_cache_dir, bad_rows)

    model = ContrastiveTower(tower, caption_embeds, negatives)
    args = training_arguments(output_dir, num_train_epochs, batch_size, learning_rate, weight_decay, seed,
                              logging_steps)
    train_dataset = ExampleDataset(examples, augment=augment_images, seed=seed)
    curve = growth_curve(model, eval_dataset, image_processor, encoder, feature_cache_dir, eval_every_epochs, bad_rows)
    trainer = MODATrainer(model=model, args=args, train_dataset=train_dataset,
                                      data_collator=PairCollator(captions),
                                      callbacks=[EpochToDataset(train_dataset)] + ([curve] if curve else []))
    trainer.train()
    train_minutes = (time.time() - started - (curve.evaluating if curve else 0)) / 60

    adaptation = {"text_encoder": text_encoder_kind, "text_model": model_name_or_path if text_encoder_kind == "clip"
                  else "all-MiniLM-L6-v2", "logit_scale": float(model.scale().detach()), "datasets": list(datasets),
                  "caption_template": caption_template, "negatives": negatives, "train_pairs": len(examples),
                  "captions": len(captions), "started_from": model_name_or_path or f"scratch ({tower_size})"}
    save_tower(model.tower, image_processor, output_dir, adaptation)
    summary = {**adaptation, "train_minutes": round(train_minutes, 2), "epochs": num_train_epochs,
               "batch_size": batch_size, "learning_rate": learning_rate, "augment_images": augment_images,
               "image_size": tower.config.image_size, "patch_size": tower.config.patch_size,
               "tower_parameters": sum(p.numel() for p in tower.parameters()), "bad_rows": len(bad_rows.rows),
               "loss_curve": [(entry["step"], round(entry["loss"], 4)) for entry in trainer.state.log_history
                              if "loss" in entry]}
    if curve:
        summary["growth_curve"] = curve.points
    if eval_dataset:
        summary["evaluation"] = evaluate_tower(model.tower.eval(), image_processor, adaptation, eval_dataset, encoder,
                                               feature_cache_dir)
    write_atomically(Path(output_dir) / "adaptation_summary.json",
                     lambda handle: handle.write(json.dumps(summary, indent=2).encode("utf-8")))
    return summary
