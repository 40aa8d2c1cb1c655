"""Summaries from a base model or a trained adapter: loading for inference and batched greedy generation.

Evaluation (evaluation.py) and inference (scripts/summarize.py) both go through `adapters.open_adapter`,
`load_for_generation` and `summarize`, so the numbers reported are those of the summaries users get.

Precision: the adapter was trained on a 4-bit (NF4) base. Three ways to load it (`TUNED_WEIGHTS`):
- the base in bf16 (GPU) or float32 (CPU) with the LoRA weights merged in: fast, but the base weights are not the
  NF4-rounded ones the adapter learned against;
- a 4-bit base (`four_bit_config`, merge=False): exactly the training forward pass, adapter unmerged, slowest;
- a 4-bit base dequantized before merging (`four_bit_config`, merge=True): the weights training saw, at merged speed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .data import render_prompt
from .decoding import DECODING_METHODS, decode
from .errors import ModelError, UserError, explain_load_error


# How the fine-tuned model's weights are built (see the module docstring).
TUNED_WEIGHTS = {
    "nf4-merged": "base rounded to 4-bit NF4 as in training, dequantized, adapter merged",
    "nf4": "base in 4-bit NF4 as in training, adapter unmerged",
    "merged": "original base weights, adapter merged",
}
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class GenerationOptions:
    """The options evaluate.py and summarize.py share (`add_generation_arguments` puts them on a parser)."""

    batch_size: int
    max_new_tokens: int = 128
    dtype: str = "auto"  # a DTYPES name; auto: bfloat16 on GPU, float32 on CPU
    weights: str = "auto"  # a TUNED_WEIGHTS key; auto: nf4-merged for adapters trained on a 4-bit base
    decoding: str = "dynamic"  # a DECODINGS key

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GenerationOptions:
        for name in ("batch_size", "max_new_tokens"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name} must be at least 1; got {getattr(args, name)}")
        return cls(args.batch_size, args.max_new_tokens, args.dtype, args.weights, args.decoding)


def add_generation_arguments(parser: argparse.ArgumentParser, *, batch_size: int, batch_size_help: str | None = None):
    parser.add_argument("--batch_size", type=int, default=batch_size, help=batch_size_help)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="weights dtype (auto: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--weights", default="auto", choices=("auto", *TUNED_WEIGHTS),
                        help="fine-tuned weights: " + "; ".join(f"{k}: {v}" for k, v in TUNED_WEIGHTS.items())
                        + " (auto: nf4-merged for adapters trained on a 4-bit base)")
    parser.add_argument("--decoding", default="dynamic", choices=tuple(DECODINGS),
                        help="how summaries are decoded, all greedy: "
                        + "; ".join(f"{k}: {v}" for k, v in DECODINGS.items()))


@dataclass(frozen=True)
class LoadSettings:
    """How `load_for_generation` builds a model; `weights` names the choice (a TUNED_WEIGHTS key, or "base")."""

    weights: str
    dtype: object
    device: str
    merge: bool
    quantization_config: object = None

    def load(self, base_name_or_path: str, adapter_dir: str | Path | None = None):
        return load_for_generation(base_name_or_path, adapter_dir, dtype=self.dtype, device=self.device,
                                   merge=self.merge, quantization_config=self.quantization_config)


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


def base_settings(dtype: str, device: str | None = None) -> LoadSettings:
    """The zero-shot base model, as users get it from the Hub: unquantized, no adapter."""
    device = device or default_device()
    return LoadSettings("base", resolve_dtype(dtype, device), device, merge=False)


def tuned_settings(recipe: dict, weights: str = "auto", dtype: str = "auto", device: str | None = None) -> LoadSettings:
    """How to load an adapter on its base; `auto` weights are nf4-merged for adapters trained on a 4-bit base."""
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    if weights == "auto":
        weights = "nf4-merged" if recipe.get("load_in_4bit") else "merged"
    quantization = four_bit_config(recipe, torch_dtype) if weights.startswith("nf4") else None
    if quantization is not None:
        torch_dtype = quantization.bnb_4bit_compute_dtype  # the unquantized layers too, as in training
    return LoadSettings(weights, torch_dtype, device, merge=weights != "nf4", quantization_config=quantization)


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


# How summaries are decoded (decoding.py). All are greedy; tests/test_decoding.py checks they give the same tokens.
DECODINGS = DECODING_METHODS


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
    if not stop_ids:
        raise ValueError("stop_ids is empty: generation would only stop at max_new_tokens")
    prompts = [render_prompt(tokenizer, dialogue) for dialogue in dialogues]
    # The chat template already writes any BOS token; adding special tokens again would double it.
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    decoded = decode(model, encoded, stop_ids=stop_ids, pad_id=pad_id, max_new_tokens=max_new_tokens,
                     batch_size=batch_size, method=decoding, progress=progress)
    return [Summary(tokenizer.decode(d.tokens, skip_special_tokens=True).strip(), d.stopped) for d in decoded]
