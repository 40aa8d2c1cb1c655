"""ROUGE while training: the summaries and scores of evaluation, logged as eval metrics; best checkpoint by ROUGE."""

import json
import os

import pytest
import torch
from accelerate import PartialState
from test_generation import DIALOGUES, NEVER, tiny_llama

from dialogsum_sft.configs import parse_recipe
from dialogsum_sft.errors import RecipeError
from dialogsum_sft.generation import load_for_generation, summarize
from dialogsum_sft.model import load_tokenizer
from dialogsum_sft.rouge import score
from dialogsum_sft.training_rouge import TrainingRouge
from helpers import ROOT, read_rows, run_script


RECIPE = os.path.join(ROOT, "recipes", "smollm2-135m.yaml")


def test_scores_are_evaluations_on_the_first_unique_dialogues_and_the_mode_is_restored(
    tmp_path, smollm2_dir, data_dir
):
    torch.set_num_threads(1)
    base_dir = tiny_llama(tmp_path / "base", smollm2_dir)
    model = load_for_generation(base_dir, None, dtype=torch.float32, device="cpu", merge=False).train()
    tokenizer = load_tokenizer(base_dir)
    rows = [{"id": f"test_{i // 2}_{i % 2 + 1}", "dialogue": DIALOGUES[i // 2], "summary": f"reference {i}"}
            for i in range(6)]  # 3 dialogues, 2 references each
    rouge = TrainingRouge.from_rows(rows, 2, stop_ids=[NEVER], batch_size=2, max_new_tokens=6)
    assert rouge.dialogues == DIALOGUES[:2]
    assert rouge.references == [["reference 0", "reference 1"], ["reference 2", "reference 3"]]
    metrics = rouge.evaluate(model, tokenizer, PartialState())
    assert model.training  # back in the mode training left it in
    expected = score(summarize(model.eval(), tokenizer, DIALOGUES[:2], batch_size=2, max_new_tokens=6,
                               stop_ids=[NEVER], progress=False), rouge.references)
    assert {k: v for k, v in metrics.items() if k != "rouge_seconds"} == expected["mean_over_references"]
    assert metrics["rouge_seconds"] > 0
    validation = TrainingRouge.from_rows(read_rows(data_dir, "validation", 5), 3, stop_ids=[2], batch_size=1)
    assert validation.references == [[row["summary"]] for row in read_rows(data_dir, "validation", 3)]


@pytest.mark.parametrize("options, message", [
    (["--metric_for_best_model", "eval_rouge2"], "needs rouge_eval_samples > 0"),
    (["--rouge_eval_samples", "5", "--eval_strategy", "no"], "rouge_eval_samples runs at each evaluation"),
    (["--rouge_eval_samples", "-1"], "rouge_eval_samples must be 0 (off) or more"),
    (["--named_speakers_fraction", "2"], "named_speakers_fraction must be between 0 and 1"),
])
def test_recipe_errors(options, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_recipe([RECIPE, "--use_cpu", "true", *options])


def test_training_logs_rouge_at_every_evaluation_and_keeps_the_best_checkpoint_by_it(
    tmp_path, tiny_model_dir, small_data_dir
):
    out = tmp_path / "run"
    result = run_script(
        "sft.py", RECIPE, "--use_cpu", "true", "--report_to", "none", "--model_name_or_path", tiny_model_dir,
        "--base_model_hub_id", "org/tiny", "--dataset_name", small_data_dir, "--output_dir", out,
        "--max_train_samples", 8, "--max_eval_samples", 2, "--max_steps", 4, "--per_device_train_batch_size", 2,
        "--eval_strategy", "steps", "--eval_steps", 2, "--save_strategy", "steps", "--save_steps", 2,
        "--rouge_eval_samples", 3, "--rouge_eval_max_new_tokens", 8, "--metric_for_best_model", "eval_rouge2",
        "--load_best_model_at_end", "true", "--gradient_checkpointing", "true", "--named_speakers_fraction", 0.5,
        "--bf16", "false", "--dtype", "float32", "--bnb_4bit_quant_storage", "float32", "--logging_steps", 1,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [entry for entry in state["log_history"] if "eval_loss" in entry]
    assert [entry["step"] for entry in evals] == [2, 4, 4]  # eval_steps, then sft.py's final evaluation
    for entry in evals:
        assert {"eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum"} <= set(entry)
        assert entry["eval_rouge_seconds"] > 0
    assert state["best_metric"] == max(entry["eval_rouge2"] for entry in evals[:2])
    best = next(entry for entry in evals[:2] if entry["eval_rouge2"] == state["best_metric"])  # the first of ties
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best['step']}")
    # The final evaluation ran on the checkpoint kept by ROUGE, not on the last weights.
    assert evals[2]["eval_loss"] == pytest.approx(best["eval_loss"], abs=1e-4)
    assert evals[2]["eval_loss"] != pytest.approx(evals[1]["eval_loss"], abs=1e-4)
    assert "eval_rouge2" in json.loads((out / "run_results.json").read_text())["metrics"]
