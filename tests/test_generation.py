"""Batched greedy summaries: order, padding, stop ids, merged adapters; on a tiny random Llama (seconds on CPU)."""

import json
import shutil

import pytest
import torch

from dialogsum_sft.adapters import open_adapter
from dialogsum_sft.data import render_prompt
from dialogsum_sft.errors import ModelError
from dialogsum_sft.generation import (
    DECODINGS,
    Summary,
    four_bit_config,
    generate_summaries,
    load_for_generation,
    summarize,
)
from dialogsum_sft.model import load_tokenizer
from helpers import BASE_HUB_ID, tiny_adapter, tiny_llama


DIALOGUES = [
    "#Person1#: Hi, is this seat taken?\n#Person2#: No, go ahead.",
    "#Person1#: What time does the train to Boston leave?\n#Person2#: At 6:15 from platform 4, but it is "
    "often late on Fridays, so take a book.\n#Person1#: Thanks, I will.",
    "#Person1#: Pass the salt, please.",
    "#Person1#: Did you finish the report?\n#Person2#: Almost. I need one more hour.",
    "#Person1#: Happy birthday! How old are you now?\n#Person2#: Thirty, and I feel twenty.",
]
NEVER = 3  # a special token id the tiny models never generate in these tests


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, smollm2_dir):
    return tiny_llama(tmp_path_factory.mktemp("tiny-base"), smollm2_dir)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, base_dir):
    return tiny_adapter(tmp_path_factory.mktemp("tiny-adapter"), base_dir)


@pytest.fixture(scope="module")
def base(base_dir):
    torch.set_num_threads(1)  # tiny matmuls: more threads only add contention
    model = load_for_generation(base_dir, None, dtype=torch.float32, device="cpu", merge=False)
    return model, load_tokenizer(base_dir)


def test_batched_summaries_are_in_input_order_and_equal_unbatched(base):
    model, tokenizer = base
    alone = [summarize(model, tokenizer, [d], batch_size=1, max_new_tokens=12, stop_ids=[NEVER], progress=False)[0]
             for d in DIALOGUES]
    batched = summarize(model, tokenizer, DIALOGUES, batch_size=3, max_new_tokens=12, stop_ids=[NEVER],
                        progress=False)
    assert len(set(alone)) == len(DIALOGUES) and all(alone)  # distinct texts: a reordering could not go unseen
    assert batched == alone
    assert tokenizer.padding_side == "right"  # left padding did not leak into the shared tokenizer


def test_generation_stops_at_any_stop_id_and_ignores_the_models_own_generation_config(base):
    model, tokenizer = base
    ids = tokenizer(render_prompt(tokenizer, DIALOGUES[1]), add_special_tokens=False, return_tensors="pt")
    tokens = model.generate(**ids, max_new_tokens=12, do_sample=False, eos_token_id=[NEVER],
                            pad_token_id=tokenizer.pad_token_id)[0, ids["input_ids"].shape[1]:].tolist()
    stop = next(position for position in range(2, len(tokens)) if tokens[position] not in tokens[:position])
    expected = tokenizer.decode(tokens[:stop], skip_special_tokens=True).strip()

    saved = model.generation_config
    # Hub models ship sampling settings and penalties; none may reach the summaries.
    model.generation_config = type(saved)(do_sample=True, temperature=5.0, min_new_tokens=12, no_repeat_ngram_size=1)
    try:
        for stop_ids in ([tokens[stop], NEVER], [NEVER, tokens[stop]]):  # the first or the second id
            summary = summarize(model, tokenizer, [DIALOGUES[1]], batch_size=1, max_new_tokens=12,
                                stop_ids=stop_ids, progress=False)
            assert summary == [expected]
    finally:
        model.generation_config = saved


def test_merged_adapter_matches_unmerged_and_base_stays_untouched(base, base_dir, adapter_dir):
    model, tokenizer = base
    inputs = tokenizer(DIALOGUES[:2], return_tensors="pt", padding=True)
    with torch.inference_mode():
        before = model(**inputs).logits
        unmerged = load_for_generation(base_dir, adapter_dir, dtype=torch.float32, device="cpu", merge=False)
        merged = load_for_generation(base_dir, adapter_dir, dtype=torch.float32, device="cpu", merge=True)
        unmerged_logits, merged_logits = unmerged(**inputs).logits, merged(**inputs).logits
        after = model(**inputs).logits
    assert not torch.allclose(unmerged_logits, before, atol=1e-3)  # the adapter does change the model
    torch.testing.assert_close(merged_logits, unmerged_logits, atol=1e-4, rtol=1e-4)
    assert type(merged).__name__ == "LlamaForCausalLM"  # merged: plain model, no LoRA layers left
    torch.testing.assert_close(after, before)  # loading adapters did not modify a separately loaded base


def test_merging_into_the_dequantized_nf4_base_matches_the_4bit_forward(base, tmp_path, smollm2_dir):
    _, tokenizer = base
    inputs = tokenizer(DIALOGUES[:2], return_tensors="pt", padding=True)
    base_dir = tiny_llama(tmp_path / "base", smollm2_dir, hidden_size=256)
    adapter_dir = tiny_adapter(tmp_path / "adapter", base_dir)
    nf4 = four_bit_config({"bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": True}, torch.float32)
    load = dict(dtype=torch.float32, device="cpu")
    with torch.inference_mode():
        # In train mode bitsandbytes runs the forward training ran (its CPU inference kernel computes in bf16);
        # the adapter has no dropout, so train mode changes nothing else.
        exact = load_for_generation(base_dir, adapter_dir, merge=False, quantization_config=nf4, **load).train()
        nf4_merged = load_for_generation(base_dir, adapter_dir, merge=True, quantization_config=nf4, **load)
        full_merged = load_for_generation(base_dir, adapter_dir, merge=True, **load)
        exact_logits, nf4_logits = exact(**inputs).logits, nf4_merged(**inputs).logits
        full_logits = full_merged(**inputs).logits
    assert type(nf4_merged.model.layers[0].mlp.up_proj) is torch.nn.Linear  # plain layers: merged speed
    torch.testing.assert_close(nf4_logits, exact_logits, atol=1e-3, rtol=1e-3)
    assert not torch.allclose(full_logits, exact_logits, atol=1e-2)  # NF4 rounding is what the check above keeps


def test_open_adapter_uses_the_local_base_from_the_recipe_and_checks_the_fit(tmp_path, base_dir, smollm2_dir):
    recipe = {"model_name_or_path": base_dir, "base_model_hub_id": BASE_HUB_ID}
    adapter = open_adapter(tiny_adapter(tmp_path / "adapter", base_dir, recipe))
    assert adapter.base_model == base_dir and adapter.base_model_hub_id == BASE_HUB_ID
    assert adapter.stop_ids == [load_tokenizer(base_dir).eos_token_id]

    wider = tiny_llama(tmp_path / "wider", smollm2_dir, hidden_size=48)
    with pytest.raises(ModelError, match="base model mismatch: .* hidden|base model mismatch: .*features"):
        open_adapter(str(tmp_path / "adapter"), base_model=wider)

    shutil.copytree(base_dir, tmp_path / "small-vocab")
    config = json.loads((tmp_path / "small-vocab" / "config.json").read_text())
    (tmp_path / "small-vocab" / "config.json").write_text(json.dumps({**config, "vocab_size": 32000}))
    with pytest.raises(ModelError, match="base model mismatch: .*vocabulary has 32000 tokens"):
        open_adapter(str(tmp_path / "adapter"), base_model=str(tmp_path / "small-vocab"))


def test_adapter_file_names_are_peft_s():
    from peft.utils import constants

    from dialogsum_sft import adapters

    assert adapters.ADAPTER_CONFIG == constants.CONFIG_NAME
    assert adapters.ADAPTER_WEIGHTS == constants.SAFETENSORS_WEIGHTS_NAME


def test_stop_flags_and_every_decoding_give_the_same_summaries(base):
    model, tokenizer = base
    ids = tokenizer(render_prompt(tokenizer, DIALOGUES[0]), add_special_tokens=False, return_tensors="pt")
    first = model.generate(**ids, max_new_tokens=1, do_sample=False, eos_token_id=[NEVER],
                           pad_token_id=tokenizer.pad_token_id)[0, -1].item()  # DIALOGUES[0]'s first new token
    results = {decoding: generate_summaries(model, tokenizer, DIALOGUES, batch_size=2, max_new_tokens=10,
                                            stop_ids=[first, NEVER], progress=False, decoding=decoding)
               for decoding in DECODINGS}
    dynamic = results["dynamic"]
    assert dynamic[0] == Summary("", True)  # stopped at once: empty, but not cut
    assert not all(summary.stopped for summary in dynamic)  # the others ran to max_new_tokens
    assert [summary.text for summary in dynamic] == summarize(model, tokenizer, DIALOGUES, batch_size=2,
                                                              max_new_tokens=10, stop_ids=[first, NEVER],
                                                              progress=False)
    for decoding, summaries in results.items():
        assert summaries == dynamic, decoding
    with pytest.raises(ValueError, match="decoding must be one of dynamic, static, continuous"):
        generate_summaries(model, tokenizer, DIALOGUES, batch_size=2, stop_ids=[NEVER], decoding="beam")
