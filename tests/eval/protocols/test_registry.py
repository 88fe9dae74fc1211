"""The protocol registry: discovery from the package folder, the nested ``eval.<protocol>.*`` settings,
the report's columns and the ``--protocols`` list, all without importing torch; the imports between
protocols and computations pointing one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siamim.config import ConfigError, flatten, load_config
from siamim.eval import protocols as registry
from siamim.eval.protocols import names, parse_protocols, protocols
from siamim.eval.report import METRICS
from siamim.eval.subsets import limit_indices


def test_registry_holds_one_protocol_per_module_in_run_order():
    assert names()[:1] == ["knn"] and names().index("ft") < names().index("robust") > names().index("lin")
    assert {"knn", "lin", "fewshot", "longtail", "dense", "ft", "robust"} <= set(names())
    assert [p.order for p in protocols()] == sorted(p.order for p in protocols())
    for p in protocols():
        assert p.run.__module__ == f"siamim.eval.protocols.{p.name}" and p.summary and p.columns


def _drop_in(tmp_path, monkeypatch, headline_key: str):
    """A ``majority`` protocol module added to the package folder (its headline on ``headline_key``)."""
    (tmp_path / "majority.py").write_text(
        "from siamim.eval.protocols import Headline, Protocol\n"
        "from siamim.sections import Section\n"
        "class S(Section):\n    pass\n"
        "PROTOCOL = Protocol('majority', 12, S, lambda ctx, s, p: {}, {'majority_top1': ('-', 'x')}, 'x',\n"
        f"    Headline({headline_key!r}, 'majority', 'LIN'))\n"
    )
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(tmp_path)])
    registry._registry.cache_clear()


def _drop_out(monkeypatch):
    monkeypatch.undo()
    registry._registry.cache_clear()
    sys.modules.pop("siamim.eval.protocols.majority", None)


def test_a_module_dropped_into_the_package_registers_itself(tmp_path, monkeypatch):
    _drop_in(tmp_path, monkeypatch, "majority_top1")
    try:
        assert names()[:2] == ["knn", "majority"] and parse_protocols("majority,knn") == ["knn", "majority"]
    finally:
        _drop_out(monkeypatch)
    assert "majority" not in names()


def test_a_headline_that_is_not_one_of_the_columns_is_refused(tmp_path, monkeypatch):
    _drop_in(tmp_path, monkeypatch, "majority_top5")
    try:
        with pytest.raises(ValueError, match="headline key 'majority_top5' is not one of its columns"):
            names()
    finally:
        _drop_out(monkeypatch)


def _siamim_imports(module: str) -> set[str]:
    """The siamim modules that ``module``'s source imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(_source(module).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("siamim") and _source(m) is not None}


def _source(module: str) -> Path | None:
    base = Path(__file__).parents[3] / module.replace(".", "/")
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def test_protocols_import_computations_and_no_computation_imports_a_protocol():
    modules = {f"siamim.eval.protocols.{n}" for n in names()}
    todo = []
    for module in sorted(modules):
        imported = _siamim_imports(module)
        assert not imported & (modules - {module}), f"{module} imports another protocol"
        todo += [(m, module) for m in imported - modules - {"siamim.eval.protocols"}]
    seen = set()
    while todo:  # everything the protocols import, transitively
        module, via = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for m in _siamim_imports(module):
            assert not m.startswith("siamim.eval.protocols"), f"{module} (imported by {via}) imports {m}"
            todo.append((m, module))
    assert {"siamim.eval.finetune", "siamim.eval.robustness", "siamim.eval.linear_probe"} <= seen


def test_protocol_names_are_checked_with_the_closest_match():
    assert parse_protocols("robust,knn") == ["knn", "robust"]  # run order, FT before robust
    assert parse_protocols("all") == names()
    with pytest.raises(ValueError, match=r"did you mean 'fewshot'"):
        parse_protocols("knn,fewshoot")
    with pytest.raises(ValueError, match="choose from knn, "):
        parse_protocols("")


def test_every_protocol_has_a_config_section_with_its_defaults():
    c = load_config("tiny", ["eval.lin.steps=7", "eval.ft.blr=1e-3", "eval.knn.k=5"])
    assert (c.eval.lin.steps, c.eval.ft.blr, c.eval.knn.k) == (7, 1e-3, 5)
    defaults = load_config("tiny").eval
    for p in protocols():
        assert getattr(defaults, p.name) == p.settings(), p.name
    keys = flatten(c)
    assert keys["eval.lin.steps"] == 7 and "eval.fewshot.fraction" in keys and "eval.lin_steps" not in keys


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.fewshot.fraction=0.0", "eval.fewshot.fraction=0.0 is invalid: must be > 0"),
        ("eval.lin.steps=0", "eval.lin.steps=0 is invalid: must be >= 1"),
        ("eval.train_limit=3", "eval.train_limit=3 is invalid: must be >= 10"),
        ("eval.knn.train_subset=5", "eval.knn.train_subset=5 is invalid: must be null or at least eval.knn.k=20"),
        ("eval.ft.drop_path=1.0", "eval.ft.drop_path=1.0 is invalid: must be < 1"),
        ("eval.knn.kk=3", "did you mean 'eval.knn.k'"),
        ("eval.lin_steps=3", "unknown config key 'eval.lin_steps'"),
        ("eval.lin=3", "eval.lin is a section"),
    ],
)
def test_eval_settings_are_checked_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config("tiny", [override])


def test_old_flat_eval_keys_of_a_stored_config_are_dropped_with_a_warning():
    from siamim.config import from_dict, to_dict

    data = to_dict(load_config("tiny"))
    data["eval"]["knn_k"] = 5
    with pytest.warns(UserWarning, match="eval.knn_k"):
        assert from_dict(data).eval.knn.k == 20


def test_report_columns_come_from_the_protocols():
    for p in protocols():
        for key, (paper, ours) in p.columns.items():
            assert METRICS[key] == (p.name, paper, ours)
    assert METRICS["lin_top1"][1] == "LIN" and METRICS["robust_ft_mca"][1] == "IN-C 1-mCE"


def test_registry_settings_and_report_import_no_torch():
    code = (
        "import sys; import siamim.eval.protocols as r; r.names(); import siamim.eval.settings; "
        "import siamim.eval.report; import siamim.config; print('torch' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False False", out.stdout + out.stderr


def test_limit_indices_is_class_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    a = limit_indices(labels, 200, seed=0)
    assert np.bincount(labels[a]).tolist() == [20] * 10
    assert np.array_equal(a, limit_indices(labels, 200, seed=0))
    assert not np.array_equal(a, limit_indices(labels, 200, seed=1))
    assert len(limit_indices(labels, None, 0)) == 1000
