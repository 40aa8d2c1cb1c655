"""Publishing adapters to the Hugging Face Hub and fetching them back.

A thin layer over `huggingface_hub`: a push is one commit (the repo never shows half an upload), a name is either a
local adapter directory or a Hub repo id, and every Hub failure becomes a one-line `HubError` that names the fix and
never contains the token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, get_token, validate_repo_id

from .adapters import ADAPTER_CONFIG
from .errors import UserError, auth_failed_message, causes, looks_like_path, not_found_message


# Trainer output that is not part of the published adapter. Patterns are fnmatch on paths relative to the folder,
# where `*` also matches `/`, so "runs/*" covers the whole folder.
DEFAULT_IGNORE_PATTERNS_PUSH = (
    "checkpoint-*/*",  # intermediate checkpoints, optimizer state included
    "runs/*",  # TensorBoard event files
    "wandb/*",
    "*.pt",  # optimizer, scheduler and RNG state
    "*.pth",
    "training_args.bin",  # pickled TrainingArguments: unpickling runs code, and it holds local paths
    ".*",  # hidden files and folders: editor, OS and tool state
    "__pycache__/*",
)

# huggingface_hub retries preupload, LFS batch and LFS PUT on 5xx (http_backoff) but sends the final commit once;
# retrying the whole commit is cheap because the Hub keeps the uploaded LFS objects and the client skips them.
_COMMIT_ATTEMPTS = 3
_RETRY_WAIT_S = 2.0
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class HubError(UserError):
    """A Hub operation failed; the message is one line and never contains the token."""


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload QLoRA adapter for DialogSum summarization",
    ignore_patterns: Sequence[str] = DEFAULT_IGNORE_PATTERNS_PUSH,
) -> str:
    """Push the publishable files of `folder` to `repo_id` in a single commit and return the commit URL.

    The repo is created if needed (`private` only applies then). A transient Hub failure is retried; if it persists,
    running the push again completes it without uploading the large files a second time.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"cannot push {folder}: not a directory")
    paths = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    # upload_folder would make an empty commit; checked here so that the user learns why nothing was pushed.
    if not list(filter_repo_objects(paths, ignore_patterns=[*ignore_patterns, *DEFAULT_IGNORE_PATTERNS])):
        raise HubError(f"nothing to push in {folder}: every file matches the ignore patterns")
    api = HfApi(token=token)
    attempt = 1
    with _hub_errors(repo_id, api.endpoint, token, access="write to"):
        while True:
            try:
                api.create_repo(repo_id, private=private, exist_ok=True)
                commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                           ignore_patterns=list(ignore_patterns))
                return commit.commit_url
            except Exception as err:
                if attempt == _COMMIT_ATTEMPTS or not _is_transient(err):
                    raise
            time.sleep(_RETRY_WAIT_S * 2 ** (attempt - 1))
            attempt += 1


def resolve_adapter(name_or_path: str | Path, *, token: str | None = None, revision: str | None = None) -> Path:
    """The local directory of an adapter: `name_or_path` itself if it exists, else a download of that Hub repo."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _check_adapter_dir(path, f"local directory {path}")
    repo_id = str(name_or_path)
    if looks_like_path(repo_id) or "/" not in repo_id:
        raise HubError(f"{repo_id} is neither an existing local directory nor a Hub repo id (namespace/name)")
    with _hub_errors(repo_id, constants.ENDPOINT, token, access="read"):
        validate_repo_id(repo_id)
        folder = snapshot_download(repo_id, revision=revision, token=token)
    where = f"repository {repo_id}" + (f" at revision {revision}" if revision else "")
    return _check_adapter_dir(Path(folder), where)


def as_hub_error(
    err: BaseException, repo_id: str, *, endpoint: str | None = None, token: str | None = None, access: str = "write to"
) -> HubError | None:
    """The `HubError` for a failed Hub call on `repo_id`, or None if `err` is not a Hub failure (a bug: re-raise it).

    huggingface_hub wraps some failures (LFS uploads in RuntimeError, unreachable Hub in LocalEntryNotFoundError),
    so the whole cause chain is inspected.
    """
    endpoint = endpoint or constants.ENDPOINT
    chain = list(causes(err))
    message = next(filter(None, (_describe(exc, repo_id, endpoint, access) for exc in chain)), None)
    if message is None and any(isinstance(exc, LocalEntryNotFoundError) for exc in chain):
        message = f"cannot download {repo_id} from {endpoint}: {_first_line(str(err))}"
    if message is None:
        return None
    return HubError(_redact(" ".join(message.split()), token))


def _describe(exc: BaseException, repo_id: str, endpoint: str, access: str) -> str | None:
    if isinstance(exc, HFValidationError):
        return f"invalid repo id {repo_id!r}: {exc}"
    if isinstance(exc, RevisionNotFoundError):
        return f"revision not found in repository {repo_id}"
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


def _is_transient(err: BaseException) -> bool:
    for exc in causes(err):
        if isinstance(exc, HfHubHTTPError):
            return exc.response.status_code in _TRANSIENT_STATUS
        if isinstance(exc, httpx2.TransportError):
            # A refused connection means a wrong endpoint or no network: retrying only delays the error.
            return not isinstance(exc, httpx2.ConnectError)
    return False


def _redact(text: str, token: str | None) -> str:
    # Defence in depth: no message we build holds the token, but a server or proxy may echo it back.
    for secret in {token, get_token()} - {None, ""}:
        text = text.replace(secret, "<token>")
    return text


@contextmanager
def _hub_errors(repo_id: str, endpoint: str, token: str | None, access: str) -> Iterator[None]:
    try:
        yield
    except Exception as err:
        hub_error = as_hub_error(err, repo_id, endpoint=endpoint, token=token, access=access)
        if hub_error is None:
            raise
        raise hub_error from err


def _check_adapter_dir(path: Path, where: str) -> Path:
    if not path.is_dir():
        raise HubError(f"{where} is not a directory")
    if not (path / ADAPTER_CONFIG).is_file():
        raise HubError(f"{where} has no {ADAPTER_CONFIG}: it is not a PEFT adapter (expected a training output dir)")
    return path
