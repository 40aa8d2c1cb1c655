"""Padding-free batches are only correct if attention keeps the concatenated sequences apart: check it."""

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from dialogsum_sft.attention import register_varlen_attention
from dialogsum_sft.configs import check_attention_for_packing
from dialogsum_sft.errors import RecipeError


# The GPU cases run where CUDA is (docs/benchmarks.md records the run); sdpa_varlen's kernel exists only there.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
LENGTHS = (7, 12, 5)


def load(model_dir, implementation, device):
    register_varlen_attention()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=implementation, dtype=dtype).to(device)


def packed_batch(sequences, device):
    """What TRL's padding-free collator passes: one row, position ids restarting per sequence, the sequence
    boundaries (cu_seq_lens), no attention mask."""
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": s} for s in sequences])
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items() if key != "labels"}


def separate_logits(model, sequences, device):
    """The reference: each sequence on its own through transformers' sdpa."""
    return torch.cat([model(torch.tensor([ids], device=device)).logits[0] for ids in sequences]).float()


def tolerance(device):
    return dict(rtol=1e-4, atol=1e-4) if device == "cpu" else dict(rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("implementation", ["sdpa_varlen", "sdpa", "eager"])
def test_padding_free_logits_equal_separate_sequences(tiny_model_dir, implementation, device):
    model = load(tiny_model_dir, implementation, device).eval()
    torch.manual_seed(0)
    sequences = [torch.randint(10, 1000, (length,)).tolist() for length in LENGTHS]
    with torch.no_grad():
        separate = separate_logits(load(tiny_model_dir, "sdpa", device), sequences, device)
        # SFTTrainer.compute_loss turns the KV cache off
        packed = model(**packed_batch(sequences, device), use_cache=False).logits[0].float()
        # Only position ids, as other packers pass them
        position_ids = torch.cat([torch.arange(len(ids)) for ids in sequences])[None].to(device)
        flat = torch.tensor([sum(sequences, [])], device=device)
        from_positions = model(input_ids=flat, position_ids=position_ids, use_cache=False).logits[0].float()
        leaky = model(input_ids=flat, use_cache=False).logits[0].float()  # without the boundaries
    torch.testing.assert_close(packed, separate, **tolerance(device))
    torch.testing.assert_close(from_positions, separate, **tolerance(device))
    assert not torch.allclose(leaky, separate, atol=0.1)  # the checks above would notice a leak


@pytest.mark.parametrize("device", DEVICES)
def test_varlen_attention_gradients_equal_separate_sequences(tiny_model_dir, device):
    model = load(tiny_model_dir, "sdpa_varlen", device).train()
    torch.manual_seed(0)
    sequences = [torch.randint(10, 1000, (length,)).tolist() for length in LENGTHS]
    weight = model.model.layers[0].self_attn.q_proj.weight

    reference = load(tiny_model_dir, "sdpa", device).train()
    model(**packed_batch(sequences, device), use_cache=False).logits.float().square().mean().backward()
    separate_logits(reference, sequences, device).square().mean().backward()
    expected = reference.model.layers[0].self_attn.q_proj.weight.grad
    torch.testing.assert_close(weight.grad.float(), expected.float(), **tolerance(device))


def test_packing_with_an_unknown_attention_is_refused():
    class Args:
        packing, padding_free, attn_implementation = True, False, "paged|sdpa"

    with pytest.raises(RecipeError, match="would let packed examples attend to each other"):
        check_attention_for_packing(Args, Args)
    Args.attn_implementation = "sdpa"
    check_attention_for_packing(Args, Args)
