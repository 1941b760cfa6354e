"""notebooks/colab_quickstart.ipynb runs top to bottom on CPU with a fixture checkpoint."""
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
matplotlib = pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "colab_quickstart.ipynb"


def code_cells(nb):
    """Sources of the code cells to run: no `skip-in-tests` cells, no shell/magic lines."""
    for cell in nb.cells:
        if cell.cell_type != "code" or "skip-in-tests" in cell.metadata.get("tags", []):
            continue
        lines = [l for l in cell.source.splitlines() if not l.lstrip().startswith(("!", "%"))]
        yield "\n".join(lines)


def test_notebook_is_generated_from_its_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", ROOT / "notebooks" / "make_colab_quickstart.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in nb.cells] == [c.source for c in gen.CELLS]


def test_notebook_runs(fixtures_dir, monkeypatch, tmp_path):
    matplotlib.use("Agg")
    monkeypatch.setenv("MATPAC_CHECKPOINT", str(fixtures_dir / "matpac_flat.pt"))
    monkeypatch.chdir(tmp_path)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    namespace = {"__name__": "__main__"}
    for source in code_cells(nb):
        exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    assert namespace["clip"].shape == (960,)
    assert namespace["frames"].shape[1] == 960
    import json, os

    probe = json.load(open(os.path.join(namespace["task"], "probe.json")))
    assert probe["tasks"]["demo_task"]["metric"] == "accuracy"
