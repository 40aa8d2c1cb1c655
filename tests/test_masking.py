"""What SFTTrainer trains on: the loss covers exactly the summary tokens and the end-of-turn token."""

import pytest
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from dialogsum_sft.data import to_prompt_completion
from dialogsum_sft.model import end_of_turn_token_id, load_tokenizer, stop_token_ids
from helpers import read_rows


DATE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'system' %}Today Date: {{ date_string | default('today') }}\n{% endif %}"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def prepared_dataset(model_dir, rows, tokenizer, tmp_path):
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list(rows).map(to_prompt_completion, remove_columns=["id", "dialogue", "summary", "topic"])
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", max_length=None)
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=dataset,
        processing_class=tokenizer,
    )
    return trainer.train_dataset


@pytest.fixture(scope="module")
def rows(data_dir):
    return read_rows(data_dir, "train", 4)


def test_labels_cover_exactly_the_summary_and_end_of_turn(tiny_model_dir, rows, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    for row, example in zip(rows, prepared_dataset(tiny_model_dir, rows, tokenizer, tmp_path)):
        trained = [token for token in example["labels"] if token != -100]
        # SmolLM2's template closes the turn with "<|im_end|>\n": the end token and its newline are trained too.
        assert tokenizer.decode(trained) == row["summary"].strip() + "<|im_end|>\n"
        first = example["labels"].index(trained[0])
        assert all(label == -100 for label in example["labels"][:first])  # the prompt carries no loss
        assert example["input_ids"][first:] == trained


def test_pinned_date_reaches_the_tokens(tiny_model_dir, rows, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = DATE_TEMPLATE
    example = prepared_dataset(tiny_model_dir, rows[:1], tokenizer, tmp_path)[0]
    assert "Today Date: 26 Jul 2024" in tokenizer.decode(example["input_ids"])


def test_stop_ids_include_the_end_of_turn_token(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_token_id(tokenizer) == im_end
    assert im_end in stop_token_ids(tokenizer, None)


def test_llama3_style_tokenizer_pads_with_the_reserved_token(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|finetune_right_pad_id|>"]})
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == "<|finetune_right_pad_id|>" and loaded.pad_token_id != loaded.eos_token_id
