import os

import pytest

from dialogsum_sft.data import (
    CHAT_TEMPLATE_KWARGS,
    INSTRUCTION,
    SYSTEM_PROMPT,
    build_prompt,
    fit_to_max_length,
    load_dialogsum,
    render_prompt,
    to_prompt_completion,
    unique_dialogues,
)
from dialogsum_sft.errors import DataError, UnreachableError
from helpers import read_rows, write_rows


def test_prompt_is_system_plus_instruction_and_dialogue():
    messages = build_prompt("  #Person1#: Hi.\n#Person2#: Hello.  ")
    assert messages == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{INSTRUCTION}\n\n#Person1#: Hi.\n#Person2#: Hello."},
    ]


def test_row_becomes_conversational_prompt_completion():
    example = to_prompt_completion({"id": "x", "dialogue": "#Person1#: Hi.", "summary": " #Person1# greets. "})
    assert example["prompt"] == build_prompt("#Person1#: Hi.")
    assert example["completion"] == [{"role": "assistant", "content": "#Person1# greets."}]
    assert example["chat_template_kwargs"] == CHAT_TEMPLATE_KWARGS


def test_real_splits_load_with_their_sizes(data_dir):
    dataset = load_dialogsum(data_dir)
    assert {split: len(rows) for split, rows in dataset.items()} == {"train": 12460, "validation": 500, "test": 1500}


def test_test_split_groups_into_500_dialogues_with_3_references(data_dir):
    groups = unique_dialogues(load_dialogsum(data_dir, ("test",))["test"])
    assert len(groups) == 500
    assert all(len(group["references"]) == 3 for group in groups)
    assert groups[0]["id"] == "test_0" and groups[-1]["id"] == "test_499"


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"id": "a", "text": "x", "summary": "y"}], "train.jsonl line 1 has no `dialogue`$"),
        ([{"id": "a", "dialogue": "x", "summary": "  \n"}], "train.jsonl line 1 has no `summary` text \\(a non-empty"),
        ([{"id": "a", "dialogue": "", "summary": "y"}], "train.jsonl line 1 has no `dialogue` text"),
    ],
)
def test_bad_rows_fail_with_the_row_named(tmp_path, rows, message):
    folder = write_rows(tmp_path, {"train": rows})
    with pytest.raises(DataError, match=message):
        load_dialogsum(folder, ("train",))


def test_empty_split_and_missing_files(tmp_path):
    folder = write_rows(tmp_path, {"train": [{"id": "a", "dialogue": "x", "summary": "y"}], "validation": []})
    with pytest.raises(DataError, match="validation.jsonl has no rows"):
        load_dialogsum(folder, ("train", "validation"))
    with pytest.raises(DataError, match="has no test.jsonl"):
        load_dialogsum(folder, ("train", "test"))
    with pytest.raises(DataError, match="dataset directory not found: ./nowhere"):
        load_dialogsum("./nowhere")


def test_non_utf8_file_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes('{"id": "a", "dialogue": "caf\u00e9", "summary": "y"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="train.jsonl line 1 is not UTF-8"):
        load_dialogsum(str(tmp_path), ("train",))


def test_hub_dataset_offline_is_reported_as_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    # datasets raises DatasetNotFoundError when offline too: the message must say unreachable, not "not found".
    with pytest.raises(UnreachableError) as err:
        load_dialogsum("knkarthick/dialogsum")
    assert str(err.value) == (
        "dataset knkarthick/dialogsum is not reachable from here (offline or Hub unreachable): download it where the "
        "Hub is reachable and pass its local directory as dataset_name"
    )


def test_over_length_rows_are_dropped_and_counted(tmp_path, data_dir, smollm2_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    rows = Dataset.from_list(read_rows(data_dir, "train", 40))
    kept, report = fit_to_max_length(rows, tokenizer, 300, "train")
    assert report["rows"] == 40 and report["kept"] == len(kept)
    assert report["kept"] + report["dropped_summary_cut"] + report["dropped_prompt_too_long"] == 40
    assert report["dropped_summary_cut"] > 0 and report["dropped_prompt_too_long"] > 0
    assert report["total_tokens"]["max"] > 300
    # Every kept row fits whole: its summary ends inside max_length.
    for row in kept:
        example = to_prompt_completion(row)
        ids = tokenizer.apply_chat_template(example["prompt"] + example["completion"], **CHAT_TEMPLATE_KWARGS)
        assert len(ids["input_ids"] if isinstance(ids, dict) else ids) <= 300
    with pytest.raises(DataError, match="every train row is longer than max_length=10"):
        fit_to_max_length(rows, tokenizer, 10, "train")


def test_inference_prompt_is_the_training_prompt(smollm2_dir, data_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    row = read_rows(data_dir, "validation", 1)[0]
    example = to_prompt_completion(row)
    full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
    prompt = render_prompt(tokenizer, row["dialogue"])
    assert full.startswith(prompt)
    assert full[len(prompt):].startswith(row["summary"].strip())
    assert os.path.basename(smollm2_dir)  # the real SmolLM2 template, not a test double
