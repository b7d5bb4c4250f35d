"""What train_hf.py trains with besides the Trainer: batches (collate), checkpoints that appear only when complete
(checkpointing), and the attribute-metrics callback (callbacks). Imports moda.evaluate and the layers below it."""
