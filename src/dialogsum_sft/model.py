"""Base model and tokenizer: loading with clear errors, pad/stop tokens, the base model's Hub id."""

from __future__ import annotations

import os

from .errors import ModelError, RecipeError, UnreachableError


# Attention implementations that keep padding-free / packed sequences apart: flash attention reads the sequence
# boundaries (cu_seq_lens) the collator passes, and transformers builds a block-diagonal mask from position_ids for
# sdpa, eager and flex attention (tests/test_packing.py checks it for the ones that run on CPU).
PACKING_SAFE_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
# Llama 3 reserves a pad token; using it keeps padding apart from <|eot_id|>, which the model must learn to emit.
RESERVED_PAD_TOKENS = ("<|finetune_right_pad_id|>",)


def is_local_path(name_or_path: str) -> bool:
    return os.path.isdir(name_or_path) or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1


def base_model_hub_id(model_args) -> str:
    """The Hub id to record as the adapter's base model (never a local path)."""
    if model_args.base_model_hub_id:
        if is_local_path(model_args.base_model_hub_id):
            raise RecipeError(f"base_model_hub_id must be a Hub id such as org/name; got {model_args.base_model_hub_id}")
        return model_args.base_model_hub_id
    if is_local_path(model_args.model_name_or_path):
        raise RecipeError(
            f"model_name_or_path is a local path ({model_args.model_name_or_path}): set base_model_hub_id to the "
            "Hub id of that model so the adapter names a base its users can download"
        )
    return model_args.model_name_or_path


def explain_load_error(err: Exception, name: str, what: str = "model") -> Exception:
    """Turn huggingface_hub/transformers loading failures into one-line user errors (or return err unchanged)."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(err, GatedRepoError):
        return ModelError(
            f"{what} {name} is gated: accept its license on https://huggingface.co/{name}, then log in with "
            "`hf auth login` (or set HF_TOKEN)"
        )
    if isinstance(err, RepositoryNotFoundError):
        return ModelError(f"{what} {name} not found on the Hub (check the id; private repos need `hf auth login`)")
    if is_local_path(name) and not os.path.isdir(os.path.expanduser(name)):
        hint = " (run `make model` to build the embedded SmolLM2 checkpoint)" if "SmolLM2" in name else ""
        return ModelError(f"{what} directory not found: {name}{hint}")
    text = str(err)
    if isinstance(err, LocalEntryNotFoundError) or "couldn't connect" in text or "offline mode" in text.lower():
        return UnreachableError(
            f"{what} {name} is not reachable from here (offline or Hub unreachable): download it where the Hub "
            "is reachable and pass its local directory as model_name_or_path"
        )
    if isinstance(err, OSError) and os.path.isdir(name):
        return ModelError(f"{what} directory {name} is not a usable checkpoint: {text.splitlines()[0]}")
    return err


def load_tokenizer(model_name_or_path: str, revision: str = "main", trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as err:
        raise explain_load_error(err, model_name_or_path) from err
    if tokenizer.chat_template is None:
        raise ModelError(f"{model_name_or_path} has no chat template; this recipe needs an instruct/chat model")
    vocab = tokenizer.get_vocab()
    reserved = next((token for token in RESERVED_PAD_TOKENS if token in vocab), None)
    if reserved is not None and tokenizer.pad_token in (None, tokenizer.eos_token):
        tokenizer.pad_token = reserved
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # TRL masks padding by position, so pad == eos trains correctly
    return tokenizer


def end_of_turn_token_id(tokenizer) -> int | None:
    """The special token the chat template closes an assistant turn with (<|eot_id|>, <|im_end|>, ...)."""
    marker = "XYZZY"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    after = text[text.rindex(marker) + len(marker):]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    return next((token for token in ids if token in special), None)


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every id that ends a summary: the generation config's eos ids, the tokenizer's eos and the end of turn."""
    ids: list[int] = []
    configured = getattr(generation_config, "eos_token_id", None)
    for token in ([configured] if isinstance(configured, int) else configured or []) + [
        tokenizer.eos_token_id,
        end_of_turn_token_id(tokenizer),
    ]:
        if token is not None and token not in ids:
            ids.append(token)
    return ids


def check_attention_for_packing(training_args, model_args) -> None:
    packs = training_args.packing or training_args.padding_free
    implementation = model_args.attn_implementation or "sdpa"
    if packs and implementation not in PACKING_SAFE_ATTENTION:
        raise RecipeError(
            f"packing/padding_free with attn_implementation={implementation} would let packed examples attend to "
            f"each other; use one of {', '.join(PACKING_SAFE_ATTENTION)} or turn packing off"
        )


def check_gpu(require_gpu: bool) -> None:
    import torch

    if require_gpu and not torch.cuda.is_available():
        raise RecipeError(
            "this recipe needs a CUDA GPU (require_gpu: true) and none is visible; on CPU use "
            "recipes/smollm2-135m.yaml, or pass --require_gpu false to try anyway"
        )
