"""Base model and tokenizer: loading with clear errors, pad/stop tokens, the base model's Hub id."""

from __future__ import annotations

import os

from .errors import ModelError, RecipeError, UnreachableError


# Attention implementations that keep padding-free / packed sequences apart: flash attention and this project's
# sdpa_varlen (attention.py) read the sequence boundaries (cu_seq_lens) the collator passes, and transformers builds
# a block-diagonal mask from position_ids for sdpa, eager and flex attention (tests/test_packing.py checks them).
PACKING_SAFE_ATTENTION = ("sdpa_varlen", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
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


def model_source_error(name: str, what: str = "model") -> ModelError | None:
    """The error for a name that is neither an existing local directory nor a valid Hub repo id (else None).

    Needs no network: a missing local directory or a malformed id fails before any data or weights are loaded.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if os.path.isdir(os.path.expanduser(name)):
        return None
    if name.startswith((".", "/", "~")):
        hint = "run `make model` to build the embedded SmolLM2 checkpoint" if "SmolLM2" in name else (
            "check the path, or give a Hub id such as org/name"
        )
        return ModelError(f"{what} directory not found: {name} ({hint})")
    try:
        validate_repo_id(name)
    except HFValidationError as err:
        reason = str(err).splitlines()[0].replace(" Use `repo_type` argument if needed.", "")
        reason = reason.removesuffix(f": '{name}'.").removesuffix(f" '{name}'.")
        return ModelError(
            f"{what} {name} is neither an existing local directory nor a valid Hub repo id ({reason}): give a "
            "model directory or a Hub id such as org/name"
        )
    return None


def check_model_source(name: str, what: str = "model") -> None:
    error = model_source_error(name, what)
    if error is not None:
        raise error


def _causes(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:  # transformers' wrapped errors can form a cycle
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def explain_load_error(err: Exception, name: str, what: str = "model") -> Exception:
    """Turn huggingface_hub/transformers loading failures into one-line user errors (or return err unchanged).

    transformers re-raises Hub failures as OSError, sometimes without the original as cause, so both the cause chain
    and the messages are read. No message built here holds the token.
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    source_error = model_source_error(name, what)
    if source_error is not None:
        return source_error
    chain = list(_causes(err))
    text = "\n".join(str(exc) for exc in chain)

    def raised(kind) -> bool:
        return any(isinstance(exc, kind) for exc in chain)

    if raised(GatedRepoError) or "trying to access a gated repo" in text:
        return ModelError(
            f"{what} {name} is gated: accept its license on https://huggingface.co/{name}, then log in with "
            "`hf auth login` (or set HF_TOKEN)"
        )
    if raised(RepositoryNotFoundError) or "is not a valid model identifier" in text:
        return ModelError(f"{what} {name} not found on the Hub (check the id; private repos need `hf auth login`)")
    if raised(RevisionNotFoundError) or "is not a valid git identifier" in text:
        return ModelError(f"{what} {name} has no such revision on the Hub (check model_revision)")
    status = next((exc.response.status_code for exc in chain if isinstance(exc, HfHubHTTPError)
                   and exc.response is not None), None)
    if status in (401, 403) or "401 Unauthorized" in text or "403 Forbidden" in text:
        return ModelError(
            f"the Hub refused the token for {what} {name}: set HF_TOKEN or run `hf auth login` with a valid token "
            "that can read it"
        )
    if raised(LocalEntryNotFoundError) or "couldn't connect" in text or "offline mode" in text.lower():
        return UnreachableError(
            f"{what} {name} is not reachable from here (offline or Hub unreachable): download it where the Hub "
            "is reachable and pass its local directory as model_name_or_path"
        )
    if isinstance(err, OSError) and os.path.isdir(name):
        return ModelError(f"{what} directory {name} is not a usable checkpoint: {str(err).splitlines()[0]}")
    return err


def load_tokenizer(model_name_or_path: str, revision: str = "main", trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_model_source(model_name_or_path)
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
