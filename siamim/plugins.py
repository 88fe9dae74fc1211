"""Plugin folders: a package whose modules are its entries, named by their files (no torch).

Losses (``siamim/losses/``), masks (``siamim/data/masks/``) and evaluation protocols
(``siamim/eval/protocols/``) are each one such folder: adding one is adding a module there
(and its test). The names come from listing the folder, so the config can check
``loss.type=...`` without importing the module (or torch); a module is imported when it
is first used. ``_``-prefixed modules are private helpers, not entries.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import pkgutil
from collections.abc import Iterable
from types import ModuleType


class PluginFolder:
    """The entries of package ``package`` (its ``__path__`` is ``path``), for the config key ``key``."""

    def __init__(self, package: str, path: Iterable[str], key: str):
        self.package, self.path, self.key = package, list(path), key
        self._modules: dict[str, ModuleType] = {}  # looked up per loss call and per mask drawn: import once

    @functools.cached_property
    def _names(self) -> tuple[str, ...]:
        return tuple(sorted(m.name for m in pkgutil.iter_modules(self.path) if not m.name.startswith("_")))

    def names(self) -> list[str]:
        """The entry names, sorted (one per module file)."""
        return list(self._names)

    def module(self, name: str) -> ModuleType:
        """The module of entry ``name``, imported on first use.

        Raises:
            ValueError: ``name`` is not an entry (the message lists them and the closest one).
        """
        if name in self._modules:
            return self._modules[name]
        if name not in self._names:
            close = difflib.get_close_matches(name, self._names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown {self.key} {name!r}; choose one of {self.names()}{hint}")
        self._modules[name] = importlib.import_module(f"{self.package}.{name}")
        return self._modules[name]
