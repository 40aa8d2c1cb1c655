"""The second architecture end to end on CPU, without the 1 GB download: a tiny random Qwen2 with a ChatML tokenizer
carrying Qwen2.5's chat template (copied from the GGUF's metadata into tests/data), saved the way embedded.py saves
the converted GGUF. Formatting, masking, stop ids, padding-free attention and a short scripts/sft.py run."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_masking import prepared_dataset
from test_packing import LENGTHS, load, packed_batch, separate_logits, tolerance
from transformers import GenerationConfig

from dialogsum_sft import embedded
from dialogsum_sft.data import INSTRUCTION, SYSTEM_PROMPT, render_prompt
from dialogsum_sft.model import end_of_turn_token_id, load_tokenizer, stop_token_ids
from helpers import ROOT, read_rows, run_script


QWEN = embedded.get_model("qwen2.5-coder-1.5b")
TEMPLATE = (Path(__file__).parent / "data" / "qwen2.5-chat-template.jinja").read_text(encoding="utf-8")
RECIPE = os.path.join(ROOT, "recipes", "qwen2.5-coder-1.5b.yaml")


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory, data_dir):
    """2 layers, hidden 64, a byte-level BPE trained on DialogSum rows; special tokens, eos/pad/bos as in the
    tokenizer transformers builds from Qwen2.5's GGUF."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [f"{row['dialogue']}\n{row['summary']}" for row in read_rows(data_dir, "train", 200)]
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts + [SYSTEM_PROMPT, INSTRUCTION], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", chat_template=TEMPLATE)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    return embedded.save_checkpoint(QWEN, Qwen2ForCausalLM(config), tokenizer, str(folder))


def test_prompt_uses_our_system_turn_not_qwens_default(tiny_qwen_dir):
    tokenizer = load_tokenizer(tiny_qwen_dir)
    prompt = render_prompt(tokenizer, " #Person1#: Hi.\n#Person2#: Hello. ")
    assert prompt == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{INSTRUCTION}\n\n"
        "#Person1#: Hi.\n#Person2#: Hello.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == "<|im_end|>"


def test_labels_cover_exactly_the_summary_and_im_end(tiny_qwen_dir, data_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_qwen_dir)
    rows = read_rows(data_dir, "train", 3)
    for row, example in zip(rows, prepared_dataset(tiny_qwen_dir, rows, tokenizer, tmp_path)):
        trained = [token for token in example["labels"] if token != -100]
        assert tokenizer.decode(trained) == row["summary"].strip() + "<|im_end|>\n"  # the template's "\n" too
        first = example["labels"].index(trained[0])
        assert all(label == -100 for label in example["labels"][:first])
        assert example["input_ids"][first:] == trained


def test_stop_ids_are_qwens_im_end_and_endoftext(tiny_qwen_dir):
    tokenizer = load_tokenizer(tiny_qwen_dir)
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert end_of_turn_token_id(tokenizer) == im_end
    assert stop_token_ids(tokenizer, GenerationConfig.from_pretrained(tiny_qwen_dir)) == [im_end, endoftext]


@pytest.mark.parametrize("implementation", ["sdpa_varlen", "sdpa"])
def test_qwen2_padding_free_logits_equal_separate_sequences(tiny_qwen_dir, implementation):
    model = load(tiny_qwen_dir, implementation, "cpu").eval()
    torch.manual_seed(0)
    sequences = [torch.randint(10, 700, (length,)).tolist() for length in LENGTHS]
    with torch.no_grad():
        separate = separate_logits(load(tiny_qwen_dir, "sdpa", "cpu"), sequences, "cpu")
        packed = model(**packed_batch(sequences, "cpu"), use_cache=False).logits[0].float()
    torch.testing.assert_close(packed, separate, **tolerance("cpu"))


def test_qwen_recipe_trains_an_adapter_that_stops_on_im_end(tiny_qwen_dir, small_data_dir, tmp_path):
    out = tmp_path / "run"
    result = run_script(
        "sft.py", RECIPE, "--use_cpu", "true", "--require_gpu", "false", "--report_to", "none",
        "--model_name_or_path", tiny_qwen_dir, "--dataset_name", small_data_dir, "--output_dir", out,
        "--max_train_samples", "8", "--max_steps", "2", "--per_device_train_batch_size", "4", "--max_length", "512",
        "--save_strategy", "no", "--logging_steps", "1", "--use_liger_kernel", "false",  # Liger needs Triton (GPU)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fused_lora: 14 LoRA projections fused" in result.stderr  # the recipe's fused path, 2 layers x 7
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == QWEN.hub_id
    tensors = load_file(out / "adapter_model.safetensors")
    assert len(tensors) == 2 * 7 * 2  # 2 layers x 7 linear projections x (A, B)
    tokenizer = load_tokenizer(str(out))
    stops = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == stops
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["padding_free"] is True and recipe["attn_implementation"] == "sdpa_varlen"
    assert embedded.provenance_note(QWEN.hub_id, recipe["model_name_or_path"]) == QWEN.provenance
