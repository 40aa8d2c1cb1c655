"""One-line errors for the command-line scripts, and the one place Hub and loading failures get their message.

Every anticipated failure (bad recipe, bad data, unreachable model) is raised as a `UserError` subclass with a
message that names the problem and the fix; `run_cli` turns it into a single `error: ...` line and exit status 2.
`explain_load_error` (models, tokenizers, datasets) and `hub.as_hub_error` (pushes, adapter downloads) read the
same cause chain with `causes`, and no message built here holds the token.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
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


def looks_like_path(name: str) -> bool:
    """True for names that cannot be Hub ids (`name` or `org/name`): relative/absolute paths, deeper folders."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def is_local_path(name_or_path: str) -> bool:
    return os.path.isdir(name_or_path) or looks_like_path(name_or_path)


def causes(err: BaseException | None) -> Iterator[BaseException]:
    """`err` and what it was raised from; transformers' wrapped errors can form a cycle, hence `seen`."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


# The messages shared by loading (explain_load_error) and pushing (hub.as_hub_error).
def auth_failed_message(what: str, name: str, access: str = "read") -> str:
    return f"the Hub refused the token for {what} {name}: set HF_TOKEN or run `hf auth login` with a valid token " \
        f"that can {access} it"


def not_found_message(what: str, name: str) -> str:
    return f"{what} {name} not found on the Hub (check the id; private repos need `hf auth login`)"


def model_source_error(name: str, what: str = "model") -> ModelError | None:
    """The error for a name that is neither an existing local directory nor a valid Hub repo id (else None).

    Needs no network: a missing local directory or a malformed id fails before any data or weights are loaded.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if os.path.isdir(os.path.expanduser(name)):
        return None
    if name.startswith((".", "/", "~")):
        hint = "run `make model` to build the embedded SmolLM2 checkpoint" if "SmolLM2" in name else (
            "check the path, or give a Hub id such as org/name"
        )
        return ModelError(f"{what} directory not found: {name} ({hint})")
    try:
        validate_repo_id(name)
    except HFValidationError as err:
        reason = str(err).splitlines()[0].replace(" Use `repo_type` argument if needed.", "")
        reason = reason.removesuffix(f": '{name}'.").removesuffix(f" '{name}'.")
        return ModelError(
            f"{what} {name} is neither an existing local directory nor a valid Hub repo id ({reason}): give a "
            "model directory or a Hub id such as org/name"
        )
    return None


def check_model_source(name: str, what: str = "model") -> None:
    error = model_source_error(name, what)
    if error is not None:
        raise error


def explain_load_error(err: Exception, name: str, what: str = "model", error_type: type = ModelError) -> Exception:
    """Turn huggingface_hub/transformers/datasets loading failures into one-line user errors (or return err).

    transformers re-raises Hub failures as OSError, sometimes without the original as cause, so both the cause chain
    and the messages are read. `error_type` is the class of the errors the user can fix (DataError for datasets).
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if what != "dataset":
        source_error = model_source_error(name, what)
        if source_error is not None:
            return source_error
    chain = list(causes(err))
    text = "\n".join(str(exc) for exc in chain)

    def raised(kind) -> bool:
        return any(isinstance(exc, kind) for exc in chain)

    # datasets reports an unreachable Hub as DatasetNotFoundError too, so being offline is checked first.
    if raised((LocalEntryNotFoundError, ConnectionError)) or "couldn't connect" in text or "offline mode" in text.lower():
        option = "dataset_name" if what == "dataset" else "model_name_or_path"
        return UnreachableError(
            f"{what} {name} is not reachable from here (offline or Hub unreachable): download it where the Hub "
            f"is reachable and pass its local directory as {option}"
        )
    if raised(GatedRepoError) or "trying to access a gated repo" in text:
        return error_type(
            f"{what} {name} is gated: accept its license on https://huggingface.co/{name}, then log in with "
            "`hf auth login` (or set HF_TOKEN)"
        )
    not_found = raised(RepositoryNotFoundError) or any(type(exc).__name__ == "DatasetNotFoundError" for exc in chain)
    if not_found or "is not a valid model identifier" in text:
        return error_type(not_found_message(what, name))
    if raised(RevisionNotFoundError) or "is not a valid git identifier" in text:
        return error_type(f"{what} {name} has no such revision on the Hub (check its revision)")
    status = next((exc.response.status_code for exc in chain if isinstance(exc, HfHubHTTPError)
                   and exc.response is not None), None)
    if status in (401, 403) or "401 Unauthorized" in text or "403 Forbidden" in text:
        return error_type(auth_failed_message(what, name))
    if isinstance(err, OSError) and os.path.isdir(name):
        return error_type(f"{what} directory {name} is not a usable checkpoint: {str(err).splitlines()[0]}")
    return err
