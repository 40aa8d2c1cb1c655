"""One-line errors for the command-line scripts, and the one place Hub and loading failures get their message.

Every anticipated failure (bad recipe, bad data, unreachable model) is raised as a `UserError` subclass with a
message that names the problem and the fix; `run_cli` turns it into a single `error: ...` line and exit status 2.
`explain_load_error` (models, tokenizers, datasets) and `as_hub_error` (pushes, adapter downloads) read the
same cause chain with `causes`, and no message built here holds the token.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterator
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


class HubError(UserError):
    """A Hub operation (push, adapter download) failed; the message is one line and never contains the token."""


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


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its usage errors as one `error:` line (argparse prints the usage first, then exits itself)."""

    def __init__(self, description: str | None = None, **kwargs):
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def _raise_terminated(signum, frame):
    raise Terminated()


DEBUG_FLAG = "--debug"
DEBUG_ENV = "DIALOGSUM_DEBUG"
# An exception no check anticipated: most likely a bug here or in a library, not the user's input.
BUG_EXIT_STATUS = 1


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a script's `main`: every failure ends as one `error:` line on stderr and a non-zero exit status.

    UserError: its message, exit 2. Ctrl-C / SIGTERM: what was interrupted, exit 130 / 143. Any other exception: its
    type and first line, exit 1, and the way to see the traceback: `--debug` (anywhere on the command line) or
    DIALOGSUM_DEBUG=1, with which exceptions propagate as Python prints them.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        main(argv)
    except UserError as err:
        if debug:
            raise
        _fail(str(err), err.exit_status)
    except KeyboardInterrupt as interrupt:
        if debug:
            raise
        _fail(f"interrupted by {signal_name(interrupt)}", interrupt_exit_status(interrupt))
    except Exception as err:
        if debug:
            raise
        text = (str(err).strip().splitlines() or [""])[0]
        _fail(f"unexpected {type(err).__name__}{': ' + text if text else ''} (a bug, not your input, unless the "
              f"message says otherwise; rerun with {DEBUG_FLAG} for the traceback and report it)", BUG_EXIT_STATUS)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str, status: int) -> None:
    # A progress bar cut short (training, generation) leaves stderr mid-line: close it so the error is a line.
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(tqdm.tqdm._instances) if tqdm else ():
        bar.close()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


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


# The messages shared by loading (explain_load_error) and the Hub client (as_hub_error).
def auth_failed_message(what: str, name: str, access: str = "read") -> str:
    return f"the Hub refused the token for {what} {name}: set HF_TOKEN or run `hf auth login` with a valid token " \
        f"that can {access} it"


def revision_not_found_message(what: str, name: str) -> str:
    return f"revision not found in {what} {name}"


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
    if os.path.isfile(os.path.expanduser(name)):
        return ModelError(f"{what} {name} is a file: give the directory that holds config.json and the weights")
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


def check_output_path(path: str | os.PathLike, option: str, directory: bool = True) -> None:
    """Fail at once, naming `option`, when `path` (a directory, or a file) cannot be written; creates nothing.

    Run before any long work, so that hours of training or generation never end on an unwritable location.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.exists(path):
        if directory != os.path.isdir(path):
            kind = "a file, not a directory" if directory else "a directory, not a file"
            raise UserError(f"{option} {path} is {kind}: pass another {option}")
        if not os.access(path if directory else os.path.dirname(path), os.W_OK):
            raise UserError(f"{option} {path} is not writable: pass another {option}")
        return
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise UserError(f"{option} {path} cannot be created: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK):
        raise UserError(f"{option} {path} cannot be created: {ancestor} is not writable")
    longest = os.pathconf(ancestor, "PC_NAME_MAX")
    if any(len(part.encode()) > longest for part in path[len(ancestor):].split(os.sep)):
        raise UserError(f"{option} {path} cannot be created: a name in it is longer than {longest} bytes")


# What `save_pretrained` writes: a config, weights (one file or shards with an index) and, for a tokenizer, one of these.
WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_dir(path: str, what: str = "model", tokenizer: bool = True) -> None:
    """For a local model directory, fail naming the file it lacks (else transformers' errors blame sentencepiece)."""
    if not os.path.isdir(os.path.expanduser(path)):
        return
    names = os.listdir(os.path.expanduser(path))
    hint = " (run `make model` to rebuild it)" if "SmolLM2" in path else ""
    if "config.json" not in names:
        raise ModelError(f"{what} directory {path} has no config.json: it is not a saved model{hint}")
    if tokenizer and not any(name in names for name in TOKENIZER_FILES):
        raise ModelError(f"{what} directory {path} has no tokenizer ({', '.join(TOKENIZER_FILES)}){hint}")
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in names):
        raise ModelError(f"{what} directory {path} has no weights (*.safetensors or *.bin){hint}")


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
        return error_type(revision_not_found_message(what, name))
    status = next((exc.response.status_code for exc in chain if isinstance(exc, HfHubHTTPError)
                   and exc.response is not None), None)
    if status in (401, 403) or "401 Unauthorized" in text or "403 Forbidden" in text:
        return error_type(auth_failed_message(what, name))
    if isinstance(err, OSError) and os.path.isdir(name):
        return error_type(f"{what} directory {name} is not a usable checkpoint: {str(err).splitlines()[0]}")
    return err


def as_hub_error(
    err: BaseException, repo_id: str, *, endpoint: str | None = None, token: str | None = None, access: str = "write to"
) -> HubError | None:
    """The `HubError` for a failed Hub call on `repo_id`, or None if `err` is not a Hub failure (a bug: re-raise it).

    huggingface_hub wraps some failures (LFS uploads in RuntimeError, unreachable Hub in LocalEntryNotFoundError),
    so the whole cause chain is inspected.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    endpoint = endpoint or constants.ENDPOINT
    chain = list(causes(err))
    message = next(filter(None, (_describe(exc, repo_id, endpoint, access) for exc in chain)), None)
    if message is None and any(isinstance(exc, LocalEntryNotFoundError) for exc in chain):
        message = f"cannot download {repo_id} from {endpoint}: {_first_line(str(err))}"
    if message is None:
        return None
    return HubError(_redact(" ".join(message.split()), token))


def _describe(exc: BaseException, repo_id: str, endpoint: str, access: str) -> str | None:
    import httpx2
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, HFValidationError):
        return f"invalid repo id {repo_id!r}: {exc}"
    if isinstance(exc, RevisionNotFoundError):
        return revision_not_found_message("repository", repo_id)
    if isinstance(exc, RepositoryNotFoundError):
        return not_found_message("repository", repo_id)
    if isinstance(exc, HfHubHTTPError) and exc.response.status_code in (401, 403):
        return auth_failed_message("repository", repo_id, access)
    if isinstance(exc, HfHubHTTPError):
        detail = _first_line(exc.server_message or exc.response.reason_phrase)
        return f"the Hub answered HTTP {exc.response.status_code} for {repo_id}: {detail}; try again later"
    if isinstance(exc, (httpx2.TransportError, ConnectionError)):  # ConnectionError covers HF_HUB_OFFLINE=1
        return f"cannot reach the Hub at {endpoint}: {_first_line(str(exc)) or type(exc).__name__}"
    return None


def _first_line(text: str) -> str:
    return text.partition("\n")[0]


def _redact(text: str, token: str | None) -> str:
    from huggingface_hub.utils import get_token

    # Defence in depth: no message we build holds the token, but a server or proxy may echo it back.
    for secret in {token, get_token()} - {None, ""}:
        text = text.replace(secret, "<token>")
    return text
