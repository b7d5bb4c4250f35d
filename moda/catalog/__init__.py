"""Catalog tools: captioning a whole catalog, batched, resumable and sharded (caption), building a training imagefolder
with teacher models (build_dataset), and searching a captioned catalog by text or image (search). Imports
moda.evaluate and the layers below it; never moda.train."""
