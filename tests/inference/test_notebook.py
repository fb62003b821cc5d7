"""notebooks/demo.ipynb runs headless against a checkpoint trained here and saves its PNG."""

import json

import pytest

from tests.conftest import ROOT, shared_data

NOTEBOOK = ROOT / "notebooks" / "demo.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = json.loads(NOTEBOOK.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


@pytest.mark.slow
def test_notebook_executes_and_writes_the_side_by_side_png(tmp_path, tiny_checkpoint,
                                                          monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from PIL import Image

    image = sorted(shared_data("demo-images").glob("*.jpg"))[0]
    output = tmp_path / "side_by_side.png"
    monkeypatch.setenv("INSTSEG_CKPT", str(tiny_checkpoint))
    monkeypatch.setenv("INSTSEG_DEMO_IMAGE", str(image))
    monkeypatch.setenv("INSTSEG_DEMO_OUTPUT", str(output))
    monkeypatch.setenv("INSTSEG_DEMO_THRESHOLD", "0.05")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    width, height = Image.open(output).size
    assert width > 1.5 * height  # two photos next to each other
    printed = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "detections" in printed and "saved" in printed
