"""Adapting a CLIP vision tower to a catalog (`moda adapt-vision`) and measuring a tower (`moda eval-vision`).

    pairs.py     catalog rows -> (image, caption) pairs; locked text embeddings (all-MiniLM-L6-v2 or CLIP's text
                 tower), computed once and cached
    tower.py     the tower (from scratch or a pretrained CLIP), the contrastive loss, saving a CLIP vision folder
    adapt.py     the adaptation stage through the Trainer
    evaluate.py  zero-shot attribute accuracy and text-to-image retrieval of a tower

It sits above moda.train (the Trainer conventions) and moda.catalog (the sentence embedder of search).
"""
