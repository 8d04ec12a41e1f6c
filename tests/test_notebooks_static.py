"""Notebook conventions (DESIGN.md): a `parameters` cell with params/overrides/run_dir,
teaching markdown first, thin cells, committed without outputs."""
import ast
import shutil
import subprocess

import nbformat
import pytest

from phi_lib.paths import project_root
from phi_lib.stages import STAGES

pytestmark = pytest.mark.unit
NOTEBOOKS = sorted((project_root() / "notebooks").glob("*.ipynb"))


def test_stage_notebooks_are_named_after_stages():
    stage_files = {s.notebook.name for s in STAGES.values()}
    for nb in NOTEBOOKS:
        assert nb.name in stage_files or nb.name.startswith("00_"), nb.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    assert cells[0].cell_type == "markdown" and len(cells[0].source) > 200, "teach first"
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged `parameters`"
    tree = ast.parse(params[0].source)
    names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}
    assert names == {"params", "overrides", "run_dir"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, f"{path.name}: strip outputs"
    if shutil.which("nbstripout"):
        r = subprocess.run(["nbstripout", "--verify", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_are_thin(path):
    """No function or class definitions and no loops in notebooks: that code lives in phi_lib."""
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        src = "\n".join(l for l in c.source.splitlines() if not l.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(src)):
            assert not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While)), (
                f"{path.name}: move `{ast.unparse(node).splitlines()[0]}` into phi_lib")
