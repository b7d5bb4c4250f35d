"""Model card, Inference Endpoints handler and Hub upload for MODA model folders.

    from hub_card import prepare_model_folder, push_model_folder
    prepare_model_folder("moda-demo")                         # README.md (card) + handler.py (+ image_io_moda.py)
    push_model_folder("moda-demo", "user/moda")               # -> commit hash to pin with revision=
"""

from hub_card.card import (
    TRAINING_INFO_KEYS,
    build_model_card,
    describe_hardware,
    prepare_model_folder,
    write_handler,
    write_model_card,
)
from hub_card.push import push_model_folder

__all__ = [
    "TRAINING_INFO_KEYS",
    "build_model_card",
    "describe_hardware",
    "prepare_model_folder",
    "push_model_folder",
    "write_handler",
    "write_model_card",
]
