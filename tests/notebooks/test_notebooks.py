"""The notebooks run top to bottom on the embedded default (smallest settings) and show what they promise: figures, PNGs, results.parquet."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pyarrow.parquet as pq
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# The smallest settings that still go through every stage; injected after each notebook's
# "parameters" cell, the way papermill does, so the notebooks carry no test-only branches.
# The weight-free encoder: the pretrained default embeds ~10 images/s on one core, and the
# notebooks' mechanics do not depend on which encoder built the index (tests/index_builder runs the default).
SMOKE = {"K": 2, "STEPS": 4, "LORA_STEPS": 2, "LORA_BATCH_SIZE": 2, "RAY_CPUS": 2, "EMBEDDER": "offline-content"}
# Appended last: the notebook must leave no Ray driver behind in its kernel.
RAY_CHECK = "import ray\nprint('ray initialized:', ray.is_initialized())"


def execute(name: str, cwd: Path, **parameters) -> nbformat.NotebookNode:
    """Run notebooks/NAME in a fresh python3 kernel whose working directory is cwd; raises on any cell error."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} needs exactly one cell tagged 'parameters'; found {len(tagged)}"
    source = "\n".join(f"{key} = {value!r}" for key, value in {**SMOKE, **parameters}.items())
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source))
    nb.cells.append(nbformat.v4.new_code_cell(RAY_CHECK))
    # A per-cell timeout: a hung Ray stage fails the test instead of stalling the suite.
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode, cell_id: str) -> list:
    return next(cell for cell in nb.cells if cell.get("id") == cell_id).outputs


def figures(nb: nbformat.NotebookNode, cell_id: str) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs(nb, cell_id))


def text(nb: nbformat.NotebookNode, cell_id: str) -> str:
    return "".join(o.get("text", "") for o in outputs(nb, cell_id) if o.output_type == "stream")


def test_notebooks_are_committed_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        stale = [c.get("id") for c in nb.cells if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not stale, f"{path.name}: cells {stale} carry outputs; clear them before committing"


@pytest.mark.timeout(420)
def test_quickstart_reconstructs_one_held_out_image(tmp_path):
    nb = execute("01_quickstart.ipynb", tmp_path, OUT="qs")

    for cell_id in ("image", "retrieve", "adapt", "compare"):
        assert figures(nb, cell_id) == 1, f"cell {cell_id} shows no figure"
    report = text(nb, "compare")
    for arm in ("plain restoration", "no adaptation", "ADIR"):
        assert f"{arm}: PSNR" in report
    assert "ADIR − no adaptation:" in report
    out = tmp_path / "qs"  # relative OUT lands in the kernel's working directory
    corpus = len(list((out / "assets" / "corpus").rglob("*.png")))
    assert json.loads((out / "index" / "manifest.json").read_text())["count"] == corpus
    assert f"index of {corpus} vectors written" in text(nb, "index")
    for name in ("input", "plain", "no_adaptation", "adir", "ground_truth"):
        assert (out / f"{name}.png").stat().st_size > 0
    assert (out / "adapter.safetensors").is_file()
    assert "ray initialized: False" in text(nb, nb.cells[-1].id)


@pytest.mark.timeout(420)
def test_dataset_notebook_runs_the_job_and_pairs_the_arms(tmp_path):
    nb = execute("02_index_and_dataset.ipynb", tmp_path, OUT="ds", IMAGES=2)

    assert figures(nb, "plot") == 1 and figures(nb, "images") == 1
    runs = tmp_path / "ds" / "runs"
    for mode in ("baseline", "adir"):
        table = pq.read_table(runs / f"sr4-{mode}" / "results.parquet").to_pylist()
        assert len(table) == 2, f"{mode}: expected one row per input image"
        assert all(r["error"] is None and r["psnr"] is not None and r["mode"] == mode for r in table)
        if mode == "adir":
            assert all(r["neighbours_used"] == SMOKE["K"] for r in table)
    assert "adir − baseline: PSNR" in text(nb, "evaluate")
    assert (tmp_path / "ds" / "evaluation" / "report.html").is_file()
    assert "ray initialized: False" in text(nb, nb.cells[-1].id)
