"""Tokenizer of the base model: loading with clear errors, pad token, the ids that end a summary."""

from __future__ import annotations

from .errors import ModelError, check_model_source, explain_load_error


# Llama 3 reserves a pad token; using it keeps padding apart from <|eot_id|>, which the model must learn to emit.
RESERVED_PAD_TOKENS = ("<|finetune_right_pad_id|>",)


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
