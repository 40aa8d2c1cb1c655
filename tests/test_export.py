"""scripts/export.py on the embedded SmolLM2 with a random adapter: merged checkpoint, GGUF read back by gguf-py,
transformers and llama.cpp itself (built from the llama-cpp-python sdist, cached in .cache/llama.cpp)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from dialogsum_sft import embedded
from dialogsum_sft.data import SYSTEM_PROMPT, render_prompt
from dialogsum_sft.export import LLAMA_CPP_DIR, build_llama_cpp, gguf_metadata
from dialogsum_sft.model import load_tokenizer
from helpers import ROOT, error_lines, run_script
from hub_server import TOKEN


SMOLLM2_HUB_ID = embedded.get_model(embedded.DEFAULT_MODEL).hub_id


DIALOGUE = ("#Person1#: Are you coming to the picnic on Saturday?\n#Person2#: I'd love to, but I work until noon. "
            "Can I join you after that?\n#Person1#: Sure, we'll be at the lake until five.")
FORMATS = ("merged", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m")
STEM = "SmolLM2-135M-Instruct-dialogsum"
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def llama_cpp():
    """llama.cpp's converter and tools; the first build takes minutes on 2 cores, later runs reuse .cache/."""
    return build_llama_cpp(Path(ROOT) / LLAMA_CPP_DIR)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, smollm2_dir):
    """A QLoRA-style output dir on SmolLM2: random LoRA with small non-zero B, saved the way scripts/sft.py does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(smollm2_dir), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)  # changes the outputs but keeps the model's greedy choices clear
    model.peft_config["default"].base_model_name_or_path = SMOLLM2_HUB_ID
    model.save_pretrained(folder, save_embedding_layers=False)
    load_tokenizer(smollm2_dir).save_pretrained(folder)
    recipe = {"model_name_or_path": smollm2_dir, "base_model_hub_id": SMOLLM2_HUB_ID, "load_in_4bit": True,
              "bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": True, "dtype": "bfloat16"}
    (folder / "recipe.yaml").write_text(json.dumps(recipe))
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory, adapter_dir, llama_cpp):
    out = tmp_path_factory.mktemp("export") / "run"
    result = run_script("export.py", adapter_dir, "--output_dir", out, "--formats", *FORMATS)
    assert result.returncode == 0, result.stderr
    return out, result


def greedy(model, tokenizer, text, new_tokens=NEW_TOKENS):
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    tokens = output[0, inputs["input_ids"].shape[1]:].tolist()
    return tokens[:tokens.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in tokens else tokens


def load(folder, gguf_file=None):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32).eval()


def test_merged_checkpoint_is_the_nf4_merged_model_without_quantization_config(exported, adapter_dir):
    from dialogsum_sft.adapters import open_adapter
    from dialogsum_sft.generation import tuned_settings

    out, result = exported
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2]
    assert (out / "chat_template.jinja").is_file() and (out / "tokenizer.json").is_file()
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["weights"] == "nf4-merged" and "NF4" in (out / "README.md").read_text()
    assert not list(out.parent.glob("*.partial")) and not (out / ".merged").exists()

    adapter = open_adapter(str(adapter_dir))
    reference = tuned_settings(adapter.recipe, "auto", "bfloat16", "cpu").load(adapter.base_model, adapter.directory)
    merged = load(out)
    name = "model.layers.3.self_attn.q_proj.weight"
    expected = reference.state_dict()[name].to(torch.bfloat16).float()
    torch.testing.assert_close(merged.state_dict()[name], expected, rtol=0, atol=0)
    base = load(adapter.base_model).state_dict()[name]
    assert not torch.allclose(expected, base, atol=1e-3)  # NF4 rounding and the adapter both show


def test_gguf_metadata_embeds_the_chat_template_and_stop_ids(exported, smollm2_dir):
    from gguf import GGUFReader

    out, result = exported
    tokenizer = load_tokenizer(smollm2_dir)
    for kind in ("f16", "q8_0", "q4_k_m"):
        metadata = gguf_metadata(out / f"{STEM}-{kind}.gguf")
        assert metadata["general.architecture"] == "llama"
        assert metadata["tokenizer.chat_template"] == tokenizer.chat_template
        assert metadata["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    types = {tensor.tensor_type.name for tensor in GGUFReader(out / f"{STEM}-q4_k_m.gguf").tensors}
    assert types - {"F32", "Q4_K", "Q6_K"}  # hidden size 576 is no multiple of 256: K-quants fall back
    assert "q4_k_m" in result.stdout.lower()


def test_modelfile_template_renders_the_training_prompt(exported, smollm2_dir):
    out, _ = exported
    text = (out / "Modelfile").read_text()
    assert text.startswith(f"FROM ./{STEM}-q4_k_m.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0" in text
    assert f'SYSTEM """{SYSTEM_PROMPT}"""' in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    tokenizer = load_tokenizer(smollm2_dir)
    prompt = render_prompt(tokenizer, DIALOGUE)
    user = prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    rendered = template.replace("{{ .System }}", SYSTEM_PROMPT).replace("{{ .Prompt }}", user)
    assert rendered == prompt + "{{ .Response }}<|im_end|>"


def test_gguf_loaded_by_transformers_generates_the_merged_models_tokens(exported, smollm2_dir):
    out, _ = exported
    tokenizer = load_tokenizer(smollm2_dir)
    prompt = render_prompt(tokenizer, DIALOGUE)
    merged = greedy(load(out), tokenizer, prompt)
    assert len(merged) >= 8
    assert greedy(load(out, f"{STEM}-f16.gguf"), tokenizer, prompt) == merged
    short = "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    assert greedy(load(out, f"{STEM}-q8_0.gguf"), tokenizer, short, 8) == greedy(load(out), tokenizer, short, 8)


def test_llama_cpp_generates_the_same_greedy_tokens_as_transformers(exported, llama_cpp, smollm2_dir):
    out, _ = exported
    tokenizer = load_tokenizer(smollm2_dir)
    # Q8_0: llama.cpp also rounds the activations to 8 bits, so it keeps transformers' tokens on short prompts only.
    short = "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    for kind, prompt, new_tokens in (("f16", render_prompt(tokenizer, DIALOGUE), NEW_TOKENS), ("q8_0", short, 8)):
        expected = tokenizer.decode(greedy(load(out, f"{STEM}-{kind}.gguf"), tokenizer, prompt, new_tokens))
        # One thread: ggml's threads wait for each other at every op, which crawls on a busy 2-core machine.
        result = subprocess.run([str(llama_cpp / "llama-completion"), "-m", str(out / f"{STEM}-{kind}.gguf"),
                                 "-p", prompt, "-n", str(new_tokens), "-t", "1", "--temp", "0", "-no-cnv",
                                 "--no-display-prompt", "-sp", "--no-warmup", "-c", "1024"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        generated = result.stdout.removesuffix("\n").removesuffix(" [end of text]").removesuffix("<|im_end|>")
        assert generated.strip() == expected.strip() and expected.strip(), kind


def test_push_publishes_gguf_modelfile_and_card_in_one_commit(hub_server, tmp_path, adapter_dir, llama_cpp):
    env = {"HF_TOKEN": hub_server.token, "HF_HUB_OFFLINE": "0", "OMP_NUM_THREADS": "1"}
    result = run_script("export.py", adapter_dir, "--output_dir", tmp_path / "out", "--formats", "gguf-q8_0",
                        "--push_to_hub", "--hub_model_id", "smollm2-dialogsum-gguf", env=env)
    assert result.returncode == 0, result.stderr
    repo = f"{hub_server.user}/smollm2-dialogsum-gguf"
    files = hub_server.files(repo)
    assert set(files) == {f"{STEM}-q8_0.gguf", "Modelfile", "README.md", ".gitattributes"}
    assert len(hub_server.commits(repo)) == 2  # repo creation, then the whole export
    card = files["README.md"].decode()
    assert f"base_model: {SMOLLM2_HUB_ID}" in card and "base_model_relation: quantized" in card
    assert "ollama create" in card and "llama-cli -m" in card
    assert TOKEN not in result.stdout + result.stderr
    assert not any(TOKEN.encode() in content for content in files.values())


def test_bad_inputs_are_one_line_errors_and_leave_nothing_finished(tmp_path, exported, adapter_dir):
    out, _ = exported
    cases = [
        (("--formats", "gguf-q3_xs"), "error: unknown export format gguf-q3_xs: choose from merged, gguf-f16"),
        (("--formats", "gguf-q4_k_m", "--llama_cpp_dir", tmp_path / "nowhere"), "error: no llama.cpp converter"),
    ]
    for extra, message in cases:
        result = run_script("export.py", adapter_dir, "--output_dir", tmp_path / "x", *extra)
        assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
        assert error_lines(result)[0].startswith(message)
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()

    converter_only = tmp_path / "llama.cpp"
    (converter_only / "src").mkdir(parents=True)
    (converter_only / "src" / "convert_hf_to_gguf.py").write_text("")
    result = run_script("export.py", adapter_dir, "--output_dir", tmp_path / "x", "--formats", "gguf-q4_k_m",
                        "--llama_cpp_dir", converter_only)
    assert error_lines(result) == ["error: no llama.cpp build for Q4_K_M: run make llama-cpp"]

    result = run_script("export.py", adapter_dir, "--output_dir", out, "--formats", "merged")
    assert result.returncode == 2
    assert error_lines(result) == [f"error: {out} already holds a finished export: choose another --output_dir"]

    orphan = tmp_path / "orphan"
    orphan.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (orphan / name).write_bytes((adapter_dir / name).read_bytes())
    config = json.loads((orphan / "adapter_config.json").read_text())
    (orphan / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "nobody/nothing"}))
    result = run_script("export.py", orphan, "--output_dir", tmp_path / "y", "--formats", "merged")
    assert result.returncode == 2 and len(error_lines(result)) == 1, result.stderr
    assert "nobody/nothing" in error_lines(result)[0]
    assert not os.path.exists(tmp_path / "y") and not os.path.exists(tmp_path / "y.partial")
