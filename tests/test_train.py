"""End to end through scripts/sft.py: the real SmolLM2 in 4-bit, and exact resumption after kill -9."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dialogsum_sft.artifacts import last_complete_checkpoint
from helpers import ROOT, error_lines, run_script


RECIPE = os.path.join(ROOT, "recipes", "smollm2-135m.yaml")
FAST = ["--use_cpu", "true", "--report_to", "none", "--logging_steps", "1", "--max_length", "384"]


def test_qlora_smollm2_trains_and_saves_a_complete_adapter(tmp_path, smollm2_dir, small_data_dir):
    out = tmp_path / "run"
    result = run_script(
        "sft.py", RECIPE, *FAST, "--model_name_or_path", smollm2_dir, "--dataset_name", small_data_dir,
        "--output_dir", out, "--max_train_samples", "8", "--max_eval_samples", "4", "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "no",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    tensors = load_file(out / "adapter_model.safetensors")
    assert len(tensors) == 30 * 7 * 2  # 30 layers x 7 linear projections x (A, B)
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in tensors.items())
    generation = json.loads((out / "generation_config.json").read_text())
    assert 2 in ([generation["eos_token_id"]] if isinstance(generation["eos_token_id"], int) else generation["eos_token_id"])
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["max_steps"] == 2 and recipe["load_in_4bit"] is True
    results = json.loads((out / "train_results.json").read_text())
    assert results["metrics"]["train_samples"] == 8 and results["metrics"]["eval_loss"] > 0
    assert results["data"]["train"]["rows"] == 8 and results["libraries"]["trl"]
    assert (out / "chat_template.jinja").is_file() and not (out / ".incomplete").exists()
    # Rerunning into a finished run is refused instead of silently mixing two runs.
    again = run_script("sft.py", RECIPE, "--use_cpu", "true", "--output_dir", out)
    assert again.returncode == 2 and "already holds a finished run" in error_lines(again)[0]


def sft_command(model_dir, data_dir, out):
    return [
        sys.executable, os.path.join(ROOT, "scripts", "sft.py"), RECIPE, *FAST, "--model_name_or_path", model_dir,
        "--base_model_hub_id", "org/tiny", "--dataset_name", data_dir, "--output_dir", str(out),
        "--max_train_samples", "16", "--max_steps", "24", "--per_device_train_batch_size", "2",
        "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "6", "--bf16", "false",
        "--dtype", "float32", "--bnb_4bit_quant_storage", "float32",
    ]


def test_kill_9_then_rerun_resumes_to_the_same_adapter(tmp_path, tiny_model_dir, small_data_dir):
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "HF_HUB_OFFLINE": "1"}
    reference = tmp_path / "reference"
    subprocess.run(sft_command(tiny_model_dir, small_data_dir, reference), env=env, check=True, capture_output=True)

    out = tmp_path / "interrupted"
    process = subprocess.Popen(sft_command(tiny_model_dir, small_data_dir, out), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while last_complete_checkpoint(str(out)) is None:
        assert process.poll() is None, "training ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "adapter_model.safetensors").exists()  # nothing that looks finished
    # A checkpoint caught mid-write (no trainer_state.json) must never be resumed from.
    partial = out / "checkpoint-21"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"truncated")
    assert last_complete_checkpoint(str(out)) != str(partial)

    rerun = subprocess.run(sft_command(tiny_model_dir, small_data_dir, out), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stderr and "checkpoint-21" not in rerun.stderr.split("resuming from")[1][:200]
    expected = load_file(reference / "adapter_model.safetensors")
    resumed = load_file(out / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("contents", [{}, {"trainer_state.json": "{\"trunc"}, {"trainer_state.json": "{}"}])
def test_incomplete_checkpoints_are_skipped(tmp_path, contents):
    good = tmp_path / "checkpoint-10"
    good.mkdir()
    (good / "trainer_state.json").write_text("{}")
    (good / "adapter_model.safetensors").write_bytes(b"x")
    bad = tmp_path / "checkpoint-20"
    bad.mkdir()
    for name, text in contents.items():
        (bad / name).write_text(text)
    assert last_complete_checkpoint(str(tmp_path)) == str(good)
