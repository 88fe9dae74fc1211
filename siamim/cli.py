"""What the jobs' command lines share (torch-free: a bad flag fails before anything heavy is imported)."""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2  # every job: a bad flag, config key or value, found before any compute
EXIT_INTERRUPTED = 130  # Ctrl-C


def job_parser(script: str, doc: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``jobs/<script>``: its docstring's first paragraph as the description, ``epilog`` verbatim."""
    return argparse.ArgumentParser(
        prog=f"jobs/{script}",
        description=doc.split("\n\n")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
    )


def report_error(err: BaseException, code: int = EXIT_BAD_INPUT) -> int:
    """Print ``error: <err>`` on stderr (one line, no traceback) and return the exit ``code``."""
    print(f"error: {err}", file=sys.stderr, flush=True)
    return code
