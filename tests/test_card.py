import re
import sys
import types

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from dialogsum_sft.card import build_model_card, usage_snippet
from dialogsum_sft.data import CHAT_TEMPLATE_KWARGS, INSTRUCTION, SYSTEM_PROMPT, build_prompt


REPO_ID = "someone/smollm2-135m-dialogsum-qlora"
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
TUNED = {"rouge1": 45.12, "rouge2": 19.5, "rougeL": 37.25, "rougeLsum": 40.03}
RECIPE = {
    "model_name_or_path": ".cache/SmolLM2-135M-Instruct",
    "dataset_name": "../shared/data/dialogsum",
    "load_in_4bit": True,
    "lora_target_modules": "all-linear",
    "learning_rate": 0.0002,
    "max_length": 1024,
}


def scores(offset: float) -> dict:
    return {
        "mean_over_references": {key: value + offset for key, value in TUNED.items()},
        "best_of_references": {key: value + offset + 5 for key, value in TUNED.items()},
    }


def make_metrics(with_base: bool = True) -> dict:
    metrics = {
        "split": "test",
        "num_dialogues": 500,
        "num_pairs": 1500,
        "protocol": "rouge_score 0.1.2 RougeScorer, Porter stemming",
        "tuned": scores(0),
        "generation": {"max_new_tokens": 128, "do_sample": False},
    }
    if with_base:
        metrics["base"] = scores(-10)
    return metrics


def make_card(**overrides) -> ModelCard:
    kwargs = dict(repo_id=REPO_ID, base_model_hub_id=BASE, metrics=make_metrics(), recipe=RECIPE,
                  plots=["plots/loss.png", "plots/rouge.png"])
    return build_model_card(**{**kwargs, **overrides})


def python_block(card: ModelCard) -> str:
    return re.search(r"```python\n(.*?)```", card.text, re.S).group(1)


def test_card_round_trips_with_metadata_and_model_index(tmp_path):
    path = tmp_path / "README.md"
    make_card().save(path)
    loaded = ModelCard.load(path)
    data = loaded.data
    assert data.base_model == BASE
    assert data.library_name == "peft"
    assert data.pipeline_tag == "text-generation"
    assert data.datasets == ["knkarthick/dialogsum"]
    assert data.license == "cc-by-nc-sa-4.0"
    assert {"peft", "lora", "qlora", "trl", "sft", "summarization", "dialogsum"} <= set(data.tags)
    assert data.model_name == "smollm2-135m-dialogsum-qlora"
    results = {result.metric_name: result for result in data.eval_results}
    assert {name: result.metric_value for name, result in results.items()} == {
        "ROUGE-1": 45.12, "ROUGE-2": 19.5, "ROUGE-L": 37.25, "ROUGE-Lsum": 40.03
    }
    for result in results.values():
        assert (result.task_type, result.dataset_type, result.dataset_split, result.metric_type) == (
            "summarization", "knkarthick/dialogsum", "test", "rouge"
        )
    assert "CC BY-NC-SA 4.0" in loaded.text


@pytest.mark.parametrize("path", [".cache/SmolLM2-135M-Instruct", "/models/smollm2", "~/smollm2", "a/b/c", ""])
def test_local_paths_are_rejected(path):
    with pytest.raises(ValueError, match="base_model_hub_id must be a Hub id"):
        make_card(base_model_hub_id=path)
    with pytest.raises(ValueError, match="repo_id must be a Hub id"):
        make_card(repo_id=path)


def test_local_paths_from_the_recipe_stay_out_of_the_card():
    text = str(make_card())
    assert ".cache/" not in text and "../shared" not in text
    assert "| learning rate | 0.0002 |" in text
    assert "| LoRA target modules | `all-linear` |" in text
    assert "QLoRA" in text


def test_snippet_carries_the_exact_prompt_and_compiles():
    code = python_block(make_card())
    for value in (SYSTEM_PROMPT, INSTRUCTION, CHAT_TEMPLATE_KWARGS, REPO_ID):
        assert repr(value) in code
    compile(code, "README.md", "exec")


QLORA_RECIPE = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": True, "dtype": "bfloat16"}


@pytest.mark.parametrize("recipe", [QLORA_RECIPE, {"load_in_4bit": False}])
def test_snippet_builds_the_training_prompt_and_decodes_only_new_tokens(monkeypatch, capsys, recipe):
    calls = {}

    class Inputs(dict):
        def to(self, device):
            return self

    class Tokenizer:
        def apply_chat_template(self, messages, **kwargs):
            calls["messages"], calls["template_kwargs"] = messages, kwargs
            return Inputs(input_ids=np.zeros((1, 5), dtype=int))

        def decode(self, ids, skip_special_tokens):
            return " ".join(map(str, ids))

    class Model:
        device = "cpu"

        def generate(self, input_ids, **kwargs):
            calls["generate"] = kwargs
            return np.concatenate([input_ids, [[7, 8, 9]]], axis=1)

    fake_peft = types.ModuleType("peft")

    def from_pretrained(repo, **kwargs):
        calls["load"] = kwargs
        return Model()

    fake_peft.AutoPeftModelForCausalLM = types.SimpleNamespace(from_pretrained=from_pretrained)
    fake_transformers = types.ModuleType("transformers")
    fake_transformers.BitsAndBytesConfig = lambda **kwargs: kwargs
    fake_transformers.AutoTokenizer = types.SimpleNamespace(from_pretrained=lambda repo: Tokenizer())
    monkeypatch.setitem(sys.modules, "peft", fake_peft)
    monkeypatch.setitem(sys.modules, "transformers", fake_transformers)

    namespace = {}
    exec(usage_snippet(REPO_ID, recipe), namespace)
    # A QLoRA adapter runs on the base quantized as in training (the weights it learned against).
    expected_load = {"quantization_config": {
        "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": torch.bfloat16,
    }} if recipe["load_in_4bit"] else {}
    assert calls["load"] == expected_load
    assert calls["messages"] == build_prompt(namespace["dialogue"])
    assert calls["template_kwargs"] == {
        "add_generation_prompt": True, "return_dict": True, "return_tensors": "pt", **CHAT_TEMPLATE_KWARGS
    }
    assert calls["generate"] == {"max_new_tokens": 128, "do_sample": False}
    assert capsys.readouterr().out == "7 8 9\n"


def test_evaluation_table_labels_both_models_and_protocols():
    text = make_card().text
    assert ("| metric | base, mean over references | fine-tuned, mean over references | base, best of references | "
            "fine-tuned, best of references |") in text
    assert "| ROUGE-1 | 35.12 | 45.12 | 40.12 | 50.12 |" in text
    assert "500 dialogues, 1500 dialogue-reference pairs" in text
    assert "`max_new_tokens=128`" in text
    assert "![loss](plots/loss.png)" in text


def test_missing_base_metrics_leave_only_the_fine_tuned_columns():
    card = make_card(metrics=make_metrics(with_base=False))
    assert "| metric | fine-tuned, mean over references | fine-tuned, best of references |" in card.text
    assert "| ROUGE-2 | 19.50 | 24.50 |" in card.text
    assert "The base model was not evaluated" in card.text
    assert len(card.data.eval_results) == 4


def test_base_model_note_is_shown_before_usage():
    note = "trained on weights dequantized from a Q4_1 GGUF of HuggingFaceTB/SmolLM2-135M-Instruct"
    text = make_card(base_model_note=note).text
    assert text.index(note) < text.index("## Usage")


def test_invalid_metrics_and_plot_paths_are_rejected():
    metrics = make_metrics()
    del metrics["tuned"]["mean_over_references"]["rouge2"]
    with pytest.raises(ValueError, match=r"metrics\['tuned'\]\['mean_over_references'\] lacks rouge2"):
        make_card(metrics=metrics)
    with pytest.raises(ValueError, match="relative to the repository root"):
        make_card(plots=["/tmp/loss.png"])
    with pytest.raises(ValueError, match="relative to the repository root"):
        make_card(plots=["../loss.png"])


def test_generation_stats_and_examples_are_shown_with_model_text_made_inert():
    stats = {"num_summaries": 500, "empty": 0, "empty_share": 0.0, "cut": 4, "cut_share": 0.008, "invented": 1,
             "invented_share": 0.002, "mean_words": 21.3, "length_ratio": 0.98}
    examples = [{"id": f"test_{i}", "dialogue": f"#Person1#: Hi {i}.\n#Person2#: Hello.",
                 "references": ["#Person1# greets #Person2#.", "They greet."], "base": "They *talk* <b>loudly</b>",
                 "tuned": f"#Person1# greets #Person2# | {i}"} for i in range(3)]
    text = make_card(metrics={**make_metrics(), "stats": {"base": stats, "tuned": stats}, "examples": examples}).text
    assert "| generation | base | fine-tuned |" in text and "| cut at max_new_tokens | 4 (0.80%) | 4 (0.80%) |" in text
    assert "| length ratio to references (words) | 0.98 | 0.98 |" in text
    assert text.count("```text\n#Person1#: Hi") == 3 and "**test_2**" in text
    assert "- fine-tuned: #Person1# greets #Person2# \\| 1" in text
    assert r"- base: They \*talk\* \<b\>loudly\</b\>" in text and "<b>" not in text
    assert "### Examples" not in make_card().text and "| generation |" not in make_card().text
