"""Provenance recorded with every result: library versions, git commit, device."""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import PackageNotFoundError, version


LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets", "huggingface_hub")


def git_commit() -> str | None:
    """The checkout's commit; GIT_COMMIT names it where the tree travelled without .git (the GPU machine)."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def run_info() -> dict:
    return {"commit": git_commit(), "device": device_name(), "libraries": library_versions()}
