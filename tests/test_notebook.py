"""notebooks/quickstart.ipynb: committed without outputs, and executed top to bottom it builds, runs and evaluates."""

import json
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "notebooks" / "quickstart.ipynb"


def tagged(notebook: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    (cell,) = [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]
    return cell


def test_quickstart_is_committed_without_outputs():
    notebook = nbformat.read(QUICKSTART, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the quickstart has no code cells"
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert {"run", "plots"} <= {tag for cell in code for tag in cell.metadata.get("tags", [])}


@pytest.mark.slow
def test_quickstart_executes_and_shows_real_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    workdir = tmp_path / "work"
    monkeypatch.setenv("PHIEXPORT_NOTEBOOK_DIR", str(workdir))
    # The kernel's IPython profile and connection files stay in the tmp dir too.
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    # No kernel directories: "python3" resolves to ipykernel's own spec, which launches this interpreter
    # (sys.executable), so the test needs no `ipykernel install` and ignores any python3 kernel a user installed.
    kernel = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    assert kernel.kernel_spec.argv[0] == sys.executable

    notebook = nbformat.read(QUICKSTART, as_version=4)
    client = NotebookClient(notebook, km=kernel, timeout=1800, resources={"metadata": {"path": str(tmp_path)}})
    client.execute(cleanup_kc=True)  # a client handed a kernel manager leaves the kernel running unless told

    errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert errors == []
    assert (workdir / "smollm2-135m-instruct" / "cpu" / "manifest.json").is_file()

    run_output = "".join(out.get("text", "") for out in tagged(notebook, "run").outputs if out.output_type == "stream")
    reply = [line for line in run_output.splitlines() if line.strip() and not line.startswith("$ phiexport")]
    assert reply, f"the run cell printed no reply: {run_output!r}"

    report = json.loads((workdir / "report" / "report.json").read_text())
    (package,) = report["packages"]
    kl_mean = package["metrics"]["kl_mean"]
    # the GGUF's own integers with int8 activations, as llama.cpp computes (0.0025 on the build's 32 problems)
    assert 1e-4 < kl_mean < 0.01

    images = [out for out in tagged(notebook, "plots").outputs if "image/png" in out.get("data", {})]
    assert len(images) == len(report["files"]["plots"]) == 2
