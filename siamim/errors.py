"""The one error type for what a user can fix, and the exit code a job gives it.

Every error whose message names a bad input, a clash or an unreachable service and the fix
(:class:`~siamim.sections.ConfigError`, the platform's launch, preflight, storage, tracking and grid
errors, the data checks) is a :class:`UserError`. A job prints its message on one line, with no
traceback, and exits with its ``exit_code``: 2 (bad input, found before any compute) unless the
class says otherwise (1: the work itself failed, e.g. training or a grid's trials).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user fixes; the message says what and how. A job exits with :attr:`exit_code`."""

    exit_code = 2
