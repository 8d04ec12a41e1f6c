"""DESIGN.md's layout rule: a stage's package never imports another stage's package, except
`phi_lib.model` and `phi_lib.data.tokenizer`; what stages share lives in top-level modules
(config, paths, io, backends, packed, ...), and stages talk through files only."""
import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PHI_LIB = Path(__file__).resolve().parent.parent / "phi_lib"
STAGE_PACKAGES = ("synth", "filter", "data", "model", "train", "evaluate", "safety", "posttrain")
SHARED = ("phi_lib.model", "phi_lib.data.tokenizer")
"""Stage modules any stage may import (with their submodules)."""
IMPORTERS = {"import_module", "__import__"}


def imported_modules(tree: ast.AST, package: str):
    """(line, module) of every import in a module of `package`: `import`/`from` statements at
    any depth, relative ones resolved, `from phi_lib import data` as `phi_lib.data`, and
    `importlib.import_module("...")` with a literal name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield node.lineno, base
            yield from ((node.lineno, f"{base}.{a.name}") for a in node.names if base == "phi_lib")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in IMPORTERS:
                yield node.lineno, node.args[0].value


def stage_of(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "phi_lib" and parts[1] in STAGE_PACKAGES else None


def allowed(module: str) -> bool:
    return any(module == s or module.startswith(s + ".") for s in SHARED)


def violations(root: Path = PHI_LIB) -> list[str]:
    out = []
    for stage in STAGE_PACKAGES:
        for path in sorted((root / stage).rglob("*.py")):
            rel = path.relative_to(root.parent)
            package = ".".join(rel.with_suffix("").parts[:-1])
            for line, module in imported_modules(ast.parse(path.read_text(), str(path)), package):
                other = stage_of(module)
                if other is not None and other != stage and not allowed(module):
                    out.append(f"{rel}:{line}: imports {module} (stage package {other!r})")
    return out


def test_no_stage_imports_another_stages_package():
    found = violations()
    assert not found, ("stages talk through files only; move what they share to a top-level "
                       "phi_lib module (DESIGN.md):\n" + "\n".join(found))


def test_the_check_sees_every_import_form(tmp_path):
    """The scanner itself, on a constructed package: each form is caught, allowed ones pass."""
    pkg = tmp_path / "phi_lib" / "train"
    (pkg / "sub").mkdir(parents=True)
    for stage in STAGE_PACKAGES:
        (tmp_path / "phi_lib" / stage).mkdir(exist_ok=True)
    (pkg / "a.py").write_text(
        "import phi_lib.data.pack\n"                      # 1 caught
        "from phi_lib.data import PackedDataset\n"        # 2 caught
        "from phi_lib import evaluate, config\n"          # 3 caught (evaluate only)
        "def f():\n"
        "    from phi_lib.filter.dedup import x\n"        # 5 caught, inside a function
        "    importlib.import_module('phi_lib.synth')\n"  # 6 caught
        "from phi_lib.model import PhiForCausalLM\n"      # allowed
        "from phi_lib.model.planning import flops\n"      # allowed
        "from phi_lib.data.tokenizer import load_tokenizer\n"  # allowed
        "from phi_lib.packed import PackedDataset\n"      # top-level: allowed
        "from phi_lib.train.phases import Phase\n"        # its own package
        "from . import loop\n")
    (pkg / "sub" / "b.py").write_text("from ...data import build\nfrom .. import phases\n")
    found = violations(tmp_path / "phi_lib")
    assert [v.split(": imports ")[0] for v in found] == [
        "phi_lib/train/a.py:1", "phi_lib/train/a.py:2", "phi_lib/train/a.py:3",
        "phi_lib/train/a.py:5", "phi_lib/train/a.py:6", "phi_lib/train/sub/b.py:1"], found
    assert found[-1].endswith("imports phi_lib.data (stage package 'data')")  # resolved


def test_the_packed_format_is_shared_not_copied():
    import phi_lib.data
    import phi_lib.packed

    assert phi_lib.data.PackedDataset is phi_lib.packed.PackedDataset  # re-exported, one class
