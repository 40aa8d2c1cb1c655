"""Bad inputs to every entry point: exit status 2, one `error:` line and nothing else on stderr, no traceback, and
nothing in the output location that marks the work complete.

Each case is a command line built in a scratch folder; the same invariants are checked for all of them, so a new
case is one row. Every case fails before any weights load and most before the heavy imports (torch, TRL), so a case
costs about a second; a case that slips through does little work (one step of a tiny model, four new tokens).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dialogsum_sft import artifacts
from helpers import ROOT, error_lines, run_script, tiny_adapter, tiny_llama


RECIPE = os.path.join(ROOT, "recipes", "smollm2-135m.yaml")
# Files whose presence says "this finished": training's marker and adapter, evaluation's results, a summary file.
COMPLETE = (artifacts.FINISHED_MARKER, artifacts.ADAPTER_WEIGHTS, "eval_results.json", "summaries.txt")
DIALOGUE = "#Person1#: Is this seat taken?\n#Person2#: No, go ahead.\n"


@pytest.fixture(scope="module")
def tiny_base_and_adapter(tmp_path_factory, smollm2_dir) -> tuple[str, str]:
    base = tiny_llama(tmp_path_factory.mktemp("bad-inputs-base"), smollm2_dir)
    return base, tiny_adapter(tmp_path_factory.mktemp("bad-inputs-adapter"), base)


@dataclass
class Scratch:
    """What a case builds its command line from: good inputs to copy and spoil, and an output location."""

    tmp: Path
    data: str
    model: str
    base: str
    adapter: str

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def recipe(self, text: str) -> str:
        """A recipe for the tiny model, with `text` appended."""
        head = (f"model_name_or_path: {self.model}\nbase_model_hub_id: org/tiny\nuse_peft: true\nuse_cpu: true\n"
                f"dataset_name: {self.data}\noutput_dir: {self.out}\n")
        return str(self.file("recipe.yaml", head + text))

    def data_with(self, split: str, spoil) -> str:
        """A copy of the small DialogSum folder whose `split`.jsonl bytes are replaced by `spoil(bytes)`."""
        folder = self.tmp / "data"
        shutil.copytree(self.data, folder)
        path = folder / f"{split}.jsonl"
        path.write_bytes(spoil(path.read_bytes()))
        return str(folder)

    def model_with(self, *names: str) -> str:
        """A copy of the tiny model folder holding only `names`."""
        folder = self.tmp / "model"
        folder.mkdir()
        for name in names:
            shutil.copy2(Path(self.model) / name, folder / name)
        return str(folder)

    def adapter_with(self, name: str, spoil) -> str:
        """A copy of the tiny adapter whose file `name` is replaced by `spoil(bytes)` (or removed when it is None)."""
        folder = self.tmp / "adapter"
        shutil.copytree(self.adapter, folder)
        path = folder / name
        result = spoil(path.read_bytes())
        if result is None:
            path.unlink()
        else:
            path.write_bytes(result)
        return str(folder)


def sft(*extra):
    """sft.py on the tiny model; `extra` comes last and overrides. One step at most if a case slips through."""
    def argv(s: Scratch):
        common = ["--use_cpu", "true", "--model_name_or_path", s.model, "--base_model_hub_id", "org/tiny",
                  "--dataset_name", s.data, "--output_dir", s.out, "--report_to", "none", "--max_train_samples", "4",
                  "--per_device_train_batch_size", "2", "--max_steps", "1", "--eval_strategy", "no",
                  "--save_strategy", "no", "--bf16", "false", "--dtype", "float32", "--bnb_4bit_quant_storage",
                  "float32"]
        resolved = [item(s) if callable(item) else item for item in extra]
        recipe = resolved.pop(0) if resolved and not str(resolved[0]).startswith("-") else RECIPE
        return ["sft.py", recipe, *common, *resolved]
    return argv


def evaluate(*extra, adapter=None):
    def argv(s: Scratch):
        resolved = [item(s) if callable(item) else item for item in extra]
        return ["evaluate.py", adapter(s) if adapter else s.adapter, "--base_model", s.base, "--dataset", s.data,
                "--split", "validation", "--max_samples", "1", "--max_new_tokens", "4", "--no_base",
                "--output_dir", s.out, *resolved]
    return argv


def summarize(*extra, adapter=None):
    def argv(s: Scratch):
        resolved = [item(s) if callable(item) else item for item in extra]
        if not any(flag in resolved for flag in ("--input", "--jsonl")):
            resolved = ["--input", s.file("dialogue.txt", DIALOGUE), *resolved]
        if "--output" not in resolved:
            s.out.mkdir(exist_ok=True)
            resolved += ["--output", s.out / "summaries.txt"]
        return ["summarize.py", "--adapter", adapter(s) if adapter else s.adapter, "--base_model", s.base,
                "--max_new_tokens", "4", *resolved]
    return argv


def export(*extra, adapter=None):
    def argv(s: Scratch):
        resolved = [item(s) if callable(item) else item for item in extra]
        return ["export.py", adapter(s) if adapter else s.adapter, "--base_model", s.base, "--output_dir", s.out,
                "--formats", "merged", *resolved]
    return argv


def drop_last_bytes(count):
    return lambda data: data.rstrip(b"\n")[:-count]


def row(**fields):
    import json

    return (json.dumps({"id": "x_1", "dialogue": "#Person1#: Hi.", "summary": "They greet.", **fields}) + "\n").encode()


NOT_UTF8 = b"\xff\xfe not utf-8 \xc3\x28\n"
# A name longer than any filesystem allows: the directory cannot be created, whoever runs the tests (root included).
TOO_LONG = "x" * 300

# (id, command line, what the error line must mention)
CASES = [
    # -- sft.py: recipe values a trainer would reject, caught before any weights load
    ("sft-batch-size-0", sft("--per_device_train_batch_size", "0"), "per_device_train_batch_size"),
    ("sft-lr-zero-yaml", sft(lambda s: s.recipe("learning_rate: 0\n")), "learning_rate"),
    ("sft-eval-batch-size-0", sft("--eval_strategy", "steps", "--eval_steps", "1", "--max_eval_samples", "2",
                                  "--per_device_eval_batch_size", "0"), "per_device_eval_batch_size"),
    ("sft-epochs-negative", sft("--max_steps", "-1", "--num_train_epochs", "-1"), "num_train_epochs"),
    ("sft-epochs-zero", sft("--max_steps", "-1", "--num_train_epochs", "0"), "num_train_epochs"),
    ("sft-lr-zero", sft("--learning_rate", "0"), "learning_rate"),
    ("sft-lr-negative", sft("--learning_rate", "-1e-4"), "learning_rate"),
    ("sft-grad-accumulation-0", sft("--gradient_accumulation_steps", "0"), "gradient_accumulation_steps"),
    ("sft-eval-steps-negative", sft("--eval_strategy", "steps", "--max_eval_samples", "2", "--eval_steps", "-1"),
     "eval_steps"),
    ("sft-save-steps-0", sft("--save_strategy", "steps", "--save_steps", "0"), "save_steps"),
    ("sft-logging-steps-0", sft("--logging_steps", "0"), "logging_steps"),
    ("sft-max-length-0", sft("--max_length", "0"), "max_length"),
    ("sft-max-length-tiny", sft("--max_length", "8"), "max_length"),
    ("sft-lora-r-0", sft("--lora_r", "0"), "lora_r"),
    ("sft-lora-alpha-0", sft("--lora_alpha", "0"), "lora_alpha"),
    ("sft-lora-dropout-1", sft("--lora_dropout", "1"), "lora_dropout"),
    ("sft-warmup-negative", sft("--warmup_steps", "-1"), "warmup_steps"),
    ("sft-bool-garbage", sft("--bf16", "maybe"), "bf16"),
    ("sft-misspelt-key", sft("--lerning_rate", "1e-3"), "lerning_rate"),
    ("sft-misspelt-key-yaml", sft(lambda s: s.recipe("lerning_rate: 1.0e-3\n")), "lerning_rate"),
    ("sft-resume-missing", sft("--resume_from_checkpoint", lambda s: s.tmp / "nope"), "resume_from_checkpoint"),
    # -- sft.py: recipe files
    ("sft-env-list", sft(lambda s: s.recipe("env: [A, B]\n")), "env"),
    ("sft-recipe-not-utf8", sft(lambda s: str(s.file("recipe.yaml", b"learning_rate: 1\n" + NOT_UTF8))), "UTF-8"),
    ("sft-recipe-not-yaml", sft(lambda s: s.recipe("learning_rate: [1\n")), "YAML"),
    ("sft-recipe-missing", sft(lambda s: str(s.tmp / "nope.yaml")), "nope.yaml"),
    # -- sft.py: model directories
    ("sft-model-empty-dir", sft("--model_name_or_path", lambda s: s.model_with()), "config.json"),
    ("sft-model-config-only", sft("--model_name_or_path", lambda s: s.model_with("config.json")), "tokenizer"),
    ("sft-model-no-weights", sft("--model_name_or_path", lambda s: s.model_with(
        "config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")), "weights"),
    ("sft-model-is-a-file", sft("--model_name_or_path", lambda s: s.file("model.bin", b"x")), "model.bin"),
    # -- sft.py: output locations, checked before the long work
    ("sft-output-is-a-file", sft("--output_dir", lambda s: s.file("out", b"x")), "output_dir"),
    ("sft-output-under-a-file", sft("--output_dir", lambda s: s.file("file", b"x") / "out"), "output_dir"),
    ("sft-output-name-too-long", sft("--output_dir", lambda s: s.tmp / TOO_LONG), "output_dir"),
    # -- sft.py: data files, decoded with file, line and what is wrong
    ("sft-data-truncated-last-line", sft("--dataset_name", lambda s: s.data_with("train", drop_last_bytes(20))),
     "train.jsonl line"),
    ("sft-data-not-utf8", sft("--dataset_name", lambda s: s.data_with("train", lambda d: d + NOT_UTF8)),
     "train.jsonl line"),
    ("sft-data-row-not-an-object", sft("--dataset_name", lambda s: s.data_with("train", lambda d: d + b"[1, 2]\n")),
     "train.jsonl line"),
    ("sft-data-row-without-summary", sft("--dataset_name", lambda s: s.data_with(
        "train", lambda d: d + row(summary=None))), "summary"),
    ("sft-data-empty-file", sft("--dataset_name", lambda s: s.data_with("train", lambda d: b"")), "train"),
    ("sft-data-dir-missing", sft("--dataset_name", lambda s: s.tmp / "nope"), "nope"),
    ("sft-data-split-missing", sft("--eval_strategy", "steps", "--eval_steps", "1", "--dataset_test_split", "nope"),
     "nope"),
    # -- evaluate.py
    ("evaluate-adapter-mistyped", evaluate(adapter=lambda s: "outputs/nope"), "outputs/nope"),
    ("evaluate-adapter-no-config", evaluate(adapter=lambda s: s.adapter_with("adapter_config.json", lambda d: None)),
     "adapter_config.json"),
    ("evaluate-adapter-config-not-json", evaluate(adapter=lambda s: s.adapter_with(
        "adapter_config.json", lambda d: d[:-5])), "adapter_config.json"),
    ("evaluate-adapter-config-a-list", evaluate(adapter=lambda s: s.adapter_with(
        "adapter_config.json", lambda d: b"[1]")), "adapter_config.json"),
    ("evaluate-adapter-truncated", evaluate(adapter=lambda s: s.adapter_with(
        "adapter_model.safetensors", lambda d: d[:len(d) // 2])), "adapter_model.safetensors"),
    ("evaluate-adapter-weights-garbage", evaluate(adapter=lambda s: s.adapter_with(
        "adapter_model.safetensors", lambda d: b"not safetensors")), "adapter_model.safetensors"),
    ("evaluate-adapter-recipe-not-yaml", evaluate(adapter=lambda s: s.adapter_with(
        "recipe.yaml", lambda d: b"a: [1\n")), "recipe.yaml"),
    ("evaluate-base-empty-dir", evaluate("--base_model", lambda s: s.model_with()), "config.json"),
    ("evaluate-base-config-only", evaluate("--base_model", lambda s: s.model_with("config.json")), "weights"),
    ("evaluate-output-is-a-file", evaluate("--output_dir", lambda s: s.file("out", b"x")), "output_dir"),
    ("evaluate-output-under-a-file", evaluate("--output_dir", lambda s: s.file("file", b"x") / "out"), "output_dir"),
    ("evaluate-data-truncated-last-line", evaluate("--dataset", lambda s: s.data_with(
        "validation", drop_last_bytes(20))), "validation.jsonl line"),
    ("evaluate-bad-split", evaluate("--split", "dev"), "split"),
    ("evaluate-batch-size-not-int", evaluate("--batch_size", "many"), "batch_size"),
    ("evaluate-max-samples-0", evaluate("--max_samples", "0"), "max_samples"),
    # -- summarize.py
    ("summarize-adapter-mistyped", summarize(adapter=lambda s: "outputs/nope"), "outputs/nope"),
    ("summarize-adapter-truncated", summarize(adapter=lambda s: s.adapter_with(
        "adapter_model.safetensors", lambda d: d[:len(d) // 2])), "adapter_model.safetensors"),
    ("summarize-input-not-utf8", summarize("--input", lambda s: s.file("in.txt", NOT_UTF8)), "in.txt"),
    ("summarize-input-missing", summarize("--input", lambda s: s.tmp / "nope.txt"), "nope.txt"),
    ("summarize-jsonl-truncated-last-line", summarize("--jsonl", lambda s: s.file(
        "in.jsonl", row() + row()[:-12])), "in.jsonl line 2"),
    ("summarize-jsonl-not-utf8", summarize("--jsonl", lambda s: s.file("in.jsonl", row() + NOT_UTF8)),
     "in.jsonl line 2"),
    ("summarize-jsonl-row-not-an-object", summarize("--jsonl", lambda s: s.file("in.jsonl", b'"text"\n')),
     "in.jsonl line 1"),
    ("summarize-output-under-a-file", summarize("--output", lambda s: s.file("file", b"x") / "summaries.txt"),
     "summaries.txt"),
    ("summarize-output-is-a-dir", summarize("--output", lambda s: s.file("out/x", b"x").parent), "a directory"),
    # -- export.py
    ("export-adapter-mistyped", export(adapter=lambda s: "outputs/nope"), "outputs/nope"),
    ("export-adapter-truncated", export(adapter=lambda s: s.adapter_with(
        "adapter_model.safetensors", lambda d: d[:len(d) // 2])), "adapter_model.safetensors"),
    ("export-output-is-a-file", export("--output_dir", lambda s: s.file("out", b"x")), "output_dir"),
    ("export-unknown-format", export("--formats", "onnx"), "onnx"),
    ("export-no-output-dir", lambda s: ["export.py", s.adapter], "--output_dir"),
    ("summarize-no-adapter", lambda s: ["summarize.py", "--input", s.file("in.txt", DIALOGUE)], "--adapter"),
]


def finished_files(location: Path) -> list[str]:
    if not location.is_dir():
        return [str(location)] if location.name in COMPLETE else []
    return sorted(str(path) for path in location.iterdir() if path.name in COMPLETE)  # checkpoints hold adapters


@pytest.mark.parametrize("argv, mention", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_error_line_and_leaves_nothing_finished(
    argv, mention, tmp_path, small_data_dir, tiny_model_dir, tiny_base_and_adapter
):
    base, adapter = tiny_base_and_adapter
    scratch = Scratch(tmp=tmp_path, data=small_data_dir, model=tiny_model_dir, base=base, adapter=adapter)
    script, *args = argv(scratch)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}

    result = run_script(script, *args, env={"OMP_NUM_THREADS": "1"})

    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert mention in lines[0]
    assert finished_files(tmp_path / "out") == [] and finished_files(tmp_path / "file") == []
    # Inputs are never written to (a spoiled file given as output location stays as it was).
    assert {path: path.read_bytes() for path in before} == before


@pytest.mark.slow
def test_second_run_into_a_busy_output_dir_is_refused_and_sigterm_says_how_to_resume(
    tmp_path, small_data_dir, tiny_model_dir
):
    scratch = Scratch(tmp=tmp_path, data=small_data_dir, model=tiny_model_dir, base="", adapter="")
    script, *args = sft("--max_steps", "400", "--save_strategy", "steps", "--save_steps", "2")(scratch)
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "first.log"
    with open(log, "w") as handle:  # a file, not a pipe: progress bars could fill a pipe and stall training
        first = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", script), *map(str, args)],
                                 cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=handle)
    try:
        deadline = time.time() + 300
        while artifacts.last_complete_checkpoint(str(scratch.out)) is None:
            assert first.poll() is None and time.time() < deadline, "training ended before it could be interrupted"
            time.sleep(0.05)

        second = run_script(script, *args)
        assert second.returncode == 2 and len(second.stderr.splitlines()) == 1, second.stderr[-3000:]
        assert error_lines(second)[0].startswith(f"error: output_dir {scratch.out} is in use by another training "
                                                 f"run (pid {first.pid} on ")
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM
    stderr = log.read_text()
    last = error_lines(subprocess.CompletedProcess([], 0, "", stderr))
    assert len(last) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert last[0].startswith("error: training interrupted by SIGTERM at step ")
    assert f"rerun the same command to resume from {scratch.out}/checkpoint-" in last[0]
    assert finished_files(scratch.out) == [] and artifacts.last_complete_checkpoint(str(scratch.out))
