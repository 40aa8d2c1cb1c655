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
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id

from .adapters import ADAPTER_CONFIG
from .errors import HubError, as_hub_error, causes, looks_like_path


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
        raise HubError(f"adapter directory not found: {repo_id} (nor is it a Hub repo id, namespace/name)")
    parent = Path(repo_id.split("/")[0]).expanduser()
    if parent.is_dir():  # `outputs/nope` next to an `outputs` folder is a mistyped path, not a Hub id
        raise HubError(f"adapter directory not found: {repo_id} ({parent} has no {path.name}; check the path)")
    try:
        with _hub_errors(repo_id, constants.ENDPOINT, token, access="read"):
            validate_repo_id(repo_id)
            folder = snapshot_download(repo_id, revision=revision, token=token)
    except HubError as err:
        if not any(isinstance(exc, (httpx2.TransportError, ConnectionError, LocalEntryNotFoundError))
                   for exc in causes(err)):
            raise
        raise HubError(f"adapter directory not found: {repo_id}, and the Hub, where it would be a repo id, is not "
                       f"reachable ({err})") from err
    where = f"repository {repo_id}" + (f" at revision {revision}" if revision else "")
    return _check_adapter_dir(Path(folder), where)


def _is_transient(err: BaseException) -> bool:
    for exc in causes(err):
        if isinstance(exc, HfHubHTTPError):
            return exc.response.status_code in _TRANSIENT_STATUS
        if isinstance(exc, httpx2.TransportError):
            # A refused connection means a wrong endpoint or no network: retrying only delays the error.
            return not isinstance(exc, httpx2.ConnectError)
    return False


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
