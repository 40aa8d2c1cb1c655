"""scripts/evaluate.py and scripts/summarize.py end to end: tiny random Llama + LoRA adapter, real DialogSum rows."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from dialogsum_sft.adapters import open_adapter
from dialogsum_sft.generation import base_settings, generate_summaries, tuned_settings
from dialogsum_sft.speakers import speaker_tags
from helpers import BASE_HUB_ID, ROOT, error_lines, run_script, tiny_adapter, tiny_llama
from hub_server import TOKEN


FAST = {"OMP_NUM_THREADS": "1"}  # tiny models: extra threads only add contention on a shared CPU
GENERATION = ("--max_new_tokens", 8, "--batch_size", 2)
PUBLISHED = {
    "adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
    "chat_template.jinja", "generation_config.json", "recipe.yaml", "run_results.json", "eval_results.json",
    "rouge.png", "loss.png", "README.md",
}  # fmt: skip


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, smollm2_dir):
    return tiny_llama(tmp_path_factory.mktemp("tiny-base"), smollm2_dir)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, base_dir, data_dir):
    """A training output dir as scripts/sft.py leaves it, run state (checkpoints, TensorBoard) included."""
    recipe = {"model_name_or_path": base_dir, "base_model_hub_id": BASE_HUB_ID, "dataset_name": data_dir,
              "load_in_4bit": True, "lora_r": 4, "hub_model_id": "tiny-dialogsum"}
    folder = tiny_adapter(tmp_path_factory.mktemp("output"), base_dir, recipe)
    log = [{"step": step, "loss": 3.0 - step / 10} for step in range(1, 6)] + [{"step": 5, "eval_loss": 2.7}]
    for name, content in {
        "trainer_state.json": json.dumps({"log_history": log}),
        "run_results.json": json.dumps({"metrics": {"train_loss": 2.7}}),
        "training_args.bin": "pickled arguments",
        "checkpoint-5/adapter_model.safetensors": "older weights",
        "runs/Nov24/events.out.tfevents.1.host": "tensorboard",
    }.items():
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
            handle.write(content)
    return folder


@pytest.fixture(scope="module")
def evaluated(adapter_dir):
    """evaluate.py on the first 3 test dialogues; base model and dataset come from the adapter's recipe."""
    result = run_script("evaluate.py", adapter_dir, "--max_samples", 3, *GENERATION, env=FAST)
    assert result.returncode == 0, result.stderr
    return result, os.path.join(adapter_dir, "eval")


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_evaluate_writes_every_file_with_base_and_tuned_from_separate_models(
    evaluated, adapter_dir, base_dir, data_dir
):
    result, eval_dir = evaluated
    assert f"base model: {base_dir} (the local checkpoint it trained from" in result.stderr
    metrics = json.load(open(os.path.join(eval_dir, "eval_results.json"), encoding="utf-8"))
    assert (metrics["num_dialogues"], metrics["num_pairs"], metrics["split"]) == (3, 9, "test")
    assert metrics["base_model_hub_id"] == BASE_HUB_ID and metrics["base_model"] == base_dir
    assert metrics["dataset"] == data_dir  # the recipe's dataset_name: no --dataset was given
    assert set(metrics["tuned"]) == set(metrics["base"]) == {"mean_over_references", "best_of_references"}
    assert metrics["generation"]["max_new_tokens"] == 8 and metrics["generation"]["do_sample"] is False
    assert set(metrics["timing"]) == {"base", "tuned"} and "commit" in metrics

    rows = read_jsonl(os.path.join(eval_dir, "predictions.jsonl"))
    assert [row["id"] for row in rows] == ["test_0", "test_1", "test_2"]
    assert all(len(row["references"]) == 3 for row in rows)
    # Each model's summaries, recomputed here: the base ones must come from a base no adapter was loaded onto.
    adapter = open_adapter(adapter_dir)
    dialogues = [row["dialogue"] for row in rows]
    torch.set_num_threads(1)
    # The adapter trained on a 4-bit base, so by default it merges into the NF4-rounded weights it trained against.
    tuned = tuned_settings(adapter.recipe, "auto", "float32", "cpu")
    assert tuned.weights == metrics["generation"]["tuned_weights"] == "nf4-merged"
    for name, folder, settings in (("base", None, base_settings("float32", "cpu")), ("tuned", adapter_dir, tuned)):
        model = settings.load(base_dir, folder)
        expected = generate_summaries(model, adapter.tokenizer, dialogues, batch_size=2, max_new_tokens=8,
                                      stop_ids=adapter.stop_ids, progress=False)
        assert [(row[name], row[f"{name}_stopped"]) for row in rows] == [(s.text, s.stopped) for s in expected]
        # Random weights never stop within 8 tokens: every summary is cut, and the stats say so.
        assert metrics["stats"][name]["cut"] == 3 and metrics["stats"][name]["num_summaries"] == 3
    assert all(row["base"] != row["tuned"] for row in rows)
    assert metrics["examples"] == [{key: row[key] for key in ("id", "dialogue", "references", "base", "tuned")}
                                   for row in rows]
    assert metrics["speakers"] == "tags" and metrics["generation"]["decoding"] == "dynamic"

    report = open(os.path.join(eval_dir, "eval_results.md"), encoding="utf-8").read()
    assert "base, mean over references" in report and "fine-tuned, best of references" in report
    assert "| cut at max_new_tokens | 3 (100.00%) | 3 (100.00%) |" in report
    page = open(os.path.join(eval_dir, "report.html"), encoding="utf-8").read()
    assert page.count("<article ") == 3 and page.count('src="data:image/png;base64,') == 2  # rouge.png, loss.png
    for plot in ("rouge.png", "loss.png"):
        with open(os.path.join(eval_dir, plot), "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| ROUGE-1 |" in result.stdout and "| empty |" in result.stdout


def test_named_speakers_evaluates_the_split_with_names_for_tags(tmp_path, adapter_dir):
    result = run_script("evaluate.py", adapter_dir, "--split", "validation", "--max_samples", 2, "--no_base",
                        "--named_speakers", "--output_dir", tmp_path, *GENERATION, env=FAST)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval_results.json").read_text())
    assert metrics["speakers"] == "named" and metrics["base"] is None and "base" not in metrics["stats"]
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert len(rows) == 2 and not any(speaker_tags(row["dialogue"] + " ".join(row["references"])) for row in rows)
    assert "named-speaker variant" in (tmp_path / "eval_results.md").read_text()


def test_base_model_that_does_not_fit_the_adapter_is_a_one_line_error(tmp_path, adapter_dir, smollm2_dir):
    wider = tiny_llama(tmp_path / "wider", smollm2_dir, hidden_size=48)
    result = run_script("evaluate.py", adapter_dir, "--base_model", wider, "--output_dir", tmp_path / "eval", env=FAST)
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and error_lines(result)[0].startswith("error: base model mismatch: ")
    assert "Traceback" not in result.stderr and not (tmp_path / "eval").exists()


def test_adapter_dir_without_adapter_config_is_a_one_line_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapter_model.safetensors").write_bytes(b"")
    for script, args in (("evaluate.py", [tmp_path / "run"]), ("summarize.py", ["--adapter", tmp_path / "run"])):
        result = run_script(script, *args)
        assert result.returncode == 2, result.stderr
        assert error_lines(result) == [
            f"error: local directory {tmp_path / 'run'} has no adapter_config.json: it is not a PEFT adapter "
            "(expected a training output dir)"
        ]


def test_push_only_publishes_adapter_card_and_metrics_and_nothing_else(
    hub_server, evaluated, adapter_dir, base_dir
):
    hub = {"HF_TOKEN": hub_server.token, "HF_HUB_OFFLINE": "0", **FAST}
    result = run_script("evaluate.py", adapter_dir, "--push_only", env=hub)
    assert result.returncode == 0, result.stderr
    repo = f"{hub_server.user}/tiny-dialogsum"  # the recipe's hub_model_id, in the token owner's namespace
    files = hub_server.files(repo)
    assert set(files) == PUBLISHED | {".gitattributes"}
    card = files["README.md"].decode()
    assert f"base_model: {BASE_HUB_ID}" in card and "![rouge](rouge.png)" in card
    assert "| cut at max_new_tokens | 3 (100.00%) | 3 (100.00%) |" in card and "### Examples" in card
    assert card.count("- fine-tuned: ") == 3
    assert not any(TOKEN.encode() in content for content in files.values())
    assert TOKEN not in result.stdout + result.stderr

    # The published repo works as an adapter: summaries from stdin, one line per blank-line-separated dialogue.
    rows = read_jsonl(os.path.join(evaluated[1], "predictions.jsonl"))
    text = "\n\n".join(row["dialogue"] for row in rows[:2]) + "\n"
    command = [sys.executable, os.path.join(ROOT, "scripts", "summarize.py"), "--adapter", repo, "--base_model",
               base_dir, "--max_new_tokens", 8]
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), **hub}
    result = subprocess.run(list(map(str, command)), input=text, capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [" ".join(row["tuned"].split()) for row in rows[:2]]


def test_push_refuses_adapters_without_metrics_or_with_a_local_base_path(tmp_path, adapter_dir):
    copy = shutil.copytree(adapter_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("eval"))
    result = run_script("evaluate.py", copy, "--push_only", "--hub_model_id", "someone/x")
    assert result.returncode == 2 and error_lines(result)[0].startswith(f"error: no eval_results.json in {copy}/eval")

    shutil.copytree(os.path.join(adapter_dir, "eval"), copy / "eval")
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/models/llama"}))
    result = run_script("evaluate.py", copy, "--push_only", "--hub_model_id", "someone/x")
    assert result.returncode == 2 and "names base model '/models/llama', not a Hub id" in error_lines(result)[0]


def test_summarize_jsonl_adds_a_summary_to_every_row(tmp_path, evaluated, adapter_dir):
    rows = read_jsonl(os.path.join(evaluated[1], "predictions.jsonl"))
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"id": row["id"], "dialogue": row["dialogue"]}) + "\n" for row in rows))
    output = tmp_path / "out.jsonl"
    result = run_script("summarize.py", "--adapter", adapter_dir, "--jsonl", source, "--output", output, *GENERATION,
                        env=FAST)
    assert result.returncode == 0, result.stderr
    written = read_jsonl(output)
    assert written == [{"id": row["id"], "dialogue": row["dialogue"], "summary": row["tuned"]} for row in rows]

    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    result = run_script("summarize.py", "--adapter", adapter_dir, "--jsonl", tmp_path / "bad.jsonl")
    assert error_lines(result) == [
        f"error: {tmp_path / 'bad.jsonl'} line 1 has no `dialogue` text (a non-empty string); fix or remove that row"
    ]
