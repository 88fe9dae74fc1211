"""Forked children for the kit's sections and grid workers, and killing them by their process group."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path


class Child:
    """A forked child running ``fn(*args)`` with stdout/stderr in ``log``; ``poll`` / ``kill`` / ``wait`` by pid.

    Fork, not a fresh interpreter: the child inherits torch and siamim already imported (seconds per
    process on a small CPU). The parent must not have initialised CUDA (a child forked after that cannot
    use it); the kit's processes before a fork never do. ``new_group``: the child leads its own process
    group, so :meth:`kill_group` ends it and everything it started (its DataLoader workers, training runs).
    """

    def __init__(self, log: Path, fn, *args, new_group: bool = False):
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            raise RuntimeError("CUDA was initialised before the fork: the child could not use it")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._child(log, fn, args, new_group)
        self.pid, self.returncode = pid, None

    @staticmethod
    def _child(log: Path, fn, args: tuple, new_group: bool) -> None:
        code = 1
        try:
            if new_group:
                os.setsid()
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = fn(*args)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 0)

    def poll(self) -> int | None:
        """The exit code once the child has ended (None while it runs)."""
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the child itself and reap it."""
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])

    def kill_group(self) -> None:
        """SIGKILL the process group the child leads (``new_group``), then the child; silent when gone."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.kill()
