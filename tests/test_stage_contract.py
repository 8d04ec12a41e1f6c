"""One stage contract: every stage notebook builds one `phi_lib.stage_base.BaseStage` of its
own stage number and calls verbs on it; no notebook writes a manifest itself."""
import ast
import importlib
import inspect
import json
import pkgutil
from pathlib import Path

import pytest

import phi_lib
from phi_lib.stage_base import BaseStage
from phi_lib.stages import STAGES

pytestmark = pytest.mark.unit

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _stage_classes():
    found = {}
    for mod in pkgutil.walk_packages(phi_lib.__path__, "phi_lib."):
        if mod.name.endswith("__main__"):
            continue
        module = importlib.import_module(mod.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseStage) and cls is not BaseStage and cls.__module__ == mod.name:
                found.setdefault(cls.number, set()).add(cls)
    return found


def _code(nb_path):
    nb = json.loads(nb_path.read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def test_every_built_stage_is_one_base_stage_subclass():
    classes = _stage_classes()
    for number, stage in STAGES.items():
        if stage.built:
            assert len(classes.get(number, ())) == 1, (stage.dirname, classes.get(number))


@pytest.mark.parametrize("number", [n for n, s in STAGES.items() if s.built])
def test_the_notebook_drives_its_stage_object(number):
    (cls,) = _stage_classes()[number]
    code = _code(STAGES[number].notebook)
    tree = ast.parse(code)
    calls = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr
             for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, (ast.Name, ast.Attribute))}
    assert cls.__name__ in calls, f"{STAGES[number].notebook.name} does not build {cls.__name__}"
    assert "write_manifest" in calls
    assert "phi_lib.io.write_manifest" not in code  # the stage writes its manifest, not a cell
