"""A loopback fake of the Hugging Face Hub's HTTP API, for testing the real `huggingface_hub` client offline.

It speaks enough of the protocol for `create_repo`, `model_info`/`repo_info`, `whoami`, `list_repo_tree`, the
commit flow (preupload -> LFS batch -> PUT to a signed storage URL -> verify -> NDJSON commit) and
`hf_hub_download`/`snapshot_download`. Repos live in memory and every commit is applied atomically under a lock.

LFS objects are uploaded to and downloaded from a second server on another port that stands in for the CDN/S3:
the client treats it as off-Hub storage (signed URLs, no Authorization header), exactly as in production.

tests/conftest.py imports the `hub_server` fixture; tests take TOKEN, USER and friends from this module.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Mapping
from urllib.parse import parse_qs, unquote, urlsplit

import pytest


TOKEN = "hf_loopbackTestToken0123456789abcdef"
USER = "testuser"
OTHER_TOKEN = "hf_loopbackOtherToken0123456789abcd"
OTHER_USER = "otheruser"

# The Hub stores files of 10 MiB or more, binary files and .gitattributes LFS patterns through LFS.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
_LFS_PATTERNS = (
    "*.bin", "*.ckpt", "*.gz", "*.h5", "*.model", "*.msgpack", "*.npy", "*.onnx",
    "*.pkl", "*.pt", "*.pth", "*.safetensors", "*.tar", "*.zip", "*tfevents*",
)
_GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in _LFS_PATTERNS)
# Same text as the Hub: huggingface_hub tells a bad token apart from a missing repo by this message.
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_OID = re.compile(r"[0-9a-f]{64}")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_hash(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _File:
    data: bytes
    lfs: bool
    sha256: str = field(init=False)
    oid: str = field(init=False)  # git blob id: of the content, or of the LFS pointer for LFS files
    pointer_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n"
        self.pointer_size = len(pointer)
        self.oid = _git_hash(pointer.encode() if self.lfs else self.data)

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "path": path, "oid": self.oid, "size": len(self.data)}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": self.pointer_size}
        return entry


@dataclass
class _Commit:
    oid: str
    title: str
    date: str
    files: dict[str, _File]


@dataclass
class _Repo:
    repo_id: str
    private: bool
    created_at: str
    commits: list[_Commit]
    # Uploaded LFS objects by sha256, committed or not: like the Hub, a failed commit does not lose uploads.
    lfs: dict[str, bytes] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def find(self, revision: str) -> _Commit:
        if revision == "main":
            return self.commits[-1]
        for commit in self.commits:
            if commit.oid == revision:
                return commit
        raise _HttpError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


@dataclass
class _Fault:
    remaining: int
    status: int
    path_contains: str
    method: str | None
    message: str
    code: str | None = None


class _HttpError(Exception):
    def __init__(
        self, status: int, message: str, *, code: str | None = None, headers: dict | None = None,
        extra: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}
        self.body = {"error": message, **(extra or {})}


class HubServer:
    """In-memory Hub on 127.0.0.1. `tokens` maps each valid token to its user; writes go to the user's namespace."""

    def __init__(self, tokens: Mapping[str, str] | None = None) -> None:
        self.tokens = dict(tokens if tokens is not None else {TOKEN: USER, OTHER_TOKEN: OTHER_USER})
        self.tree_page_size = 1000  # entries per /tree page, as on the Hub; lower it to exercise pagination
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every request, both servers
        self._repos: dict[str, _Repo] = {}
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(16)
        self._commit_count = 0
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for handler in (_ApiHandler, _CdnHandler)]
        for server in self._servers:
            server.hub = self
        self.url = f"http://127.0.0.1:{self._servers[0].server_port}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_port}"
        self._threads: list[threading.Thread] = []

    @property
    def token(self) -> str:
        return next(iter(self.tokens))

    @property
    def user(self) -> str:
        return self.tokens[self.token]

    def start(self) -> HubServer:
        for server in self._servers:
            # A short poll keeps stop() fast: shutdown() waits for the serving loop to notice.
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close both ports; safe to call twice (tests stop it to get a refused connection)."""
        for server, thread in zip(self._servers, self._threads):
            server.shutdown()
            server.server_close()
            thread.join()
        self._threads.clear()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def fail_next(
        self,
        n: int,
        status: int = 500,
        *,
        path_contains: str = "",
        method: str | None = None,
        message: str = "Internal Error - We're working hard to fix this as soon as possible!",
        code: str | None = None,
    ) -> None:
        """Answer the next `n` requests whose path contains `path_contains` (and of `method`) with `status`.

        `code` is sent as X-Error-Code, which the client reads to tell apart e.g. a gated repo ("GatedRepo").
        """
        with self._lock:
            self._faults.append(_Fault(n, status, path_contains, method, message, code))

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            return {path: f.data for path, f in self._repos[repo_id].find(revision).files.items()}

    def lfs_files(self, repo_id: str, revision: str = "main") -> set[str]:
        with self._lock:
            return {path for path, f in self._repos[repo_id].find(revision).files.items() if f.lfs}

    def commits(self, repo_id: str) -> list[str]:
        """Commit ids of `main`, oldest first (the first one is the repo creation)."""
        with self._lock:
            return [commit.oid for commit in self._repos[repo_id].commits]

    def count(self, method: str, path_contains: str, status: int | None = None) -> int:
        with self._lock:
            return sum(m == method and path_contains in p and status in (None, s) for m, p, s in self.requests)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining and fault.path_contains in path and fault.method in (None, method):
                    fault.remaining -= 1
                    return fault
        return None

    def _new_commit(self, title: str, files: dict[str, _File]) -> _Commit:
        self._commit_count += 1
        oid = hashlib.sha1(f"{self._commit_count}\n{title}\n{sorted(files)}".encode()).hexdigest()
        return _Commit(oid, title, _now(), files)

    def _sign(self, path: str) -> str:
        return hmac.new(self._secret, path.encode(), hashlib.sha256).hexdigest()

    def _signed_url(self, path: str) -> str:
        return f"{self.cdn_url}{path}?sig={self._sign(path)}"


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_GET

    def log_message(self, format, *args) -> None:  # keep pytest output clean
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def _handle(self) -> None:
        url = urlsplit(self.path)
        self.url_path = url.path
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        # Split before unquoting: revisions and tree paths arrive %2F-encoded as a single segment.
        self.segments = [unquote(segment) for segment in url.path.split("/")[1:]]
        # Always drain the body so the connection stays in sync, whatever the answer.
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.hub._take_fault(self.command, url.path)
        try:
            if fault is not None:
                raise _HttpError(fault.status, fault.message, code=fault.code)
            status, payload, headers = self.route()
        except _HttpError as err:
            status, payload, headers = err.status, err.body, err.headers
        self._send(status, payload, headers)

    def route(self) -> tuple[int, dict | bytes, dict]:
        raise NotImplementedError

    def _send(self, status: int, payload: dict | bytes, headers: dict) -> None:
        if isinstance(payload, bytes):
            body = payload
        else:
            body = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json", **headers}
        with self.hub._lock:
            self.hub.requests.append((self.command, self.url_path, status))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self) -> dict:
        try:
            return json.loads(self.body)
        except ValueError:
            raise _HttpError(400, "Invalid JSON body")


class _ApiHandler(_Handler):
    """The Hub itself: /api/..., /{repo}.git/info/lfs/... and /{repo}/resolve/..."""

    def route(self) -> tuple[int, dict | bytes, dict]:
        s, method = self.segments, self.command
        if s[:1] == ["api"]:
            return self._api(method, s[1:])
        if len(s) == 6 and s[1].endswith(".git") and s[2:5] == ["info", "lfs", "objects"] and method == "POST":
            repo = self._repo(s[0], s[1][: -len(".git")], write=True)
            if s[5] == "batch":
                return self._lfs_batch(repo)
            if s[5] == "verify":
                return self._lfs_verify(repo)
        if len(s) >= 5 and s[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(self._repo(s[0], s[1]), s[3], "/".join(s[4:]))
        raise _HttpError(404, "Sorry, we can't find the page you are looking for.")

    def _api(self, method: str, s: list[str]) -> tuple[int, dict | bytes, dict]:
        if s == ["whoami-v2"] and method == "GET":
            return self._whoami()
        if s == ["agent-harnesses"] and method == "GET":
            return 200, {"standardEnvVars": [], "harnesses": {}}, {}
        if s == ["validate-yaml"] and method == "POST":
            return 200, {"errors": [], "warnings": []}, {}
        if s == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if len(s) >= 3 and s[0] == "models":
            action = s[3:]
            if not action and method == "GET":
                return self._info(self._repo(s[1], s[2]), "main")
            if len(action) == 2 and action[0] == "revision" and method == "GET":
                return self._info(self._repo(s[1], s[2]), action[1])
            if len(action) >= 2 and action[0] == "tree" and method == "GET":
                return self._tree(self._repo(s[1], s[2]), action[1], "/".join(action[2:]))
            if len(action) == 2 and action[0] == "preupload" and method == "POST":
                return self._preupload(self._repo(s[1], s[2], write=True), action[1])
            if len(action) == 2 and action[0] == "commit" and method == "POST":
                return self._commit(self._repo(s[1], s[2], write=True), action[1])
        raise _HttpError(404, "Sorry, we can't find the page you are looking for.")

    def _user(self) -> str | None:
        header = self.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        user = self.hub.tokens.get(token) if scheme.lower() == "bearer" else None
        if user is None:
            raise _HttpError(401, _INVALID_CREDENTIALS)
        return user

    def _repo(self, namespace: str, name: str, *, write: bool = False) -> _Repo:
        user = self._user()
        with self.hub._lock:
            repo = self.hub._repos.get(f"{namespace}/{name}")
        # Like the Hub, a private repo is indistinguishable from a missing one to anybody but its owner.
        if repo is None or (repo.private and user != repo.namespace):
            raise _HttpError(401 if user is None else 404, "Repository not found", code="RepoNotFound")
        if write and user != repo.namespace:
            raise _HttpError(401 if user is None else 403, "You don't have the rights to write to this repository")
        return repo

    def _whoami(self) -> tuple[int, dict, dict]:
        user = self._user()
        if user is None:
            raise _HttpError(401, "Invalid username or password.")
        auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}
        return 200, {"type": "user", "name": user, "orgs": [], "auth": auth}, {}

    def _create_repo(self) -> tuple[int, dict, dict]:
        user = self._user()
        if user is None:
            raise _HttpError(401, "You must be authenticated to create a repository")
        payload = self._json()
        if payload.get("type", "model") != "model":
            raise _HttpError(400, "This test Hub only hosts model repos")
        namespace = payload.get("organization") or user
        if namespace != user:
            raise _HttpError(403, f"You don't have the rights to create a model under the namespace {namespace}")
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.hub.url}/{repo_id}"
        private = payload.get("visibility", "private" if payload.get("private") else "public") == "private"
        with self.hub._lock:
            if repo_id in self.hub._repos:
                # huggingface_hub reads "url" from the 409 body when exist_ok=True.
                raise _HttpError(409, "You already created this model repo", extra={"url": url})
            initial = self.hub._new_commit("initial commit", {".gitattributes": _File(_GITATTRIBUTES.encode(), False)})
            self.hub._repos[repo_id] = _Repo(repo_id, private, _now(), [initial])
        return 200, {"url": url, "name": repo_id, "id": secrets.token_hex(12)}, {}

    def _info(self, repo: _Repo, revision: str) -> tuple[int, dict, dict]:
        with self.hub._lock:
            commit = repo.find(revision)
        with_blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, f in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if with_blobs:
                sibling.update(size=len(f.data), blobId=f.oid)
                if f.lfs:
                    sibling["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": f.pointer_size}
            siblings.append(sibling)
        info = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "author": repo.namespace, "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created_at,
            "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings,
        }
        return 200, info, {}

    def _tree(self, repo: _Repo, revision: str, folder: str) -> tuple[int, list, dict]:
        with self.hub._lock:
            commit = repo.find(revision)
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        prefix = f"{folder}/" if folder else ""
        files = {path: f for path, f in commit.files.items() if path.startswith(prefix)}
        if folder and not files:
            raise _HttpError(404, f"{folder} does not exist on {revision}", code="EntryNotFound")
        entries: dict[str, dict] = {}
        for path, f in sorted(files.items()):
            parts = path[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # the folders on the way to the file
                sub = prefix + "/".join(parts[:i])
                entries.setdefault(sub, {"type": "directory", "path": sub, "oid": _git_hash(sub.encode()), "size": 0})
            if len(parts) <= depth:
                entries[path] = f.tree_entry(path)
        start = int(self.query.get("cursor", 0))
        page = list(entries.values())[start:start + self.hub.tree_page_size]
        headers = {}
        if start + len(page) < len(entries):
            query = f"recursive={recursive}&expand=False&cursor={start + len(page)}"
            headers["Link"] = f'<{self.hub.url}{self.url_path}?{query}>; rel="next"'
        return 200, page, headers

    def _preupload(self, repo: _Repo, revision: str) -> tuple[int, dict, dict]:
        with self.hub._lock:
            commit = repo.find(revision)
        attributes = commit.files.get(".gitattributes")
        patterns = [
            line.split()[0]
            for line in (attributes.data.decode() if attributes else "").splitlines()
            if "filter=lfs" in line.split()[1:]
        ]
        answers = []
        for item in self._json()["files"]:
            path = item["path"]
            lfs = (
                item["size"] >= LFS_SIZE_THRESHOLD
                or b"\0" in base64.b64decode(item["sample"])
                or any(fnmatch.fnmatchcase(path if "/" in p else path.rsplit("/", 1)[-1], p) for p in patterns)
            )
            remote = commit.files.get(path)
            # The client compares this to its own oid to skip unchanged files: sha256 for LFS, git sha1 otherwise.
            oid = None if remote is None else remote.sha256 if remote.lfs else remote.oid
            mode = "lfs" if lfs else "regular"
            answers.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return 200, {"files": answers, "commitOid": commit.oid}, {}

    def _lfs_batch(self, repo: _Repo) -> tuple[int, dict, dict]:
        payload = self._json()
        if payload.get("operation") != "upload":
            raise _HttpError(400, "This test Hub only implements LFS uploads; downloads go through /resolve")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            entry = {"oid": oid, "size": size, "authenticated": True}
            if not _OID.fullmatch(oid):
                entry["error"] = {"code": 422, "message": f"Invalid oid {oid}"}
            elif oid not in repo.lfs:  # no "actions" tells the client the object is already stored
                entry["actions"] = {
                    "upload": {"href": self.hub._signed_url(f"/upload/{repo.repo_id}/{oid}/{size}")},
                    "verify": {"href": f"{self.hub.url}/{repo.repo_id}.git/info/lfs/objects/verify"},
                }
            objects.append(entry)
        headers = {"Content-Type": "application/vnd.git-lfs+json"}
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, headers

    def _lfs_verify(self, repo: _Repo) -> tuple[int, dict, dict]:
        payload = self._json()
        data = repo.lfs.get(payload["oid"])
        if data is None or len(data) != payload["size"]:
            raise _HttpError(404, f"LFS object {payload['oid']} was not uploaded")
        return 200, {}, {}

    def _commit(self, repo: _Repo, revision: str) -> tuple[int, dict, dict]:
        if "create_pr" in self.query:
            raise _HttpError(400, "This test Hub does not implement pull requests")
        if revision != "main":
            raise _HttpError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except ValueError:
            raise _HttpError(400, "Invalid NDJSON body")
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "The first NDJSON line must be the commit header")
        header = lines[0]["value"]
        with self.hub._lock:  # build the new tree aside and publish it in one step: a rejected commit changes nothing
            head = repo.commits[-1]
            parent = header.get("parentCommit")
            if parent and not head.oid.startswith(parent):
                raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            for op in lines[1:]:
                key, value = op.get("key"), op.get("value", {})
                path = value.get("path")
                if key == "file":
                    files[path] = _File(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    if value["oid"] not in repo.lfs:
                        raise _HttpError(422, f"LFS pointer for {path} points to an object that was not uploaded")
                    files[path] = _File(repo.lfs[value["oid"]], lfs=True)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise _HttpError(404, "A file with this name doesn't exist", code="EntryNotFound")
                elif key == "deletedFolder":
                    files = {p: f for p, f in files.items() if not p.startswith(path.rstrip("/") + "/")}
                else:
                    raise _HttpError(400, f"Unknown commit operation {key!r}")
            commit = self.hub._new_commit(header.get("summary", ""), files)
            repo.commits.append(commit)
        url = f"{self.hub.url}/{repo.repo_id}/commit/{commit.oid}"
        return 200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": ""}, {}

    def _resolve(self, repo: _Repo, revision: str, path: str) -> tuple[int, bytes, dict]:
        with self.hub._lock:
            commit = repo.find(revision)
        f = commit.files.get(path)
        headers = {"X-Repo-Commit": commit.oid}
        if f is None:
            raise _HttpError(404, "Entry not found", code="EntryNotFound", headers=headers)
        headers["ETag"] = f'"{f.oid}"'
        if f.lfs:  # LFS content lives on the CDN: redirect there, with the real etag and size in X-Linked-*
            location = self.hub._signed_url(f"/objects/{repo.repo_id}/{f.sha256}")
            headers.update({"Location": location, "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data))})
            return 302, b"", headers
        return 200, f.data, headers


class _CdnHandler(_Handler):
    """The storage behind the Hub: signed PUT /upload/{repo}/{oid}/{size} and GET /objects/{repo}/{oid}."""

    def route(self) -> tuple[int, dict | bytes, dict]:
        if not hmac.compare_digest(self.query.get("sig", ""), self.hub._sign(self.url_path)):
            raise _HttpError(403, "Signature does not match")
        s = self.segments
        with self.hub._lock:
            repo = self.hub._repos.get(f"{s[1]}/{s[2]}")
            if repo is None:
                raise _HttpError(404, "NoSuchBucket")
            if self.command == "PUT" and len(s) == 5 and s[0] == "upload":
                oid, size = s[3], int(s[4])
                if len(self.body) != size or hashlib.sha256(self.body).hexdigest() != oid:
                    raise _HttpError(400, "Uploaded content does not match the announced oid and size")
                repo.lfs[oid] = self.body
                return 200, b"", {"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'}
            if self.command in ("GET", "HEAD") and len(s) == 4 and s[0] == "objects" and s[3] in repo.lfs:
                return 200, repo.lfs[s[3]], {"Content-Type": "application/octet-stream"}
        raise _HttpError(404, "NoSuchKey")


def use_endpoint(monkeypatch: pytest.MonkeyPatch, url: str, home: Path) -> None:
    """Point huggingface_hub at `url` with its cache, token and config under `home`.

    huggingface_hub reads the environment once, at import (constants.py), and the module-level `HfApi` behind
    `huggingface_hub.create_repo` & co. keeps the endpoint it was built with; so the environment is set for
    subprocesses and the cached values are patched for this process.
    """
    from huggingface_hub import constants, hf_api

    values = {
        "HF_ENDPOINT": url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        # The fake Hub has no Xet storage: uploads and downloads must use the LFS and /resolve routes.
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):  # a real token must never reach the fake Hub, nor vice versa
        monkeypatch.delenv(key, raising=False)
    for key in ("HF_HOME", "HF_HUB_CACHE", "HF_ASSETS_CACHE", "HF_XET_CACHE", "HF_TOKEN_PATH"):
        monkeypatch.setattr(constants, key, values[key])
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / "agent_harnesses.json"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_api.api, "endpoint", url)
    forget_transformers_client()


def forget_transformers_client() -> None:
    """Drop the HfApi that transformers keeps from its first Hub call: it would still aim at an earlier endpoint."""
    module = sys.modules.get("transformers.utils.hub")
    if module is not None:
        module._hf_api = None  # rebuilt on the next call, from the endpoint in effect then


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    """A fresh fake Hub for one test, with huggingface_hub pointed at it; yields the `HubServer`."""
    from huggingface_hub.utils import close_session

    with HubServer() as server:
        use_endpoint(monkeypatch, server.url, tmp_path / "hf_home")
        yield server
        close_session()  # drop pooled connections to this server before it goes away
        forget_transformers_client()
