"""The errors a launch raises for the user (the jobs map them to exit codes)."""

from __future__ import annotations


class LaunchError(RuntimeError):
    """The job cannot start or did not finish; the message says why."""


class LaunchInputError(LaunchError):
    """The command asks for something that does not exist or clashes (a run name, a resume target)."""
