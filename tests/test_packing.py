"""Padding-free batches are only correct if attention keeps the concatenated sequences apart: check it."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from dialogsum_sft.errors import RecipeError
from dialogsum_sft.model import check_attention_for_packing


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_padding_free_logits_equal_separate_sequences(tiny_model_dir, implementation):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=implementation).eval()
    torch.manual_seed(0)
    sequences = [torch.randint(10, 1000, (length,)) for length in (7, 12, 5)]
    with torch.no_grad():
        separate = torch.cat([model(ids[None]).logits[0] for ids in sequences])
        # What TRL's padding-free collator passes: one row, position ids restarting per sequence, no attention mask,
        # and (as SFTTrainer.compute_loss sets) no KV cache.
        position_ids = torch.cat([torch.arange(len(ids)) for ids in sequences])[None]
        packed = model(input_ids=torch.cat(sequences)[None], position_ids=position_ids, use_cache=False).logits[0]
        leaky = model(input_ids=torch.cat(sequences)[None], use_cache=False).logits[0]  # without the boundaries
    torch.testing.assert_close(packed, separate, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(leaky, separate, atol=1e-3)  # the check above would notice a leak


def test_packing_with_an_unknown_attention_is_refused():
    class Args:
        packing, padding_free, attn_implementation = True, False, "paged|sdpa"

    with pytest.raises(RecipeError, match="would let packed examples attend to each other"):
        check_attention_for_packing(Args, Args)
    Args.attn_implementation = "sdpa"
    check_attention_for_packing(Args, Args)
