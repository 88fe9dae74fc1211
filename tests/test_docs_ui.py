"""What README and docs tell a newcomer about the UIs holds for the installed Ray and MLflow.

Docs write a place in a UI as a path, ``Ray dashboard → Jobs → <job> → Ray Core Overview`` or
``MLflow UI → Model training → Runs → Columns``; every name in such a path (``<...>`` stands for
the user's own job, experiment or run) must be a label of that UI's installed build.
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest
import ray

from siamim.orchestration.tracking.ui import UI_PORT

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "docs" / "platform.md", REPO / "docs" / "ablation.md"]
RAY_BUILD = Path(ray.__file__).parent / "dashboard" / "client" / "build" / "static" / "js"
MLFLOW_BUILD = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
PATH = re.compile(r"(Ray dashboard|MLflow UI)((?: → [^→\n;,.()]+)+)")


def labels(build: Path, pattern: str) -> set[str]:
    return {m for p in build.glob("*.js") for m in re.findall(pattern, p.read_text(errors="replace"))}


@pytest.fixture(scope="module")
def ui_labels() -> dict[str, set[str]]:
    return {
        "Ray dashboard": labels(RAY_BUILD, r'title:"([^"]+)"'),  # its tabs and page sections
        "MLflow UI": labels(MLFLOW_BUILD, r'defaultMessage:"([^"]+)"'),
    }


def ui_paths() -> list[tuple[str, str, list[str]]]:
    found = []
    for doc in DOCS:
        for ui, rest in PATH.findall(doc.read_text()):
            names = [n.strip().strip("*`") for n in rest.split("→")[1:]]
            found.append((doc.name, ui, [n for n in names if not n.startswith("<")]))
    return found


def test_every_ui_place_the_docs_name_exists(ui_labels):
    paths = ui_paths()
    docs_with_paths = {doc for doc, _, _ in paths}
    assert docs_with_paths == {d.name for d in DOCS}, f"docs without a UI path: {docs_with_paths}"
    assert {ui for _, ui, _ in paths} == {"Ray dashboard", "MLflow UI"}
    for doc, ui, names in paths:
        for name in names:
            assert name in ui_labels[ui], f"{doc}: {ui} has no {name!r} (path {' → '.join(names)})"


def test_mlflow_ui_commands_use_the_venv_and_a_port_the_dev_stack_leaves_free():
    stack = (REPO / "platform" / "dev_stack.sh").read_text()
    taken = {int(p) for p in re.findall(r'_PORT="\$\{[A-Z0-9_]+_PORT:-(\d+)\}"', stack)}
    assert {6380, 8265, 5000, 9000} <= taken
    commands = [line for doc in DOCS for line in doc.read_text().splitlines() if re.search(r"\bmlflow ui --", line)]
    assert commands
    for line in commands:
        port = re.search(r"--port (\d+)", line)
        assert port and int(port.group(1)) == UI_PORT and UI_PORT not in taken, line
        assert ".venv/bin/mlflow ui" in line, line
