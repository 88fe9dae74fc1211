"""siamim/plugins.py: entries named by their module files, imported on first use."""

import sys

import pytest

from siamim.plugins import PluginFolder


def test_entries_are_the_module_files_and_import_on_first_use(tmp_path, monkeypatch):
    pkg = tmp_path / "demo_plugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "beta.py").write_text("VALUE = 'b'\n")
    (pkg / "alpha.py").write_text("VALUE = 'a'\n")
    (pkg / "_helpers.py").write_text("raise RuntimeError('private modules are never imported by discovery')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = PluginFolder("demo_plugins", [str(pkg)], "demo.type")
    assert folder.names() == ["alpha", "beta"]
    assert "demo_plugins.beta" not in sys.modules  # listing imports nothing
    assert folder.module("beta").VALUE == "b"
    with pytest.raises(ValueError, match=r"unknown demo.type 'alhpa'.*\['alpha', 'beta'\]; did you mean 'alpha'"):
        folder.module("alhpa")
    for name in ("demo_plugins", "demo_plugins.beta"):
        sys.modules.pop(name, None)
