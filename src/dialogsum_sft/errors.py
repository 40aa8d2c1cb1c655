"""One-line errors for the command-line scripts.

Every anticipated failure (bad recipe, bad data, unreachable model) is raised as a `UserError` subclass with a
message that names the problem and the fix; `run_cli` turns it into a single `error: ...` line and exit status 2.
"""

from __future__ import annotations

import signal
import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix; printed as one line, never with a traceback."""

    exit_status = 2


class RecipeError(UserError):
    pass


class DataError(UserError):
    pass


class ModelError(UserError):
    pass


class UnreachableError(UserError):
    """A model or dataset that exists somewhere but cannot be fetched from here (offline, Hub down)."""


class TrainingError(UserError):
    """A training run that cannot be saved as finished (no step made, stopped early)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and `kill` send), raised like Ctrl-C so that the same cleanup and message run."""


class Interrupted(UserError):
    """Ctrl-C or SIGTERM; the message says what was interrupted and how to carry on."""

    def __init__(self, message: str, interrupt: KeyboardInterrupt):
        super().__init__(message)
        self.exit_status = interrupt_exit_status(interrupt)


def signal_name(interrupt: KeyboardInterrupt) -> str:
    return "SIGTERM" if isinstance(interrupt, Terminated) else "SIGINT (Ctrl-C)"


def interrupt_exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal number, as shells report a process killed by it."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def _raise_terminated(signum, frame):
    raise Terminated()


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        main(argv)
    except UserError as err:
        _fail(str(err), err.exit_status)
    except KeyboardInterrupt as interrupt:
        _fail(f"interrupted by {signal_name(interrupt)}", interrupt_exit_status(interrupt))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str, status: int) -> None:
    # A progress bar cut short (training, generation) leaves stderr mid-line: close it so the error is a line.
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(tqdm.tqdm._instances) if tqdm else ():
        bar.close()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)
