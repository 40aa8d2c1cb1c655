"""Export a trained adapter for runtimes outside transformers: a merged checkpoint, GGUF files, an Ollama Modelfile.

The merged checkpoint folds the adapter into the base the way evaluation found best (`nf4-merged`: the base rounded
to NF4 as in training, dequantized to bf16, adapter merged), so its weights are those evaluate.py scored.
GGUF files come from llama.cpp's own `convert_hf_to_gguf.py` with the `gguf-py` of the same commit, unpacked from
the llama-cpp-python sdist (which vendors llama.cpp whole) into .cache/llama.cpp by `make llama-cpp`; the same
sources build `llama-quantize` (K-quants, which gguf-py cannot write) and `llama-completion` (the runtime the
tests check the files with). Nothing is downloaded at export time, so export works offline once the cache exists.

An export is staged in `<output_dir>.partial` and renamed into place last; `export.json` marks it finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from .data import CHAT_TEMPLATE_KWARGS, SYSTEM_PROMPT
from .errors import UserError, check_output_path
from .model import end_of_turn_token_id


logger = logging.getLogger(__name__)

LLAMA_CPP_PYTHON = "0.3.36"  # llama-cpp-python sdist whose vendor/llama.cpp provides converter and sources
# DIALOGSUM_LLAMA_CPP_DIR moves it out of the checkout, so fresh clones on one machine (CI) share one build.
LLAMA_CPP_DIR = Path(os.environ.get("DIALOGSUM_LLAMA_CPP_DIR", Path(".cache") / "llama.cpp"))
# The converter imports sentencepiece before it looks for a tokenizer.model; installed next to it, not in the venv.
CONVERTER_DEPS = ("sentencepiece>=0.1.98,<0.3",)
BINARIES = ("llama-completion", "llama-quantize")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF", "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
)  # fmt: skip

# --formats: GGUF types the converter writes itself, and those only llama-quantize writes (from the F16 file).
CONVERTER_TYPES = {"gguf-f16": "f16", "gguf-bf16": "bf16", "gguf-q8_0": "q8_0"}
QUANTIZE_TYPES = {"gguf-q4_k_m": "Q4_K_M"}
FORMATS = ("merged", *CONVERTER_TYPES, *QUANTIZE_TYPES)
# Which GGUF the Modelfile points at when several are written: the smallest.
MODELFILE_PREFERENCE = ("gguf-q4_k_m", "gguf-q8_0", "gguf-f16", "gguf-bf16")
MANIFEST = "export.json"  # written last: its presence means the export is complete
MERGED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
WEIGHTS_NOTE = {
    "nf4-merged": "the adapter merged into the base rounded to 4-bit NF4 exactly as in training, then dequantized "
                  "to bf16 (the weights evaluate.py scores by default)",
    "merged": "the adapter merged into the original base weights, in bf16 (it was not trained on a 4-bit base)",
}


class ExportError(UserError):
    pass


###################
# llama.cpp: fetch the sdist, build the two tools
###################


def fetch_llama_cpp(root: Path = LLAMA_CPP_DIR) -> Path:
    """Unpack llama.cpp from the llama-cpp-python sdist into `root`/src (once) and return that directory."""
    root = Path(root)
    src = root / "src"
    stamp = root / "VERSION"
    if stamp.is_file() and stamp.read_text().strip() == LLAMA_CPP_PYTHON and (src / "convert_hf_to_gguf.py").is_file():
        return src
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        pip = [sys.executable, "-m", "pip", "-q"]
        _run([*pip, "download", "--no-deps", "--no-binary", ":all:",
              f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp], "pip download llama-cpp-python")
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(prefix) and m.name != prefix]
            for member in members:
                member.name = member.name[len(prefix):]
            archive.extractall(Path(tmp) / "src", members=members, filter="data")
        _run([*pip, "install", "--no-deps", "--target", str(Path(tmp) / "src" / "python-deps"), *CONVERTER_DEPS],
             "pip install the converter's dependencies")
        shutil.rmtree(src, ignore_errors=True)
        os.replace(Path(tmp) / "src", src)
    stamp.write_text(LLAMA_CPP_PYTHON + "\n")
    return src


def build_llama_cpp(root: Path = LLAMA_CPP_DIR, jobs: int = 2) -> Path:
    """Build llama-completion and llama-quantize (CPU, Release) under `root`/build; incremental, so cached."""
    root = Path(root)
    src = fetch_llama_cpp(root)
    build = root / "build"
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise ExportError(f"{tool} is not installed: `apt-get install -y cmake g++`, then run make llama-cpp")
    _run(["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS], "cmake configure of llama.cpp")  # seconds
    _run(["cmake", "--build", str(build), "-j", str(jobs), "--target", *BINARIES], "cmake build of llama.cpp")
    return build / "bin"


def llama_cpp_binary(name: str, root: Path = LLAMA_CPP_DIR) -> Path | None:
    path = Path(root) / "build" / "bin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _run(command: list[str], what: str, env: dict | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ExportError(f"{what} failed (exit {result.returncode}): {tail[0]}")
    return result.stdout


###################
# Conversion
###################


def convert_to_gguf(model_dir: Path, outfile: Path, outtype: str, root: Path = LLAMA_CPP_DIR) -> None:
    """llama.cpp's converter on a merged checkpoint, with its own gguf-py first on the path (not PyPI's gguf)."""
    src = Path(root) / "src"
    converter = src / "convert_hf_to_gguf.py"
    if not converter.is_file():
        raise ExportError(f"no llama.cpp converter in {src}: run make llama-cpp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src / "gguf-py"), str(src / "python-deps")])}
    env.pop("NO_LOCAL_GGUF", None)
    _run([sys.executable, str(converter), str(model_dir), "--outfile", str(outfile), "--outtype", outtype],
         f"convert_hf_to_gguf.py --outtype {outtype}", env=env)


def quantize_gguf(source: Path, outfile: Path, quant_type: str, root: Path = LLAMA_CPP_DIR) -> None:
    binary = llama_cpp_binary("llama-quantize", root)
    if binary is None:
        raise ExportError(f"no llama.cpp build for {quant_type}: run make llama-cpp")
    _run([str(binary), str(source), str(outfile), quant_type], f"llama-quantize {quant_type}")


def gguf_metadata(path: Path) -> dict:
    """The scalar and string metadata of a GGUF file (arrays left out), read with gguf-py's reader."""
    from gguf import GGUFReader, GGUFValueType

    fields = {}
    for name, value in GGUFReader(path).fields.items():
        if value.types and value.types[0] != GGUFValueType.ARRAY:
            fields[name] = value.contents()
    return fields


###################
# Merged checkpoint
###################


def merge_adapter(adapter, folder: Path) -> str:
    """Save base + adapter as one bf16 checkpoint in `folder`; returns the TUNED_WEIGHTS key used."""
    import torch
    from transformers import GenerationConfig

    from .generation import tuned_settings

    settings = tuned_settings(adapter.recipe, "auto", "bfloat16", "cpu")
    model = settings.load(adapter.base_model, adapter.directory).to(torch.bfloat16)
    # Dequantized weights are plain tensors now; a leftover quantization_config makes loaders (and llama.cpp's
    # converter) treat the checkpoint as bitsandbytes 4-bit.
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, key):
            delattr(model.config, key)
    model.config.dtype = torch.bfloat16
    tokenizer = adapter.tokenizer
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=list(adapter.stop_ids),
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    if "quantization_config" in config:
        raise ExportError(f"{folder / 'config.json'} still holds a quantization_config after dequantizing")
    return settings.weights


###################
# Ollama Modelfile
###################

_SYSTEM, _PROMPT = "\x1fSYSTEM\x1f", "\x1fPROMPT\x1f"


def ollama_template(tokenizer, add_bos: bool) -> str:
    """The chat template as an Ollama Go template, for one system and one user turn (how the model was trained).

    Rendering the model's own template around two markers, rather than writing ChatML or Llama 3 by hand, keeps
    every detail (Llama 3's date header, trailing newlines). A BOS the template writes is dropped when the runtime
    adds one itself (`add_bos`), or it would be doubled.
    """
    if not tokenizer.chat_template:
        raise ExportError("the tokenizer has no chat template: there is nothing to write the Modelfile TEMPLATE from")
    messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _PROMPT}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **CHAT_TEMPLATE_KWARGS)
    if text.count(_SYSTEM) != 1 or text.count(_PROMPT) != 1 or text.index(_SYSTEM) > text.index(_PROMPT):
        raise ExportError("unknown chat template family: it does not render one system turn followed by one user "
                          "turn, so no Ollama TEMPLATE can be derived from it")
    if add_bos and tokenizer.bos_token and text.startswith(tokenizer.bos_token):
        text = text[len(tokenizer.bos_token):]
    end_id = end_of_turn_token_id(tokenizer)
    end = tokenizer.convert_ids_to_tokens(end_id) if end_id is not None else ""
    for marker in "{}":
        if marker * 2 in text.replace(_SYSTEM, "").replace(_PROMPT, ""):
            raise ExportError("the chat template's text contains '{{' or '}}', which Ollama templates cannot hold")
    return text.replace(_SYSTEM, "{{ .System }}").replace(_PROMPT, "{{ .Prompt }}") + "{{ .Response }}" + end


def write_modelfile(path: Path, gguf_name: str, tokenizer, stop_ids: list[int], add_bos: bool) -> None:
    stops = list(dict.fromkeys(tokenizer.convert_ids_to_tokens(stop_ids)))
    lines = [
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{ollama_template(tokenizer, add_bos)}"""',
        f'SYSTEM """{SYSTEM_PROMPT}"""',
        *(f"PARAMETER stop {json.dumps(stop)}" for stop in stops),
        "PARAMETER temperature 0",  # greedy, as evaluated
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


###################
# The export
###################


def export(
    adapter_name: str,
    output_dir: str | Path,
    formats: list[str],
    *,
    base_model: str | None = None,
    revision: str | None = None,
    llama_cpp_dir: str | Path = LLAMA_CPP_DIR,
) -> dict:
    """Write the asked `formats` of the adapter to `output_dir`; returns the manifest (also in export.json)."""
    from .adapters import open_adapter

    output_dir, root = Path(output_dir), Path(llama_cpp_dir)
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown export format {', '.join(unknown) or '(none)'}: choose from {', '.join(FORMATS)}")
    formats = list(dict.fromkeys(formats))
    check_output_path(output_dir, "--output_dir")
    if (output_dir / MANIFEST).is_file():
        raise ExportError(f"{output_dir} already holds a finished export: choose another --output_dir")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ExportError(f"{output_dir} exists and is not empty: choose another --output_dir")
    ggufs = [name for name in formats if name != "merged"]
    if ggufs and not (root / "src" / "convert_hf_to_gguf.py").is_file():
        raise ExportError(f"no llama.cpp converter in {root / 'src'}: run make llama-cpp")
    for name in ggufs:
        if name in QUANTIZE_TYPES and llama_cpp_binary("llama-quantize", root) is None:
            raise ExportError(f"no llama.cpp build for {QUANTIZE_TYPES[name]}: run make llama-cpp")

    adapter = open_adapter(adapter_name, base_model=base_model, revision=revision)
    staging = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    stem = _model_stem(adapter.base_model_hub_id)
    files, seconds = {}, {}

    start = time.perf_counter()
    # The converter reads a checkpoint from disk: a hidden folder when the merged one is not asked for.
    merged_dir = staging if "merged" in formats else staging / ".merged"
    merged_dir.mkdir(exist_ok=True)
    weights = merge_adapter(adapter, merged_dir)
    seconds["merged"] = time.perf_counter() - start
    if "merged" in formats:
        files["merged"] = [name for name in MERGED_FILES if (staging / name).is_file()]

    for name in ggufs:
        start = time.perf_counter()
        target = staging / f"{stem}-{name.removeprefix('gguf-')}.gguf"
        if name in CONVERTER_TYPES:
            convert_to_gguf(merged_dir, target, CONVERTER_TYPES[name], root)
        else:
            source = staging / f"{stem}-f16.gguf"
            if "gguf-f16" not in formats:
                source = staging / ".f16.gguf"
                convert_to_gguf(merged_dir, source, "f16", root)
            quantize_gguf(source, target, QUANTIZE_TYPES[name], root)
        seconds[name] = time.perf_counter() - start
        files[name] = [target.name]
    for leftover in (staging / ".merged", staging / ".f16.gguf"):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif leftover.is_file():
            leftover.unlink()

    if ggufs:
        chosen = next(name for name in MODELFILE_PREFERENCE if name in files)
        gguf_file = staging / files[chosen][0]
        metadata = gguf_metadata(gguf_file)
        if "tokenizer.chat_template" not in metadata:
            raise ExportError(f"{gguf_file.name} has no tokenizer.chat_template: the converter did not embed it")
        add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
        write_modelfile(staging / "Modelfile", gguf_file.name, adapter.tokenizer, adapter.stop_ids, add_bos)

    manifest = {
        "adapter": adapter_name,
        "adapter_sha256": _sha256(adapter.directory / "adapter_model.safetensors"),
        "base_model_hub_id": adapter.base_model_hub_id,
        "base_model": adapter.base_model,
        "weights": weights,
        "weights_description": WEIGHTS_NOTE[weights],
        "stop_token_ids": adapter.stop_ids,
        "llama_cpp": f"vendor/llama.cpp of llama-cpp-python {LLAMA_CPP_PYTHON}",
        "formats": {name: {"files": files[name], "bytes": sum((staging / f).stat().st_size for f in files[name]),
                           "seconds": round(seconds[name], 1)} for name in formats},
        "rouge": _adapter_rouge(adapter.directory),
    }
    (staging / "README.md").write_text(export_card(manifest, repo_id=None), encoding="utf-8")
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if output_dir.exists():
        output_dir.rmdir()  # empty, checked above
    os.replace(staging, output_dir)
    return manifest


def _model_stem(base_model_hub_id: str) -> str:
    return base_model_hub_id.rstrip("/").split("/")[-1] + "-dialogsum"


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _adapter_rouge(adapter_dir: Path) -> dict | None:
    """The fine-tuned ROUGE from evaluate.py's default output, when it was computed for exactly these weights."""
    path = adapter_dir / "eval" / "eval_results.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    if metrics.get("adapter_sha256") != _sha256(adapter_dir / "adapter_model.safetensors"):
        logger.warning(f"{path} was computed for other adapter weights: the card shows no ROUGE")
        return None
    return {"split": metrics.get("split"), "num_dialogues": metrics.get("num_dialogues"),
            "mean_over_references": metrics["tuned"]["mean_over_references"]}


###################
# Card and Hub
###################


def export_card(manifest: dict, repo_id: str | None) -> str:
    """README.md of the export folder, and the Hub card when pushed (`repo_id` set)."""
    from huggingface_hub import ModelCardData

    from .rouge import ROUGE_NAMES, ROUGE_TYPES

    formats = manifest["formats"]
    ggufs = [name for name in formats if name != "merged"]
    quant_types = [name.removeprefix("gguf-").upper() for name in ggufs]
    data = ModelCardData(
        base_model=manifest["base_model_hub_id"],
        # quantized: GGUF files of the fine-tune; finetune: the merged full checkpoint, no adapter needed.
        base_model_relation="quantized" if ggufs else "finetune",
        library_name="gguf" if ggufs and "merged" not in formats else "transformers",
        pipeline_tag="text-generation",
        tags=["dialogsum", "summarization", *(["gguf", "llama.cpp", "ollama"] if ggufs else [])],
    )
    name = repo_id.split("/")[-1] if repo_id else _model_stem(manifest["base_model_hub_id"])
    lines = [
        f"# {name}",
        "",
        f"DialogSum summarization fine-tune of [{manifest['base_model_hub_id']}]"
        f"(https://huggingface.co/{manifest['base_model_hub_id']}): {manifest['weights_description']}.",
        "",
        "| format | files | size |",
        "|---|---|---|",
        *(f"| {fmt} | {', '.join(f'`{f}`' for f in info['files'])} | {info['bytes'] / 2**20:.0f} MiB |"
          for fmt, info in formats.items()),
    ]
    if any(q.startswith(("Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K")) for q in quant_types):
        lines += ["", "K-quants work on blocks of 256 values: tensors whose rows are not a multiple of 256 (all of "
                      "SmolLM2-135M's, hidden size 576) fall back to other quant types, so the file is larger than "
                      "a true Q4_K_M."]
    rouge = manifest.get("rouge")
    if rouge:
        scores = ", ".join(f"{ROUGE_NAMES[t]} {rouge['mean_over_references'][t]:.2f}" for t in ROUGE_TYPES)
        lines += ["", f"ROUGE of the adapter these weights come from (DialogSum {rouge['split']}, "
                      f"{rouge['num_dialogues']} dialogues, mean over references, before GGUF conversion): {scores}."]
    lines += ["", "## How to run", ""]
    source = repo_id or "."
    if "merged" in formats:
        lines += ["transformers (the prompt and greedy settings of the training recipe are in the repo's "
                  "chat template and generation_config.json):", "", "```python",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  f"model = AutoModelForCausalLM.from_pretrained({source!r})",
                  f"tokenizer = AutoTokenizer.from_pretrained({source!r})", "```", ""]
    if ggufs:
        gguf = formats[next(n for n in MODELFILE_PREFERENCE if n in formats)]["files"][0]
        lines += ["llama.cpp (the chat template is embedded in the GGUF):", "", "```bash",
                  f"llama-cli -m {gguf} -sys {json.dumps(SYSTEM_PROMPT)} --temp 0", "```", "",
                  "Ollama (the Modelfile holds the template, stop tokens, system prompt and temperature 0):", "",
                  "```bash", "ollama create dialogsum -f Modelfile", "ollama run dialogsum", "```"]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def push_export(output_dir: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Push a finished export with its card (README.md rewritten for `repo_id`) in one commit; returns its URL."""
    from huggingface_hub.utils import get_token

    from .hub import DEFAULT_IGNORE_PATTERNS_PUSH, push_folder

    output_dir = Path(output_dir)
    manifest = json.loads((output_dir / MANIFEST).read_text())
    (output_dir / "README.md").write_text(export_card(manifest, repo_id=repo_id), encoding="utf-8")
    token = get_token()
    for path in output_dir.iterdir():
        if token and path.is_file() and path.suffix not in (".gguf", ".safetensors") and token.encode() in path.read_bytes():
            raise ExportError(f"{path.name} holds your Hub token; remove it before pushing")
    kinds = (["merged model"] if "merged" in manifest["formats"] else []) + [
        f"GGUF {name.removeprefix('gguf-').upper()}" for name in manifest["formats"] if name != "merged"]
    return push_folder(output_dir, repo_id, private=private, commit_message=f"Upload DialogSum {', '.join(kinds)}",
                       ignore_patterns=[*DEFAULT_IGNORE_PATTERNS_PUSH, MANIFEST])
