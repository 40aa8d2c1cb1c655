"""End to end through scripts/sft.py: the real SmolLM2 in 4-bit, exact resumption after kill -9, bad models, secrets."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi, constants
from safetensors.torch import load_file

from dialogsum_sft.artifacts import last_complete_checkpoint
from helpers import CPU_RECIPE, ROOT, error_lines, run_script, sft_in_process
from hub_server import TOKEN, USER


RECIPE = CPU_RECIPE
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
    results = json.loads((out / "run_results.json").read_text())
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


def test_padding_free_run_on_sdpa_varlen_trains_and_keeps_the_recipe_as_written(tmp_path, capsys, tiny_model_dir,
                                                                                small_data_dir):
    out = tmp_path / "run"
    status, errors = sft_in_process(
        capsys, "--model_name_or_path", tiny_model_dir, "--base_model_hub_id", "org/tiny", "--dataset_name",
        small_data_dir, "--output_dir", out, "--max_train_samples", "8", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--padding_free", "true", "--attn_implementation", "sdpa_varlen",
        "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--bf16", "false",
        "--dtype", "float32", "--bnb_4bit_quant_storage", "float32",
    )
    assert (status, errors) == (None, [])
    assert (out / "adapter_model.safetensors").is_file()
    # max_length filtered the data; TRL, which refuses it without packing, got none, but the recipe copy keeps it
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["padding_free"] is True and recipe["max_length"] == 1024
    assert recipe["attn_implementation"] == "sdpa_varlen"


def test_missing_local_model_is_one_line_and_leaves_no_output(tmp_path, small_data_dir):
    out = tmp_path / "out"
    result = run_script("sft.py", RECIPE, "--use_cpu", "true", "--model_name_or_path", "./no/such/model",
                        "--dataset_name", small_data_dir, "--output_dir", out)
    assert result.returncode == 2
    assert error_lines(result) == [
        "error: model directory not found: ./no/such/model (check the path, or give a Hub id such as org/name)"
    ]
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("model, reason", [
    ("a/b/c", "Repo id must be in the form 'repo_name' or 'namespace/repo_name'"),
    ("bad--name/x", "Cannot have -- or .. in repo_id"),
    ("org/two words", "Repo id must use alphanumeric chars, '-', '_' or '.'"),
])
def test_malformed_model_id_is_one_line_before_any_loading(tmp_path, capsys, model, reason):
    out = tmp_path / "out"
    # No dataset given: the recipe's is never read, the id is refused first.
    status, errors = sft_in_process(capsys, "--model_name_or_path", model, "--output_dir", out)
    assert status == 2 and len(errors) == 1
    assert errors[0].startswith(f"error: model {model} is neither an existing local directory nor a valid Hub repo "
                                f"id ({reason}")
    assert errors[0].endswith("): give a model directory or a Hub id such as org/name")
    assert not out.exists()


PRIVATE_MODEL = f"{USER}/tiny-private"
WRONG_TOKEN = "hf_wrongTokenThatTheHubRejects000000"
HUB_MODEL_ERRORS = {
    "missing": (f"{USER}/nope", None, f"error: model {USER}/nope not found on the Hub (check the id; private repos "
                                      "need `hf auth login`)"),
    "private, no token": (PRIVATE_MODEL, None, f"error: model {PRIVATE_MODEL} not found on the Hub (check the id; "
                                               "private repos need `hf auth login`)"),
    "wrong token": (PRIVATE_MODEL, WRONG_TOKEN, f"error: the Hub refused the token for model {PRIVATE_MODEL}: set "
                                                "HF_TOKEN or run `hf auth login` with a valid token that can read it"),
    "gated": (f"{USER}/gated", TOKEN, f"error: model {USER}/gated is gated: accept its license on "
                                      f"https://huggingface.co/{USER}/gated, then log in with `hf auth login` (or "
                                      "set HF_TOKEN)"),
    "offline": (PRIVATE_MODEL, TOKEN, f"error: model {PRIVATE_MODEL} is not reachable from here (offline or Hub "
                                      "unreachable): download it where the Hub is reachable and pass its local "
                                      "directory as model_name_or_path"),
}


@pytest.mark.parametrize("case", HUB_MODEL_ERRORS)
def test_hub_model_errors_are_one_line(case, hub_server, tiny_model_dir, small_data_dir, tmp_path, monkeypatch,
                                       capsys):
    HfApi(token=TOKEN).create_repo(PRIVATE_MODEL, private=True)
    HfApi(token=TOKEN).upload_folder(folder_path=tiny_model_dir, repo_id=PRIVATE_MODEL,
                                     allow_patterns=["*.json", "*.jinja"])  # the tokenizer fails first
    model, token, message = HUB_MODEL_ERRORS[case]
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    if case == "gated":  # what the Hub answers before the license is accepted
        hub_server.fail_next(1000, 403, path_contains=f"/{model}/", code="GatedRepo",
                             message=f"Access to model {model} is restricted and you are not in the authorized list.")
    if case == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    common = ["--dataset_name", small_data_dir, "--output_dir", out, "--max_train_samples", 2]

    status, errors = sft_in_process(capsys, "--model_name_or_path", model, *common)

    assert (status, errors) == (2, [message])
    assert not out.exists()
    if case == "wrong token":
        # The same repo with the right token given on the command line (a dry run loads only the tokenizer).
        assert sft_in_process(capsys, "--model_name_or_path", model, *common, "--hub_token", TOKEN,
                              "--dry_run") == (None, [])


@pytest.mark.parametrize("argv, trusted", [([], False), (["--trust_remote_code", "true"], True)])
def test_remote_code_is_trusted_only_when_the_recipe_says_so(argv, trusted, tiny_model_dir, small_data_dir, tmp_path,
                                                             monkeypatch, capsys):
    """Every loader sft.py reaches (tokenizer, config, weights) gets trust_remote_code from the recipe."""
    from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

    class WeightsReached(Exception):
        pass

    calls = []

    def spy(owner, name, stop=False):
        original = getattr(owner, name)

        def record(*args, **kwargs):
            calls.append((owner.__name__, kwargs.get("trust_remote_code", False)))
            if stop:
                raise WeightsReached  # enough: the base model's from_pretrained got its arguments
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, record)

    spy(AutoTokenizer, "from_pretrained")
    spy(AutoConfig, "from_pretrained")
    spy(PreTrainedModel, "from_pretrained", stop=True)
    monkeypatch.setenv("DIALOGSUM_DEBUG", "1")  # run_cli lets exceptions through: the sentinel reaches the test

    with pytest.raises(WeightsReached):
        sft_in_process(capsys, *argv, "--model_name_or_path", tiny_model_dir, "--base_model_hub_id", "org/tiny",
                       "--dataset_name", small_data_dir, "--output_dir", tmp_path / "out", "--max_train_samples", 2,
                       "--eval_strategy", "no")

    assert {owner for owner, _ in calls} == {"AutoTokenizer", "AutoConfig", "PreTrainedModel"}
    assert calls[-1][0] == "PreTrainedModel"
    assert {value for _, value in calls} == {trusted}


def files_holding(folder, secret: str) -> list[str]:
    """Files under `folder` whose bytes contain `secret` (read raw: pickles, TensorBoard events, weights)."""
    return sorted(str(path.relative_to(folder)) for path in Path(folder).rglob("*")
                  if path.is_file() and secret.encode() in path.read_bytes())


def test_hub_token_never_reaches_outputs_logs_or_the_hub(tmp_path, tiny_model_dir, small_data_dir, hub_server):
    out = tmp_path / "run"
    token = hub_server.token
    train = run_script(
        "sft.py", RECIPE, "--use_cpu", "true", "--report_to", "tensorboard", "--logging_steps", "1", "--max_length",
        "384", "--model_name_or_path", tiny_model_dir, "--base_model_hub_id", "org/tiny", "--dataset_name", small_data_dir, "--output_dir", out,
        "--max_train_samples", "4", "--max_steps", "2", "--per_device_train_batch_size", "2", "--eval_strategy", "no",
        "--save_strategy", "steps", "--save_steps", "1", "--bf16", "false", "--dtype", "float32",
        "--bnb_4bit_quant_storage", "float32", "--hub_token", token, env={"HF_TOKEN": token},
    )
    assert train.returncode == 0, train.stderr[-3000:]
    evaluate = run_script("evaluate.py", out, "--max_samples", 2, "--max_new_tokens", 8, "--batch_size", 2,
                          "--push_to_hub", "--hub_model_id", "tiny-dialogsum",
                          env={"HF_TOKEN": token, "HF_HUB_OFFLINE": "0", "OMP_NUM_THREADS": "1"})
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]

    written = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    expected = {"recipe.yaml", "run_results.json", "trainer_state.json", "training_args.bin", "README.md",
                "adapter_model.safetensors", "checkpoint-1/training_args.bin", "checkpoint-2/optimizer.pt",
                "eval/eval_results.json", "eval/predictions.jsonl", "eval/hub/README.md", "eval/hub/recipe.yaml"}
    assert expected <= written
    assert any(name.startswith("runs/") and "tfevents" in name for name in written)
    pushed = hub_server.files(f"{USER}/tiny-dialogsum")
    assert "README.md" in pushed and "adapter_model.safetensors" in pushed
    assert files_holding(out, token) == []
    assert [name for name, data in pushed.items() if token.encode() in data] == []
    for result in (train, evaluate):
        assert token not in result.stdout + result.stderr
