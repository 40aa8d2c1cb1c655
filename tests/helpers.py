"""Helpers shared by the tests (fixtures live in conftest.py)."""

import importlib.util
import json
import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.abspath(os.path.join(ROOT, "..", "shared", "data", "dialogsum"))
SMOLLM2_DIR = os.path.join(ROOT, ".cache", "SmolLM2-135M-Instruct")
CPU_RECIPE = os.path.join(ROOT, "recipes", "smollm2-135m.yaml")
BASE_HUB_ID = "tiny-org/tiny-llama"  # what tiny adapters name as their base


def write_rows(folder, rows_by_split):
    os.makedirs(folder, exist_ok=True)
    for split, rows in rows_by_split.items():
        with open(os.path.join(folder, f"{split}.jsonl"), "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    return str(folder)


def read_rows(data_dir, split, count):
    with open(os.path.join(data_dir, f"{split}.jsonl"), encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(count)]


def run_script(script, *args, env=None, timeout=600):
    """Run one of scripts/ as users do; returns the CompletedProcess (text mode)."""
    full_env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", script), *map(str, args)],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def tiny_llama(folder, tokenizer_dir, hidden_size=32, seed=0, initializer_range=0.2, tie_word_embeddings=False,
               max_position_embeddings=1024):
    """A random 2-layer Llama with SmolLM2's tokenizer; wide initial weights make its greedy text vary by prompt."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def tiny_adapter(folder, base_dir, recipe=None, seed=1):
    """A LoRA adapter saved like scripts/sft.py saves one, with random non-zero B so that it changes the outputs."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GenerationConfig

    from dialogsum_sft.model import load_tokenizer

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"),
    )
    model.peft_config["default"].base_model_name_or_path = BASE_HUB_ID
    model.save_pretrained(folder, save_embedding_layers=False)  # "auto" would look the base up on the Hub
    tokenizer = load_tokenizer(base_dir)
    tokenizer.save_pretrained(folder)
    generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
    generation_config.save_pretrained(folder)
    with open(f"{folder}/recipe.yaml", "w", encoding="utf-8") as handle:
        yaml.safe_dump(recipe or {"model_name_or_path": BASE_HUB_ID, "base_model_hub_id": BASE_HUB_ID}, handle)
    return str(folder)


def sft_in_process(capsys, *args):
    """scripts/sft.py's `main` through `run_cli`, as its __main__ runs it, minus the interpreter start-up.

    Returns the exit status (None when it returned) and the `error:` lines it printed.
    """
    from dialogsum_sft.errors import run_cli

    spec = importlib.util.spec_from_file_location("sft_script", os.path.join(ROOT, "scripts", "sft.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try:
        run_cli(script.main, [CPU_RECIPE, "--use_cpu", "true", *map(str, args)])
        status = None
    except SystemExit as exit_:
        status = exit_.code
    return status, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
