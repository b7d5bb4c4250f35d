"""Per-image tensors computed once and cached on disk, keyed by what produced them and by the image's content.

With a frozen vision tower the cached tensor is the 512-d image embedding, so later epochs and later runs never run
the vision tower or decode the JPEG again. A vision tower that trains (a from-scratch MODA) cannot be cached; then
the preprocessed pixel_values are cached instead, which still saves decoding and resizing.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from moda.io.images import content_key, image_bytes, open_image
from moda.io.paths import write_atomically


def model_fingerprint(module: torch.nn.Module, extra: dict = None) -> str:
    """A key for "what produced these features": the module's weights and config (and any extra settings)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    config = getattr(module, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    digest.update(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]


class FeatureCache:
    """Tensors on disk under root/namespace/ab/abcdef....npy, written atomically (temp file + rename)."""

    def __init__(self, root, namespace: str):
        self.directory = Path(root) / namespace
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def get(self, key: str):
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return torch.from_numpy(np.load(path))
        except (ValueError, OSError):  # a file cut short by a crash in an older version: recompute it
            return None

    def put(self, key: str, value: torch.Tensor) -> None:
        path = self.path(key)
        path.parent.mkdir(exist_ok=True)
        array = value.detach().cpu().numpy()
        write_atomically(path, lambda handle: np.save(handle, array))


@torch.no_grad()
def compute_features(examples, encode_batch, cache: FeatureCache, bad_rows, batch_size: int = 32, desc="features"):
    """
    Adds `features` (a tensor) to each example, computing only what the cache lacks: `encode_batch(list of PIL
    images) -> tensor (batch, ...)`. Examples sharing an image share the work. Unreadable images go to `bad_rows`
    and their examples are dropped from the returned list (and reported there).
    """
    keys, features, missing = {}, {}, {}  # features: each distinct image's, read from the cache or computed once
    for example in examples:
        where = example["row"].get("_where", "row")
        try:
            data = image_bytes(example["image"])
        except (OSError, ValueError) as err:
            bad_rows.report(where, f"cannot read the image: {err}")
            continue
        key = content_key(data)
        keys[id(example)] = key
        if key not in features and key not in missing:
            cached = cache.get(key)
            if cached is None:
                missing[key] = (data, where)
            else:
                features[key] = cached

    failed = set()
    pending = list(missing.items())
    for start in tqdm(range(0, len(pending), batch_size), desc=desc, disable=not pending):
        images, batch_keys = [], []
        for key, (data, where) in pending[start:start + batch_size]:
            try:
                images.append(open_image(data, where))
                batch_keys.append(key)
            except ValueError as err:
                bad_rows.report(where, str(err))
                failed.add(key)
        if images:
            for key, value in zip(batch_keys, encode_batch(images)):
                cache.put(key, value)
                features[key] = value.detach().cpu().clone()  # what the cache holds, without a batch's storage

    return [{**example, "features": features[keys[id(example)]]} for example in examples
            if id(example) in keys and keys[id(example)] not in failed]


def image_embedding_encoder(model, processor):
    """encode_batch for a frozen vision tower: PIL images -> (batch, image_embed_dim) image embeddings, on the CPU.
    The training cache and moda search's image index both embed through it, so their embeddings are the same."""

    @torch.no_grad()  # cached features: nothing trains through them
    def encode(images):
        pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        # The processor's tensors are on the CPU; a model on a GPU needs them on its own device.
        return model.get_image_features(pixel_values.to(model.device)).float().cpu()

    return encode


def pixel_values_encoder(processor):
    """encode_batch for a vision tower that trains: PIL images -> preprocessed pixel_values (stored as float16)."""

    def encode(images):
        return processor.image_processor(images=images, return_tensors="pt")["pixel_values"].to(torch.float16)

    return encode
