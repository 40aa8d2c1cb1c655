"""`sdpa_varlen`: padding-free attention on the FlashAttention-2 kernel that ships inside PyTorch's CUDA wheels.

transformers keeps padding-free (packed) rows apart in two ways: flash_attention_2/3, which need the flash-attn package
(no wheel for this stack, and the Hub kernels are unreachable offline), or a mask over the whole packed row for sdpa,
eager and flex. That mask is dense for sdpa: a row of 10k tokens costs 10k x 10k scores per head and layer, most of
them masked, and on Llama-3.2-3B that quadratic work dominates the step. `torch.nn.attention.varlen` runs the
varlen FlashAttention-2 kernel on the sequence boundaries TRL's padding-free collator already passes
(`cu_seq_lens_q`, `max_length_q`), so the cost grows with each document's own length.

Everything else (padded batches, generation with a KV cache, CPU) goes to transformers' sdpa. On CPU a packed row is
attended one document at a time, which is the reference the GPU kernel is tested against.
"""

from __future__ import annotations

import inspect

import torch


VARLEN_ATTENTION = "sdpa_varlen"


def register_varlen_attention() -> None:
    """Make `attn_implementation="sdpa_varlen"` loadable by from_pretrained (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_ATTENTION, _varlen_mask)


def varlen_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention interface: query/key/value are [batch, heads, tokens, head_dim]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    one_row_without_cache = query.shape[0] == 1 and query.shape[2] == key.shape[2]
    if attention_mask is not None or not one_row_without_cache or dropout or not module.is_causal:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    cu_seq_lens, max_length = _document_boundaries(query, kwargs)
    query, key, value = (states[0].transpose(0, 1) for states in (query, key, value))  # [tokens, heads, head_dim]
    if query.is_cuda:
        output = _flash_varlen(query, key, value, cu_seq_lens, max_length, scaling)
    else:
        output = _sdpa_per_document(query, key, value, cu_seq_lens, scaling)
    return output[None], None  # [1, tokens, heads, head_dim], as transformers' other attention functions return


def _document_boundaries(query, kwargs) -> tuple[torch.Tensor, int]:
    """Where each packed document starts: from the collator when it passed them, else from restarting position ids."""
    if kwargs.get("cu_seq_lens_q") is not None:
        return kwargs["cu_seq_lens_q"].to(device=query.device, dtype=torch.int32), int(kwargs["max_length_q"])
    tokens = query.shape[2]
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        return torch.tensor([0, tokens], dtype=torch.int32, device=query.device), tokens
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    (cu_seq_lens, _), (max_length, _) = prepare_fa_kwargs_from_position_ids(position_ids)
    return cu_seq_lens, int(max_length)


def _flash_varlen(query, key, value, cu_seq_lens, max_length, scaling):
    from torch.nn.attention.varlen import varlen_attn

    # The signature moved between PyTorch releases: `is_causal` became `window_size=(-1, 0)`, `enable_gqa` appeared.
    parameters = inspect.signature(varlen_attn).parameters
    options = {"scale": scaling}
    if "is_causal" in parameters:
        options["is_causal"] = True
    else:
        options["window_size"] = (-1, 0)
    # Grouped key/value heads (Llama 3: 24 query, 8 key/value) are read by the kernel itself; newer wrappers ask.
    if key.shape[1] != query.shape[1] and "enable_gqa" in parameters:
        options["enable_gqa"] = True
    return varlen_attn(query, key, value, cu_seq_lens, cu_seq_lens, max_length, max_length, **options)


def _sdpa_per_document(query, key, value, cu_seq_lens, scaling):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    outputs = []
    bounds = cu_seq_lens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = (states[start:end].transpose(0, 1) for states in (query, key, value))  # [heads, tokens, dim]
        outputs.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)
                       .transpose(0, 1))
    return torch.cat(outputs)


def _varlen_mask(*args, attention_mask=None, **kwargs):
    """No mask where no row is padded (packed rows are split by their boundaries); sdpa's mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None or bool(attention_mask.all()):
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)
