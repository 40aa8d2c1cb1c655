"""Distributed training: recipe checks against the launcher's engine, and the FSDP adapter save fix.

`accelerate launch` tells the training processes which engine it chose through environment variables
(ACCELERATE_USE_FSDP, FSDP_*, ACCELERATE_USE_DEEPSPEED, ACCELERATE_DEEPSPEED_ZERO_STAGE, WORLD_SIZE), so the
recipe can be checked against it before any weights load.
"""

from __future__ import annotations

import importlib.util
import os

from .errors import RecipeError


FSDP_WRAPPER = "_fsdp_wrapped_module."


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def launcher_engine() -> str | None:
    """"fsdp", "zero3", "zero2" (any other DeepSpeed stage), "ddp" or None (one process, no launcher engine)."""
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return "zero3" if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3" else "zero2"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "ddp"
    return None


def check_recipe_for_launcher(training_args, model_args) -> None:
    """Known-bad recipe and engine combinations, as one error line before any weights load."""
    engine = launcher_engine()
    if engine is None:
        return
    if engine.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        raise RecipeError("the accelerate config asks for DeepSpeed, which is not installed: "
                          "pip install -e \".[deepspeed]\"")
    device_map = (training_args.model_init_kwargs or {}).get("device_map")
    if device_map is not None:
        raise RecipeError(
            f"model_init_kwargs.device_map ({device_map!r}) cannot be used under a distributed launch ({engine}): "
            "each process places its own copy; remove device_map from the recipe"
        )
    if engine == "fsdp" and os.environ.get("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT") != "FULL_STATE_DICT":
        raise RecipeError(
            f"fsdp_state_dict_type is {os.environ['FSDP_STATE_DICT_TYPE']}: the Trainer writes the adapter file "
            "only for FULL_STATE_DICT; set it in the accelerate config (accelerate_configs/fsdp_qlora.yaml)"
        )
    if engine in ("fsdp", "zero3") and getattr(training_args, "fused_lora", False):
        # Both shard the LoRA weights, which the fused path reads directly instead of through the modules' hooks; on
        # the H200, fsdp_qlora.yaml with fused_lora failed in the optimizer step (tensors of mixed devices/dtypes).
        raise RecipeError(
            f"fused_lora reads the LoRA weights directly, which {'FSDP' if engine == 'fsdp' else 'ZeRO-3'} shards: "
            "pass --fused_lora false (DDP and ZeRO-2 keep it)"
        )
    if not model_args.load_in_4bit:
        return
    if engine == "fsdp" and os.environ.get("FSDP_VERSION", "1") == "2":
        raise RecipeError(
            "FSDP2 (fsdp_version: 2) mis-decodes packed 4-bit weights (bitsandbytes#1945, accelerate#3983): "
            "use fsdp_version: 1 (accelerate_configs/fsdp_qlora.yaml)"
        )
    if engine in ("fsdp", "zero3") and model_args.bnb_4bit_quant_storage != model_args.dtype:
        raise RecipeError(
            f"{'FSDP' if engine == 'fsdp' else 'DeepSpeed ZeRO-3'} shards 4-bit weights only when they are stored in "
            f"the model's dtype: set bnb_4bit_quant_storage: {model_args.dtype} (it is "
            f"{model_args.bnb_4bit_quant_storage})"
        )


def let_peft_find_adapters_under_fsdp() -> None:
    """Make PEFT's adapter save see through FSDP1's nested wrappers (peft 0.21; otherwise the adapter is empty).

    PEFT picks the adapter's entries out of the gathered FULL_STATE_DICT by key prefixes it builds from the model's
    module names, stripping only a leading `_fsdp_wrapped_module.`. FSDP1 wraps every decoder layer and, under PEFT's
    wrap policy, every LoRA layer, so the names carry the wrapper in the middle
    (`...layers.0._fsdp_wrapped_module.self_attn.q_proj.lora_A`) while the gathered keys do not: no key matched, and
    save_model wrote adapter_model.safetensors with 0 tensors. This adds each prefix without the wrapper segments;
    the prefixes as PEFT found them stay, so keys of an unwrapped model still match.
    """
    from peft.tuners import tuners_utils

    found_by_peft = tuners_utils._get_tuner_state_dict_key_prefixes
    if getattr(found_by_peft, "sees_through_fsdp", False):
        return

    def prefixes(model, adapter_name=None):
        found = found_by_peft(model, adapter_name)
        return found | {prefix.replace(FSDP_WRAPPER, "") for prefix in found}

    prefixes.sees_through_fsdp = True
    tuners_utils._get_tuner_state_dict_key_prefixes = prefixes
