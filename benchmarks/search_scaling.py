"""Search scaling: indexing time per item at 2k, 5k and 20k items, and recall@10 of the HNSW index against exact.

    python benchmarks/search_scaling.py --catalog ../shared/data/fashion-product-images-small --threads 2

The descriptions indexed are the catalog's own product titles (productDisplayName), as `moda caption` rows
{id, file, description}: this measures indexing, not captioning. Text embeddings come from the default embedder
(all-MiniLM-L6-v2, offline package), exactly as `moda index` computes them. Each size is timed on its own:
embedding (`embed_texts`) and the FAISS insertion (`VectorIndex.add`, as `CatalogIndex.add` calls it) on the
first N items. Queries for recall are built from metadata ("Red Dresses for Women") and searched in the 20k
index both exactly (IndexFlatIP) and with HNSW. The results replace the "## Search" section of BENCHMARKS.md.
"""

import argparse
import csv
import platform
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from moda.catalog.search import DEFAULT_EMBEDDER, EXACT_UP_TO, VectorIndex, embed_texts, load_embedder  # noqa: E402


def catalog_rows(catalog: Path) -> list:
    rows = []
    for table in sorted(catalog.glob("*/metadata.csv")):
        with open(table, newline="", encoding="utf-8") as handle:
            rows += [row for row in csv.DictReader(handle) if row.get("productDisplayName", "").strip()]
    return rows


def metadata_queries(rows: list, count: int, seed: int = 0) -> list:
    picked = random.Random(seed).sample(rows, count)
    return [f"{row['baseColour']} {row['articleType']} for {row['gender']}" for row in picked]


def time_embedding(embedder, texts: list) -> tuple:
    started = time.perf_counter()
    vectors = embed_texts(embedder, texts)
    return time.perf_counter() - started, vectors


def time_insertion(vectors: np.ndarray, exact_up_to: int) -> tuple:
    index = VectorIndex(vectors.shape[1], exact_up_to)
    started = time.perf_counter()
    for start in range(0, len(vectors), 1000):  # in batches, as moda index adds new captions
        index.add(vectors[start:start + 1000])
    return time.perf_counter() - started, index


def recall_at(k: int, exact: VectorIndex, approximate: VectorIndex, queries: np.ndarray) -> tuple:
    started = time.perf_counter()
    _, truth = exact.search(queries, k)
    exact_seconds = time.perf_counter() - started
    started = time.perf_counter()
    _, found = approximate.search(queries, k)
    approximate_seconds = time.perf_counter() - started
    recall = np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found)])
    return float(recall), exact_seconds / len(queries), approximate_seconds / len(queries)


def write_section(markdown: Path, section: str) -> None:
    text = markdown.read_text() if markdown.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Search\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    markdown.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", default=str(REPO_ROOT.parent / "shared/data/fashion-product-images-small"))
    parser.add_argument("--sizes", default="2000,5000,20000")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", default=str(REPO_ROOT / "BENCHMARKS.md"), help="'' to print only")
    args = parser.parse_args(argv)
    catalog = Path(args.catalog)
    if not catalog.is_dir():
        sys.exit(f"Catalog folder not found: {catalog} (see ../shared/data/README.md)")
    torch.set_num_threads(args.threads)
    rows = catalog_rows(catalog)
    sizes = sorted({int(size) for size in args.sizes.split(",")})  # the ratios below compare the largest to the smallest
    if max(sizes) > len(rows):
        sys.exit(f"{catalog} has {len(rows)} titled items, fewer than {max(sizes)}.")
    embedder = load_embedder(DEFAULT_EMBEDDER)
    embed_texts(embedder, [row["productDisplayName"] for row in rows[:256]])  # warm-up

    lines, totals, vectors_by_size = [], [], {}
    for size in sizes:
        embed_seconds, vectors = time_embedding(embedder, [row["productDisplayName"] for row in rows[:size]])
        vectors_by_size[size] = vectors
        default_seconds, default_index = time_insertion(vectors, EXACT_UP_TO)
        hnsw_seconds, _ = time_insertion(vectors, 0)
        line = (f"| {size:,} | {1000 * embed_seconds / size:.2f} | {1000 * default_seconds / size:.4f} "
                f"({default_index.kind}) | {1000 * hnsw_seconds / size:.4f} | "
                f"{1000 * (embed_seconds + default_seconds) / size:.2f} |")
        print(line, flush=True)
        lines.append(line)
        totals.append((embed_seconds + default_seconds) / size)
        embed_share = embed_seconds / (embed_seconds + default_seconds)

    largest = max(sizes)
    vectors = vectors_by_size[largest]
    exact, approximate = VectorIndex(vectors.shape[1], largest), VectorIndex(vectors.shape[1], 0)
    exact.add(vectors)
    approximate.add(vectors)
    queries = embed_texts(embedder, metadata_queries(rows[:largest], args.queries))
    recall, exact_query, approximate_query = recall_at(10, exact, approximate, queries)
    print(f"recall@10 = {recall:.4f}", flush=True)

    command = "python benchmarks/search_scaling.py" + "".join(
        f" {arg}" for arg in (argv if argv is not None else sys.argv[1:]))
    section = "\n".join([
        "## Search",
        "",
        f"Indexing {catalog.name} product titles with `moda.catalog.search` (embedder {DEFAULT_EMBEDDER}, 384-d, L2-normalised;",
        f"FAISS exact IndexFlatIP up to {EXACT_UP_TO:,} items, HNSW (M=32, efConstruction=80, efSearch=128) past that).",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s),"
        " shared with other work while measured. Times are milliseconds per item, each size indexed from scratch:",
        "",
        "```bash",
        command,
        "```",
        "",
        "| items | embed ms/item | insert ms/item (index kind) | HNSW insert ms/item | total ms/item |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *lines,
        "",
        f"Per item, {largest:,} items took {totals[-1] / totals[0]:.2f}x the time of {sizes[0]:,} items; embedding is "
        f"{embed_share:.0%} of the time at {largest:,}. recall@10 of HNSW against exact search over {largest:,} items, {args.queries} metadata queries "
        f"(\"Red Dresses for Women\"): **{recall:.4f}**; query time {1000 * exact_query:.3f} ms (exact) vs "
        f"{1000 * approximate_query:.3f} ms (HNSW) per query. The cores are shared, so single rows can be slowed "
        f"by other work (compare the embed column, which does the same work per item at every size).",
        "",
    ])
    if args.markdown:
        write_section(Path(args.markdown), section)
        print(f"wrote the Search section of {args.markdown}")
    else:
        print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
