"""dialogsum_sft.hub against a loopback fake of the Hub, driven by the real huggingface_hub client."""

import json
import logging
import os
import traceback
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from dialogsum_sft import hub
from dialogsum_sft.errors import HubError
from dialogsum_sft.hub import push_folder, resolve_adapter
from hub_server import OTHER_TOKEN, TOKEN, USER


REPO = f"{USER}/dialogsum-qlora"
WRONG_TOKEN = "hf_wrongTokenThatTheHubRejects000000"
AUTH_MESSAGE = (  # errors.auth_failed_message, as downloading and loading models write it
    f"the Hub refused the token for repository {REPO}: set HF_TOKEN or run `hf auth login` with a valid token that "
    "can read it"
)
PUSH_AUTH_MESSAGE = AUTH_MESSAGE.replace("can read it", "can write to it")
NOT_FOUND_MESSAGE = f"repository {REPO} not found on the Hub (check the id; private repos need `hf auth login`)"

# What an SFT output directory holds: the adapter, its card and tokenizer, plus run state that must stay local.
PUBLISHED = {
    "adapter_config.json": b'{"peft_type": "LORA", "r": 16}',
    "adapter_model.safetensors": os.urandom(64 * 1024),  # LFS through the Hub's default .gitattributes
    "README.md": b"---\nlicense: mit\n---\n# DialogSum QLoRA adapter\n",
    "tokenizer_config.json": b"{}",
    "chat_template/template.jinja": b"{{ messages }}",
}
LOCAL_ONLY = {
    "checkpoint-500/adapter_model.safetensors": b"older weights",
    "checkpoint-500/optimizer.pt": b"optimizer state",
    "runs/Nov24_10-00-00_host/events.out.tfevents.1700000000.host": b"tensorboard",
    "training_args.bin": b"pickled arguments",
    ".ipynb_checkpoints/notes.txt": b"scratch",
}


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(hub, "_RETRY_WAIT_S", 0)


@pytest.fixture
def output_dir(tmp_path) -> Path:
    folder = tmp_path / "output"
    for name, data in {**PUBLISHED, **LOCAL_ONLY}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def assert_token_free(err: BaseException, caplog) -> None:
    text = "".join(traceback.format_exception(err)) + caplog.text
    for token in (TOKEN, OTHER_TOKEN, WRONG_TOKEN):
        assert token not in text


def test_push_is_one_commit_of_publishable_files_and_downloads_back_identical(hub_server, output_dir):
    url = push_folder(output_dir, REPO, token=hub_server.token)

    commits = hub_server.commits(REPO)
    assert len(commits) == 2  # repo creation, then the whole push in one commit
    assert url == f"{hub_server.url}/{REPO}/commit/{commits[-1]}"
    assert set(hub_server.files(REPO)) == {*PUBLISHED, ".gitattributes"}
    assert hub_server.lfs_files(REPO) == {"adapter_model.safetensors"}
    assert hub_server.count("PUT", "/upload/", 200) == 1  # the weights went through the LFS storage, not the commit

    hub_server.tree_page_size = 2  # make snapshot_download follow the tree pagination
    local = resolve_adapter(REPO, token=hub_server.token)
    downloaded = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert downloaded == {**PUBLISHED, ".gitattributes": hub_server.files(REPO)[".gitattributes"]}
    assert hub_server.count("GET", "/tree/") > 1
    weights = huggingface_hub.hf_hub_download(REPO, "adapter_model.safetensors", token=TOKEN)  # HEAD on a branch
    assert Path(weights).read_bytes() == PUBLISHED["adapter_model.safetensors"]

    # Pushing unchanged files creates no empty commit.
    assert push_folder(output_dir, REPO, token=hub_server.token) == url
    assert hub_server.commits(REPO) == commits


def test_custom_ignore_patterns_replace_the_defaults(hub_server, output_dir):
    push_folder(output_dir, REPO, token=hub_server.token, ignore_patterns=["checkpoint-*/*", "*.md"])

    assert "README.md" not in hub_server.files(REPO)
    assert "training_args.bin" in hub_server.files(REPO)


def test_private_repo_needs_its_owners_token(hub_server, output_dir, caplog):
    caplog.set_level(logging.DEBUG)  # not even the client's debug logs may show a token
    push_folder(output_dir, REPO, private=True, token=TOKEN)
    assert HfApi(token=TOKEN).model_info(REPO).private
    assert HfApi(token=TOKEN).whoami()["name"] == USER

    with pytest.raises(HubError) as wrong_token:
        resolve_adapter(REPO, token=WRONG_TOKEN)
    assert str(wrong_token.value) == AUTH_MESSAGE
    with pytest.raises(HubError) as wrong_token_push:
        push_folder(output_dir, REPO, token=WRONG_TOKEN)
    assert str(wrong_token_push.value) == PUSH_AUTH_MESSAGE
    with pytest.raises(HubError) as anonymous:
        resolve_adapter(REPO)
    assert str(anonymous.value) == NOT_FOUND_MESSAGE
    with pytest.raises(HubError) as other_user:
        resolve_adapter(REPO, token=OTHER_TOKEN)
    assert str(other_user.value) == NOT_FOUND_MESSAGE
    with pytest.raises(HfHubHTTPError):
        HfApi(token=WRONG_TOKEN).whoami()

    for err in (wrong_token.value, wrong_token_push.value, anonymous.value, other_user.value):
        assert_token_free(err, caplog)


def test_missing_repo_and_malformed_ids(hub_server, output_dir):
    with pytest.raises(HubError, match=r"^repository testuser/nope not found on the Hub \(check the id; private repos need"):
        resolve_adapter(f"{USER}/nope", token=TOKEN)
    with pytest.raises(HubError, match=r"^invalid repo id 'bad--name/adapter': "):
        resolve_adapter("bad--name/adapter")
    with pytest.raises(HubError, match=r"^invalid repo id 'a/b/c': "):
        push_folder(output_dir, "a/b/c", token=TOKEN)
    with pytest.raises(HubError, match="^adapter directory not found: missing-dir \\(nor is it a Hub repo id"):
        resolve_adapter("missing-dir")


def test_revision_is_downloaded_and_checked_for_an_adapter(hub_server, output_dir):
    push_folder(output_dir, REPO, token=TOKEN)
    creation, push = hub_server.commits(REPO)

    assert (resolve_adapter(REPO, token=TOKEN, revision=push) / "adapter_config.json").is_file()
    with pytest.raises(HubError, match=f"^repository {REPO} at revision {creation} has no adapter_config.json"):
        resolve_adapter(REPO, token=TOKEN, revision=creation)
    with pytest.raises(HubError, match=f"^revision not found in repository {REPO}$"):
        resolve_adapter(REPO, token=TOKEN, revision="0" * 40)


def test_local_adapter_dir_is_returned_as_is(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with pytest.raises(HubError, match=f"^local directory {adapter} has no adapter_config.json"):
        resolve_adapter(adapter)
    (adapter / "adapter_config.json").write_text("{}")
    assert resolve_adapter(str(adapter)) == adapter


def test_unreachable_hub_is_one_clear_line(hub_server, output_dir, caplog, monkeypatch):
    hub_server.stop()
    attempts = []
    create_repo = HfApi.create_repo
    monkeypatch.setattr(HfApi, "create_repo", lambda *args, **kwargs: attempts.append(1) or create_repo(*args, **kwargs))

    with pytest.raises(HubError, match=f"^cannot reach the Hub at {hub_server.url}: ") as push_err:
        push_folder(output_dir, REPO, token=TOKEN)
    assert len(attempts) == 1  # a refused connection is not retried
    # A name that is no local directory and cannot be looked up on the Hub: both are said, the directory first.
    with pytest.raises(HubError, match=f"^adapter directory not found: {REPO}, and the Hub, where it would be a repo "
                                       f"id, is not reachable \\(cannot reach the Hub at {hub_server.url}: ") as download_err:
        resolve_adapter(REPO, token=TOKEN)
    for err in (push_err.value, download_err.value):
        assert "\n" not in str(err)
        assert_token_free(err, caplog)


def test_transient_commit_failure_is_retried_without_reuploading(hub_server, output_dir):
    hub_server.fail_next(1, 500, path_contains="/commit/")

    push_folder(output_dir, REPO, token=TOKEN)

    assert len(hub_server.commits(REPO)) == 2
    assert hub_server.count("POST", "/commit/", 500) == 1
    assert hub_server.count("POST", "/commit/", 200) == 1
    assert hub_server.count("PUT", "/upload/") == 1


def test_failed_push_leaves_repo_untouched_and_rerun_completes_it(hub_server, output_dir, caplog):
    push_folder(output_dir / "chat_template", REPO, token=TOKEN)  # an earlier version of the repo
    before = hub_server.files(REPO)
    hub_server.fail_next(hub._COMMIT_ATTEMPTS, 503, path_contains="/commit/", message="Service Unavailable")

    with pytest.raises(HubError) as failed:
        push_folder(output_dir, REPO, token=TOKEN)

    assert str(failed.value) == f"the Hub answered HTTP 503 for {REPO}: Service Unavailable; try again later"
    assert_token_free(failed.value, caplog)
    assert len(hub_server.commits(REPO)) == 2
    assert hub_server.files(REPO) == before
    assert hub_server.count("PUT", "/upload/") == 1  # the weights reached the storage before the commit failed

    push_folder(output_dir, REPO, token=TOKEN)

    assert len(hub_server.commits(REPO)) == 3
    assert set(hub_server.files(REPO)) == {*PUBLISHED, "template.jinja", ".gitattributes"}
    assert hub_server.count("PUT", "/upload/") == 1  # nothing uploaded twice


def test_lfs_upload_5xx_is_retried_by_huggingface_hub(hub_server, output_dir):
    hub_server.fail_next(1, 502, path_contains="/upload/", method="PUT")

    push_folder(output_dir, REPO, token=TOKEN)

    assert hub_server.count("PUT", "/upload/", 502) == 1
    assert hub_server.count("PUT", "/upload/", 200) == 1
    assert hub_server.files(REPO)["adapter_model.safetensors"] == PUBLISHED["adapter_model.safetensors"]


def test_token_echoed_by_the_server_is_redacted(hub_server, output_dir):
    hub_server.fail_next(hub._COMMIT_ATTEMPTS, 500, path_contains="/commit/", message=f"proxy saw Bearer {TOKEN}")

    with pytest.raises(HubError) as failed:
        push_folder(output_dir, REPO, token=TOKEN)

    assert str(failed.value) == f"the Hub answered HTTP 500 for {REPO}: proxy saw Bearer <token>; try again later"


def test_server_rejects_commit_whose_lfs_object_was_never_uploaded(hub_server):
    huggingface_hub.create_repo(REPO, token=TOKEN)  # the module-level client follows the fake endpoint too
    before = hub_server.commits(REPO)
    lines = [
        {"key": "header", "value": {"summary": "sneaky", "description": ""}},
        {"key": "file", "value": {"path": "notes.txt", "content": "aGk=", "encoding": "base64"}},
        {"key": "lfsFile", "value": {"path": "model.safetensors", "algo": "sha256", "oid": "0" * 64, "size": 3}},
    ]
    response = httpx2.post(
        f"{hub_server.url}/api/models/{REPO}/commit/main",
        content="".join(json.dumps(line) + "\n" for line in lines),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"},
    )

    assert response.status_code == 422
    assert hub_server.commits(REPO) == before
    assert set(hub_server.files(REPO)) == {".gitattributes"}
