"""Summaries from a base model or a trained adapter: loading for inference and batched greedy generation.

Evaluation (scripts/evaluate.py) and inference (scripts/summarize.py) both go through `prepare_adapter`,
`load_for_generation` and `summarize`, so the numbers reported are those of the summaries users get.

Precision: the adapter was trained on a 4-bit (NF4) base. Three ways to load it:
- the base in bf16 (GPU) or float32 (CPU) with the LoRA weights merged in: fast, but the base weights are not the
  NF4-rounded ones the adapter learned against;
- a 4-bit base (`four_bit_config`, merge=False): exactly the training forward pass, adapter unmerged, slowest;
- a 4-bit base dequantized before merging (`four_bit_config`, merge=True): the weights training saw, at merged speed.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from .data import render_prompt
from .errors import ModelError, UnreachableError
from .model import explain_load_error, is_local_path, load_tokenizer, stop_token_ids


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
    with open(path, encoding="utf-8") as handle:
        recipe = yaml.safe_load(handle)
    return recipe if isinstance(recipe, dict) else {}


def prepare_adapter(
    name_or_path: str, *, base_model: str | None = None, revision: str | None = None, token: str | None = None
) -> Adapter:
    """Resolve an adapter (local output dir or Hub repo id), choose its base model and check that they fit."""
    from .hub import resolve_adapter  # here: generating with a model in hand needs no Hub client

    directory = resolve_adapter(name_or_path, token=token, revision=revision)
    try:
        adapter_config = read_json(directory / ADAPTER_CONFIG)
    except ValueError as err:
        raise ModelError(f"{directory / ADAPTER_CONFIG} is not valid JSON: {err}") from err
    hub_id = adapter_config.get("base_model_name_or_path")
    if not hub_id:
        raise ModelError(f"{directory / ADAPTER_CONFIG} names no base_model_name_or_path; pass --base_model")
    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise ModelError(f"{directory} has no {ADAPTER_WEIGHTS}: the adapter was not saved completely")
    recipe = read_recipe(directory)
    trained_from = recipe.get("model_name_or_path")
    if base_model:
        source = "--base_model"
    elif isinstance(trained_from, str) and is_local_path(trained_from) and os.path.isdir(trained_from):
        # The Hub id is what users download; the local copy it trained from is what works offline.
        base_model = trained_from
        source = "the local checkpoint it trained from, recipe.yaml's model_name_or_path; --base_model overrides"
    else:
        base_model, source = hub_id, "the adapter's base_model_name_or_path"
    # The tokenizer saved with the adapter is the one it trained with (pad token and chat template included).
    has_tokenizer = (directory / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(directory) if has_tokenizer else base_model)
    check_base_fits(base_model, directory, len(tokenizer))
    generation_config = None
    if (directory / GENERATION_CONFIG).is_file():
        from transformers import GenerationConfig

        generation_config = GenerationConfig.from_pretrained(directory)
    return Adapter(
        directory=directory,
        base_model=base_model,
        base_model_hub_id=hub_id,
        base_model_source=source,
        tokenizer=tokenizer,
        stop_ids=stop_token_ids(tokenizer, generation_config),
        recipe=recipe,
    )


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


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str):
    """`auto`: bf16 on GPUs (what the recipes compute in), float32 on CPU (where bf16 matmuls are slow)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, name)


def four_bit_config(recipe: dict, dtype):
    """The BitsAndBytesConfig the adapter trained with, rebuilt from its recipe with TRL's own helper."""
    from trl import ModelConfig, get_quantization_config

    keys = ("bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage")
    compute_dtype = recipe.get("dtype") or str(dtype).removeprefix("torch.")
    settings = {key: recipe[key] for key in keys if key in recipe}
    return get_quantization_config(ModelConfig(load_in_4bit=True, dtype=compute_dtype, **settings))


# How the fine-tuned model's weights are built (see the module docstring).
TUNED_WEIGHTS = {
    "nf4-merged": "base rounded to 4-bit NF4 as in training, dequantized, adapter merged",
    "nf4": "base in 4-bit NF4 as in training, adapter unmerged",
    "merged": "original base weights, adapter merged",
}

TUNED_WEIGHTS_HELP = "fine-tuned weights: " + "; ".join(f"{k}: {v}" for k, v in TUNED_WEIGHTS.items()) + \
    " (auto: nf4-merged for adapters trained on a 4-bit base)"


def tuned_loading(recipe: dict, weights: str, dtype, device: str) -> tuple[str, dict]:
    """`load_for_generation` settings for an adapter; `auto` is nf4-merged for adapters trained on a 4-bit base."""
    if weights == "auto":
        weights = "nf4-merged" if recipe.get("load_in_4bit") else "merged"
    quantization = four_bit_config(recipe, dtype) if weights.startswith("nf4") else None
    if quantization is not None:
        dtype = quantization.bnb_4bit_compute_dtype  # the unquantized layers too, as in training
    return weights, dict(dtype=dtype, device=device, merge=weights != "nf4", quantization_config=quantization)


def load_for_generation(
    base_name_or_path: str,
    adapter_dir: str | Path | None,
    *,
    dtype,
    device: str,
    merge: bool,
    quantization_config=None,
):
    """The base model, with the adapter applied when `adapter_dir` is given, in eval mode on `device`.

    Each call loads fresh weights: PEFT injects LoRA layers into the model it is given, so a base model meant for a
    zero-shot comparison must never be one an adapter was loaded onto. `merge` folds the LoRA weights into the
    base weights (faster generation); with a `quantization_config` the 4-bit base is first dequantized, so the
    adapter merges into the NF4-rounded weights it trained against (merging into 4-bit layers would round again).
    """
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            base_name_or_path, dtype=dtype, device_map={"": device}, quantization_config=quantization_config
        )
    except Exception as err:
        raise explain_load_error(err, base_name_or_path, what="base model") from err
    if merge and quantization_config is not None:
        model = model.dequantize(dtype=dtype)
    if adapter_dir is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir))
        except RuntimeError as err:  # size mismatches that check_base_fits did not see (e.g. embeddings)
            raise ModelError(f"base model mismatch: cannot load {adapter_dir} onto {base_name_or_path}: "
                             f"{str(err).strip().splitlines()[0]}") from err
        if merge:
            model = model.merge_and_unload()
    return model.eval()


@dataclass(frozen=True)
class Summary:
    text: str
    stopped: bool  # False: generation ran to max_new_tokens without a stop id (the summary may be cut off)


# How `generate_tokens` decodes. All are greedy; tests/test_generation.py checks they give the same summaries.
DECODINGS = {
    "dynamic": "generate() on left-padded batches, longest prompts first, a KV cache that grows each step",
    "static": "generate() on the same batches with a static KV cache sized once for the longest prompt: fixed "
              "shapes, which transformers compiles with torch.compile on CUDA",
    "continuous": "transformers' continuous batching (generate_batch): a paged KV cache, no padding, and a "
                  "finished summary's slot goes to the next prompt at once",
}


def summarize(model, tokenizer, dialogues: list[str], **options) -> list[str]:
    """One greedy summary per dialogue, in input order (`generate_summaries` without the stop flags)."""
    return [summary.text for summary in generate_summaries(model, tokenizer, dialogues, **options)]


def generate_summaries(
    model,
    tokenizer,
    dialogues: list[str],
    *,
    batch_size: int,
    max_new_tokens: int = 128,
    stop_ids: list[int],
    progress: bool = True,
    decoding: str = "dynamic",
) -> list[Summary]:
    """One greedy summary per dialogue, in input order, prompted exactly as in training, with whether it stopped."""
    prompts = [render_prompt(tokenizer, dialogue) for dialogue in dialogues]
    # The chat template already writes any BOS token; adding special tokens again would double it.
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids or [None])[0]
    generated = generate_tokens(model, encoded, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                stop_ids=stop_ids, pad_id=pad_id, progress=progress, decoding=decoding)
    return [Summary(tokenizer.decode(tokens, skip_special_tokens=True).strip(), stopped)
            for tokens, stopped in generated]


def generate_tokens(
    model,
    encoded: list[list[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    progress: bool = True,
    decoding: str = "dynamic",
) -> list[tuple[list[int], bool]]:
    """Per prompt (token ids), its greedy continuation cut before the first stop id, and whether it had one.

    `dynamic` and `static` generate prompts longest first, so the batch that needs the most memory runs first (an
    out-of-memory error comes at once, not after an hour) and each batch holds prompts of similar length (little
    padding). Padding is on the left, so every prompt ends where generation starts. `batch_size` is the
    prompts generated together; `continuous` schedules them itself and ignores it.
    """
    from transformers import GenerationConfig

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if not stop_ids:
        raise ValueError("stop_ids is empty: generation would only stop at max_new_tokens")
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {', '.join(DECODINGS)}; got {decoding!r}")
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=list(stop_ids), pad_token_id=pad_id
    )
    with tqdm(total=len(encoded), desc="summarizing", unit="dialogue", disable=not progress) as bar:
        if decoding == "continuous":
            outputs = _continuous(model, encoded, config, bar)
        else:
            if decoding == "static":
                config.cache_implementation = "static"
                config.max_cache_len = max(map(len, encoded)) + max_new_tokens  # one size: one compiled graph
            outputs = _batched(model, encoded, config, batch_size, bar)
    stops = set(stop_ids)
    cut = []
    for tokens in outputs:
        # Cut at the first stop id: what follows is padding, which need not be a special token.
        end = next((position for position, token in enumerate(tokens) if token in stops), None)
        cut.append((tokens, False) if end is None else (tokens[:end], True))
    return cut


def _batched(model, encoded: list[list[int]], config, batch_size: int, bar) -> list[list[int]]:
    import torch

    order = sorted(range(len(encoded)), key=lambda index: -len(encoded[index]))
    device = next(model.parameters()).device
    outputs: list[list[int]] = [[] for _ in encoded]
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        longest = max(len(encoded[index]) for index in indices)
        input_ids = torch.full((len(indices), longest), config.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), longest), dtype=torch.long)
        for row, index in enumerate(indices):
            input_ids[row, longest - len(encoded[index]):] = torch.tensor(encoded[index])
            attention_mask[row, longest - len(encoded[index]):] = 1
        with torch.inference_mode(), _without_model_defaults(model):
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                    generation_config=config)
        for index, tokens in zip(indices, output[:, longest:].tolist()):
            outputs[index] = tokens
        bar.update(len(indices))
    return outputs


def _continuous(model, encoded: list[list[int]], config, bar) -> list[list[int]]:
    import torch
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    options = {}
    if next(model.parameters()).device.type != "cuda":
        # transformers sizes the paged cache from free GPU memory; elsewhere it would take most of the RAM. Here it
        # gets what the prompts need, and no warm-up, which only captures CUDA graphs.
        page = ContinuousBatchingConfig.page_size
        blocks = sum(-(-(len(prompt) + config.max_new_tokens) // page) for prompt in encoded)
        sizes = ContinuousBatchingConfig(num_blocks=blocks, max_batch_tokens=2048)
        options = dict(warmup=False, continuous_batching_config=sizes)
    with torch.inference_mode(), _without_model_defaults(model):
        results = model.generate_batch(encoded, generation_config=config, **options)
    # Results come keyed by request, in the order they finished; a prompt's tokens identify it (identical prompts
    # have identical greedy continuations).
    by_prompt = {tuple(result.prompt_ids): list(result.generated_tokens) for result in results.values()}
    bar.update(len(encoded))
    return [by_prompt[tuple(prompt)] for prompt in encoded]


@contextmanager
def _without_model_defaults(model):
    """Hide the model's generation_config: transformers fills every field our config leaves unset from it, and Hub
    models ship sampling settings and penalties (Qwen2.5: repetition_penalty 1.05) that would change the summaries.
    """
    from transformers import GenerationConfig

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = target.generation_config
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved
