"""The errors a launch raises for the user; each is a :class:`~siamim.errors.UserError` with its exit code."""

from __future__ import annotations

from siamim.errors import UserError


class LaunchError(UserError, RuntimeError):
    """The job did not finish (training failed); the message says why and how to resume. Exit 1."""

    exit_code = 1


class LaunchInputError(LaunchError):
    """The command asks for something that does not exist or clashes (a run name, a resume target). Exit 2."""

    exit_code = 2
