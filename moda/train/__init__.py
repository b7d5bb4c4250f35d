"""What train_hf.py trains with, one module a step: arguments (parse and check), defaults, data (examples with cached
image features), model, optim (MODA's StepLR schedule), trainer (the Trainer and its callbacks), saving, report (the
held-out evaluation); and below them batches (collate), checkpoints that appear only when complete (checkpointing) and
the attribute-metrics callback (callbacks). Imports moda.evaluate and the layers below it."""
