"""Helpers every test folder shares (fixtures live in conftest.py)."""

from __future__ import annotations

from siamim.orchestration.driver.cluster import free_port  # noqa: F401 (tests import it from here)
