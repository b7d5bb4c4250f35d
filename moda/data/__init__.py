"""Catalog data: reading catalogs into rows (catalog), attribute vocabularies (attributes), the offline demo catalog
(synthetic), and the on-disk cache of per-image tensors (features). Imports only moda.io."""
