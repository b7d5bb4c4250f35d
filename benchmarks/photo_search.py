"""Search by photo content, end to end: `moda index --vision_model` over a catalog's test photos (no captions), then
eval-vision's attribute queries ("black sports shoes for men") through `moda search`'s code path, precision@10;
beside it, eval-vision's own precision@10 for the same tower (the two should agree: same embeddings, same queries).

    nice -n 5 python benchmarks/photo_search.py --vision_model /tmp/tower-4ep \
        --dataset ../shared/data/fashion-images --output_dir /tmp/photo-index

Prints a JSON summary (machine, minutes, both P@10) for BENCHMARKS.md's "Vision tower adapted first" section.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from moda.catalog.search import CatalogIndex  # noqa: E402
from moda.data.catalog import BadRows  # noqa: E402
from moda.vision.evaluate import attribute_queries, evaluate_tower  # noqa: E402
from moda.vision.pairs import load_pairs, text_encoder  # noqa: E402
from moda.vision.photo_index import update_photo_index  # noqa: E402
from moda.vision.tower import load_tower  # noqa: E402


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def search_precision(index: CatalogIndex, queries: list, k: int) -> float:
    """Mean over (query, relevant image files) of relevant files in the top k hits / min(k, relevant): eval-vision's
    precision@k, read from the index's hits instead of a matrix of embeddings."""
    scores = []
    for query, wanted in queries:
        found = {str(Path(hit["file"]).resolve()) for hit in index.search(query, k)}
        scores.append(len(found & wanted) / min(k, len(wanted)))
    return round(sum(scores) / max(1, len(scores)), 4)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision_model", required=True, help="a tower folder from moda adapt-vision")
    parser.add_argument("--dataset", default="../shared/data/fashion-images")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output_dir", default="/tmp/photo-index", help="the index folder (rebuilt)")
    parser.add_argument("--feature_cache_dir", default=".cache/moda-features", help="eval-vision's cache")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)

    started = time.time()
    counts = update_photo_index(args.vision_model, args.dataset, args.output_dir, split=args.split, rebuild=True)
    index_minutes = (time.time() - started) / 60
    index = CatalogIndex.load(args.output_dir)

    # eval-vision's queries: every colour + product type + gender that at least 5 photos of the split share
    examples = load_pairs([args.dataset], args.split, BadRows("skip"))
    queries = [(query, {str(Path(examples[i]["image"]).resolve()) for i in relevant})
               for query, relevant in attribute_queries([example["row"]["_attributes"] for example in examples])]
    started = time.time()
    searched = search_precision(index, queries, args.k)
    search_seconds = time.time() - started

    tower, image_processor, adaptation = load_tower(args.vision_model)
    evaluated = evaluate_tower(tower, image_processor, adaptation, args.dataset, text_encoder("minilm"),
                               args.feature_cache_dir, split=args.split, k=args.k)
    result = {
        "machine": f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "tower": counts["tower"], "dataset": args.dataset, "split": args.split, "photos_indexed": counts["total"],
        "unreadable": len(counts["unreadable"]), "index_minutes": round(index_minutes, 2),
        "attribute_queries": len(queries), "search_seconds_per_query": round(search_seconds / max(1, len(queries)), 4),
        f"search_precision@{args.k}": searched,
        f"eval_vision_precision@{args.k}": evaluated.get(f"attribute_query_precision@{args.k}"),
        "eval_vision_attribute_queries": evaluated.get("attribute_queries"),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
