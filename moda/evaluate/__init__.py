"""Scoring descriptions: the write-up's deterministic scores (description_scores), the optional LLM judge (judge),
describing images in batches (describe), moda eval's run (evaluation) and its report (report). Imports moda.data,
moda.model and moda.io."""
