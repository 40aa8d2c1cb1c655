"""Greedy decoding of many prompts at once, by one of three methods with the same outputs.

- `dynamic`: `model.generate` on left-padded batches, longest prompts first, dynamic KV cache, eager forward.
- `static`: the same batches through `model.generate` with a static KV cache sized once for the longest prompt and
  the decoding step `torch.compile`d (CUDA graphs); every batch is padded to the same row count, so the step
  compiles once. Compilation only happens on GPUs; elsewhere this is `dynamic` with a static cache.
- `continuous`: transformers' continuous batching (`model.generate_batch`): a paged KV cache, prompts packed without
  padding, and each sequence leaves the batch when it stops, so the next prompt takes its place.

All three are greedy with the same stop ids and the same `max_new_tokens`; on GPUs in bf16 their logits differ by
rounding (other kernels, other padding), so a near-tie can pick another token, as a different batch size does today.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from tqdm.auto import tqdm


DECODING_METHODS = {
    "dynamic": "model.generate on left-padded batches, longest prompts first, a KV cache that grows each step",
    "static": "model.generate on the same batches with one static KV cache sized for the longest prompt and the "
              "decoding step torch.compiled with CUDA graphs (on GPUs)",
    "continuous": "transformers' continuous batching: paged KV cache, no padding, finished sequences leave the batch",
}


@dataclass
class Decoded:
    """What one prompt generated: the new token ids up to (not including) the first stop id, and whether a stop id
    ended it (False: it ran to max_new_tokens)."""

    tokens: list[int]
    stopped: bool


def method_and_batch(text: str) -> tuple[str, int]:
    """`static:128` -> ("static", 128): a decoding run as benchmark scripts name it on their command line."""
    method, _, batch = text.partition(":")
    if method not in DECODING_METHODS or not batch.isdigit() or int(batch) < 1:
        raise ValueError(f"{text!r}: expected METHOD:BATCH, METHOD one of {', '.join(DECODING_METHODS)}")
    return method, int(batch)


def decode(
    model,
    prompts: list[list[int]],
    *,
    stop_ids: list[int],
    pad_id: int,
    max_new_tokens: int,
    batch_size: int,
    method: str = "dynamic",
    progress: bool = False,
) -> list[Decoded]:
    """Greedy continuations of `prompts` (token ids, special tokens included), in input order.

    Empty `stop_ids` never stop (benchmarks on random weights use that to run every prompt to `max_new_tokens`).
    `batch_size` is the rows per `generate` call for `dynamic`/`static`, and the most sequences decoded together
    for `continuous`.
    """
    if method not in DECODING_METHODS:
        raise ValueError(f"decoding must be one of {', '.join(DECODING_METHODS)}; got {method!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if not prompts:
        return []
    with model_defaults_hidden(model):
        if method == "continuous":
            outputs = _continuous(model, prompts, stop_ids, max_new_tokens, batch_size, progress)
        else:
            outputs = _batched(model, prompts, stop_ids, pad_id, max_new_tokens, batch_size, method == "static",
                               progress)
    stops = set(stop_ids)
    decoded = []
    for tokens in outputs:
        # Cut at the first stop id: what `generate` writes after it is padding, which need not be a special token.
        end = next((position for position, token in enumerate(tokens) if token in stops), None)
        decoded.append(Decoded(tokens[:end], stopped=end is not None))
    return decoded


def _greedy_config(stop_ids: list[int], pad_id: int, max_new_tokens: int, **settings):
    from transformers import GenerationConfig

    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                            eos_token_id=list(stop_ids) or None, pad_token_id=pad_id, **settings)


def _batched(model, prompts, stop_ids, pad_id, max_new_tokens, batch_size, static, progress) -> list[list[int]]:
    """`model.generate` on left-padded batches, longest prompts first: the batch that needs the most memory runs
    first (an out-of-memory error comes at once) and each batch holds prompts of similar length (little padding)."""
    import torch

    device = next(model.parameters()).device
    settings, cache = {}, None
    if static:
        from transformers import CompileConfig, StaticCache

        # One cache, emptied between batches, of one length (the longest prompt's) and one row count (see below):
        # the compiled decoding step then sees the same tensors every batch, so it compiles and records its CUDA
        # graph once. generate compiles only on accelerators; on CPU this is the static cache alone.
        cache = StaticCache(config=model.config, max_cache_len=max(map(len, prompts)) + max_new_tokens)
        if device.type == "cuda":
            settings["compile_config"] = CompileConfig(fullgraph=False, mode="reduce-overhead")
    config = _greedy_config(stop_ids, pad_id, max_new_tokens, **settings)
    order = sorted(range(len(prompts)), key=lambda index: -len(prompts[index]))
    outputs: list[list[int]] = [[] for _ in prompts]
    with tqdm(total=len(prompts), desc="decoding", unit="prompt", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            rows = [prompts[index] for index in indices]
            if static and start and len(rows) < batch_size:
                rows += [rows[-1]] * (batch_size - len(rows))  # filler rows, dropped below
            longest = max(map(len, rows))
            input_ids = torch.tensor([[pad_id] * (longest - len(row)) + row for row in rows], device=device)
            mask = torch.tensor([[0] * (longest - len(row)) + [1] * len(row) for row in rows], device=device)
            with torch.inference_mode():
                output = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                                        cache=cache)
                if cache is not None:
                    cache.reset()  # in place: the next batch writes into the same tensors
            for index, tokens in zip(indices, output[:, longest:].tolist()):
                outputs[index] = tokens
            bar.update(len(indices))
    return outputs


def _continuous(model, prompts, stop_ids, max_new_tokens, batch_size, progress) -> list[list[int]]:
    import torch
    from transformers import ContinuousBatchingConfig
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    # eos -1: no stop id (generate_batch would otherwise fall back to the model config's eos).
    config = _greedy_config(stop_ids, pad_id=0, max_new_tokens=max_new_tokens)
    config.eos_token_id = list(stop_ids) or -1
    # A paged cache just large enough for the `batch_size` longest sequences at once: left to itself it takes 90%
    # of the free memory (on CPU a minute to allocate; during training, memory the trainer needs).
    page_size = ContinuousBatchingConfig.page_size
    pages = sorted((-(-(len(prompt) + max_new_tokens) // page_size) for prompt in prompts), reverse=True)
    # Switch to FlashAttention only where it is installed: its fallback fetches kernels from the Hub.
    batching = ContinuousBatchingConfig(max_requests_per_batch=batch_size, num_blocks=sum(pages[:batch_size]),
                                        auto_switch_to_flash=is_flash_attn_2_available() or is_flash_attn_3_available())
    with torch.inference_mode():
        results = model.generate_batch(inputs=[list(prompt) for prompt in prompts], generation_config=config,
                                       continuous_batching_config=batching, progress_bar=progress)
    outputs = list(results.values())  # generate_batch returns them in input order
    failed = [output.error for output in outputs if output.error is not None]
    if len(outputs) != len(prompts) or failed:
        raise RuntimeError(f"continuous batching returned {len(outputs)} of {len(prompts)} results; "
                           f"{len(failed)} failed: {failed[:1]}")
    return [list(output.generated_tokens) for output in outputs]


@contextmanager
def model_defaults_hidden(model):
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
