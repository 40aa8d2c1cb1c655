"""One-line errors for the command-line scripts.

Every anticipated failure (bad recipe, bad data, unreachable model) is raised as a `UserError` subclass with a
message that names the problem and the fix; `run_cli` turns it into a single `error: ...` line and exit status 2.
"""

from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix; printed as one line, never with a traceback."""


class RecipeError(UserError):
    pass


class DataError(UserError):
    pass


class ModelError(UserError):
    pass


class UnreachableError(UserError):
    """A model or dataset that exists somewhere but cannot be fetched from here (offline, Hub down)."""


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
