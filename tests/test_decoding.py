"""Every decoding method gives model.generate's greedy tokens and stop flags (float32 on CPU, seconds).

The real SmolLM2 is compared on the GPU instead (scripts/gpu_decoding.sh: 500 test dialogues per method); on
CPU even three of its summaries take minutes.
"""

import pytest
import torch
from test_generation import DIALOGUES

from dialogsum_sft.data import render_prompt
from dialogsum_sft.decoding import DECODING_METHODS, decode, model_defaults_hidden
from dialogsum_sft.model import load_tokenizer
from helpers import tiny_llama


MAX_NEW = 10


def reference(model, prompts, stop_ids, max_new_tokens):
    """One prompt at a time through model.generate (no padding, none of the model's own generation defaults), cut
    at the first stop id."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids or None,
                              pad_token_id=0)
    results = []
    for prompt in prompts:
        with torch.inference_mode(), model_defaults_hidden(model):
            tokens = model.generate(torch.tensor([prompt]), generation_config=config)[0, len(prompt):].tolist()
        end = next((i for i, token in enumerate(tokens) if token in stop_ids), None)
        results.append((tokens[:end], end is not None))
    return results


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir):
    """A tiny random Llama whose greedy tokens vary by prompt and position."""
    from transformers import AutoModelForCausalLM

    folder = tiny_llama(tmp_path_factory.mktemp("tiny-decoding"), smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(folder)
    prompts = [tokenizer(render_prompt(tokenizer, d), add_special_tokens=False)["input_ids"] for d in DIALOGUES]
    free = reference(model, prompts, [], MAX_NEW)
    # Stop ids that end some continuations early and leave others running to MAX_NEW.
    stop_ids = [free[0][0][3], free[1][0][6]]
    expected = reference(model, prompts, stop_ids, MAX_NEW)
    assert 0 < sum(stopped for _, stopped in expected) < len(expected), expected
    return model, prompts, stop_ids, expected


@pytest.mark.parametrize("method", list(DECODING_METHODS))
def test_each_method_gives_generates_tokens_and_stop_flags(tiny, method):
    model, prompts, stop_ids, expected = tiny
    decoded = decode(model, prompts, stop_ids=stop_ids, pad_id=0, max_new_tokens=MAX_NEW, batch_size=2,
                     method=method)
    assert [(d.tokens, d.stopped) for d in decoded] == expected
    assert all(len(d.tokens) == MAX_NEW for d in decoded if not d.stopped)


@pytest.mark.parametrize("method", list(DECODING_METHODS))
def test_without_stop_ids_every_prompt_runs_to_max_new_tokens(tiny, method):
    model, prompts, _, _ = tiny
    decoded = decode(model, prompts[:3], stop_ids=[], pad_id=0, max_new_tokens=7, batch_size=3, method=method)
    assert [(d.tokens, d.stopped) for d in decoded] == reference(model, prompts[:3], [], 7)
    assert all(len(d.tokens) == 7 and not d.stopped for d in decoded)


def test_unknown_method_and_bad_batch_size_are_refused(tiny):
    model, prompts, _, _ = tiny
    with pytest.raises(ValueError, match="decoding must be one of"):
        decode(model, prompts, stop_ids=[2], pad_id=0, max_new_tokens=3, batch_size=2, method="beam")
    with pytest.raises(ValueError, match="batch_size"):
        decode(model, prompts, stop_ids=[2], pad_id=0, max_new_tokens=3, batch_size=0)


def test_summarize_gives_the_same_summaries_with_every_decoding_option(tiny, smollm2_dir):
    import argparse

    from dialogsum_sft.generation import GenerationOptions, add_generation_arguments, summarize

    model, _, stop_ids, _ = tiny
    tokenizer = load_tokenizer(smollm2_dir)
    parser = argparse.ArgumentParser()
    add_generation_arguments(parser, batch_size=2)
    assert GenerationOptions.from_args(parser.parse_args([])).decoding == "dynamic"
    summaries = {}
    for method in DECODING_METHODS:
        options = GenerationOptions.from_args(parser.parse_args(["--decoding", method]))
        summaries[method] = summarize(model, tokenizer, DIALOGUES, batch_size=options.batch_size, max_new_tokens=8,
                                      stop_ids=stop_ids, progress=False, decoding=options.decoding)
    assert len(set(map(tuple, summaries.values()))) == 1 and any(summaries["dynamic"]), summaries
