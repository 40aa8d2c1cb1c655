"""Helpers shared by the tests (fixtures live in conftest.py)."""

import json
import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.abspath(os.path.join(ROOT, "..", "shared", "data", "dialogsum"))
SMOLLM2_DIR = os.path.join(ROOT, ".cache", "SmolLM2-135M-Instruct")


def write_rows(folder, rows_by_split):
    os.makedirs(folder, exist_ok=True)
    for split, rows in rows_by_split.items():
        with open(os.path.join(folder, f"{split}.jsonl"), "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    return str(folder)


def read_rows(data_dir, split, count):
    with open(os.path.join(data_dir, f"{split}.jsonl"), encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(count)]


def run_script(script, *args, env=None, timeout=600):
    """Run one of scripts/ as users do; returns the CompletedProcess (text mode)."""
    full_env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", script), *map(str, args)],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]
