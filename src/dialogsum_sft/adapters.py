"""Trained adapters: where one is (training output dir or Hub repo), which base to load it on, and whether it fits.

`open_adapter` is the one entry point: evaluation, inference and export all load the adapter it describes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import (
    ModelError,
    UnreachableError,
    check_model_dir,
    check_model_source,
    explain_load_error,
    is_local_path,
)
from .model import load_tokenizer, stop_token_ids


__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "Adapter", "check_base_fits", "check_safetensors", "open_adapter",
           "read_recipe"]

# PEFT's file names (peft.utils.constants CONFIG_NAME and SAFETENSORS_WEIGHTS_NAME; tests/test_generation.py checks
# they still agree), spelled out so that a bad adapter path fails before PEFT, torch and bitsandbytes load.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
RECIPE_FILE = "recipe.yaml"
GENERATION_CONFIG = "generation_config.json"
# LoRA tensors in a saved adapter: `base_model.model.<module>.lora_A.weight` is (r, in), `lora_B` is (out, r).
_LORA_PREFIX = "base_model.model."
_LORA_SUFFIXES = {".lora_A.weight": ("in_features", 1), ".lora_B.weight": ("out_features", 0)}


@dataclass
class Adapter:
    """A trained adapter ready to load: where it is, which base to load it on, its tokenizer and stop ids."""

    directory: Path
    base_model: str  # what is loaded: a local directory or a Hub id
    base_model_hub_id: str  # what the adapter names as its base (adapter_config.json)
    base_model_source: str  # why `base_model` was chosen, for the log
    tokenizer: object
    stop_ids: list[int]
    recipe: dict = field(default_factory=dict)


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_recipe(directory: Path) -> dict:
    path = directory / RECIPE_FILE
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            recipe = yaml.safe_load(handle)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ModelError(f"{path} is not valid YAML ({problem}): restore the recipe training saved, or remove it and "
                         "pass --base_model") from err
    return recipe if isinstance(recipe, dict) else {}


def open_adapter(
    name_or_path: str, *, base_model: str | None = None, revision: str | None = None, token: str | None = None
) -> Adapter:
    """Resolve an adapter (local output dir or Hub repo id), choose its base model and check that they fit."""
    from .hub import resolve_adapter  # here: generating with a model in hand needs no Hub client

    directory = resolve_adapter(name_or_path, token=token, revision=revision)
    hub_id = adapter_base_hub_id(directory)
    recipe = read_recipe(directory)
    base_model, source = choose_base_model(recipe, hub_id, base_model)
    # The tokenizer saved with the adapter is the one it trained with (pad token and chat template included).
    has_tokenizer = (directory / "tokenizer_config.json").is_file()
    check_model_source(base_model, "base model")
    check_model_dir(base_model, "base model", tokenizer=not has_tokenizer)
    tokenizer = load_tokenizer(str(directory) if has_tokenizer else base_model)
    check_base_fits(base_model, directory, len(tokenizer))
    return Adapter(
        directory=directory,
        base_model=base_model,
        base_model_hub_id=hub_id,
        base_model_source=source,
        tokenizer=tokenizer,
        stop_ids=stop_token_ids(tokenizer, _generation_config(directory)),
        recipe=recipe,
    )


def adapter_base_hub_id(directory: Path) -> str:
    """The base model adapter_config.json names; also checks that the adapter was saved completely."""
    try:
        adapter_config = read_json(directory / ADAPTER_CONFIG)
    except ValueError as err:  # UnicodeDecodeError included
        raise ModelError(f"{directory / ADAPTER_CONFIG} is not valid JSON: {err}") from err
    if not isinstance(adapter_config, dict):
        raise ModelError(f"{directory / ADAPTER_CONFIG} is not a PEFT adapter config (a JSON object)")
    hub_id = adapter_config.get("base_model_name_or_path")
    if not hub_id:
        raise ModelError(f"{directory / ADAPTER_CONFIG} names no base_model_name_or_path; pass --base_model")
    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise ModelError(f"{directory} has no {ADAPTER_WEIGHTS}: the adapter was not saved completely")
    check_safetensors(directory / ADAPTER_WEIGHTS)
    return hub_id


def check_safetensors(path: Path) -> None:
    """Fail with one line unless `path` is a whole safetensors file (a copy or save cut short is not).

    Reads only the header: 8 bytes of length, a JSON table of tensors with their byte ranges, then the data.
    """
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if size < 8 or 8 + header_size > size:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(header_size))
        data_size = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
                        default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise ModelError(f"{path} is not a safetensors file ({err}): the adapter was not saved completely; retrain "
                         "or copy it again") from None
    if 8 + header_size + data_size > size:
        raise ModelError(f"{path} is truncated ({size} bytes; its header describes {8 + header_size + data_size}): "
                         "it was cut short while being saved or copied; retrain or copy it again")


def choose_base_model(recipe: dict, hub_id: str, base_model: str | None) -> tuple[str, str]:
    """The base to load (`base_model` if given) and why it was chosen."""
    trained_from = recipe.get("model_name_or_path")
    if base_model:
        return base_model, "--base_model"
    if isinstance(trained_from, str) and is_local_path(trained_from) and os.path.isdir(trained_from):
        # The Hub id is what users download; the local copy it trained from is what works offline.
        return trained_from, "the local checkpoint it trained from, recipe.yaml's model_name_or_path; --base_model " \
            "overrides"
    return hub_id, "the adapter's base_model_name_or_path"


def _generation_config(directory: Path):
    if not (directory / GENERATION_CONFIG).is_file():
        return None
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(directory)
    except (OSError, ValueError) as err:
        raise ModelError(f"{directory / GENERATION_CONFIG} cannot be read: {str(err).splitlines()[0]}") from err


def load_base_config(base_model: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base_model)
    except Exception as err:
        explained = explain_load_error(err, base_model, what="base model")
        if isinstance(explained, UnreachableError):
            explained = UnreachableError(
                f"base model {base_model} is not reachable from here (offline or Hub unreachable): pass a local "
                "copy with --base_model"
            )
        raise explained from err


def check_base_fits(base_model: str, adapter_dir: Path, vocab_size: int) -> None:
    """Fail with one line, before any weights load, when the adapter's LoRA shapes do not fit `base_model`.

    The base is built on the meta device (no memory, no weights), so this costs about a second even for 8B models.
    """
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    config = load_base_config(base_model)
    text_config = config.get_text_config()
    mismatch = f"base model mismatch: {base_model} does not fit the adapter in {adapter_dir}"
    if getattr(text_config, "vocab_size", vocab_size) < vocab_size:
        raise ModelError(
            f"{mismatch}: its vocabulary has {text_config.vocab_size} tokens, the adapter's tokenizer {vocab_size}"
        )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    with safe_open(adapter_dir / ADAPTER_WEIGHTS, framework="pt") as weights:
        shapes = {name: weights.get_slice(name).get_shape() for name in weights.keys()}
    for name, shape in shapes.items():
        suffix = next((suffix for suffix in _LORA_SUFFIXES if name.endswith(suffix)), None)
        if suffix is None or not name.startswith(_LORA_PREFIX):
            continue
        module_name = name[len(_LORA_PREFIX):-len(suffix)]
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise ModelError(f"{mismatch}: it has no module {module_name}, which the adapter adapts") from None
        attribute, axis = _LORA_SUFFIXES[suffix]
        expected = getattr(module, attribute, None)
        if expected is not None and expected != shape[axis]:
            raise ModelError(
                f"{mismatch}: {module_name}.{attribute} is {expected} there but {shape[axis]} in the adapter "
                "(a different model size or architecture)"
            )
