"""A fused QLoRA projection path for PEFT LoRA layers on bitsandbytes 4-bit weights.

PEFT's `lora.bnb.Linear4bit.forward` runs the 4-bit base matmul, clones the result, then adds
`lora_B(lora_A(dropout(x))) * scaling` with dtype casts: several full-size element-wise passes per projection,
forward and backward. Here one autograd function does a projection as two GEMMs into one output buffer:

    out = x @ W.T (+ bias);  out.addmm_(x @ A.T, B.T, alpha=scaling)   # the LoRA term in the GEMM epilogue

and its backward recomputes the dequantized W instead of keeping it (it is as large as a bf16 weight):

    dX = dY @ W + scaling * (dY @ B) @ A;  dA = scaling * (dY @ B).T @ x;  dB = scaling * dY.T @ (x @ A.T)

Projections that read the same input (q/k/v of attention, gate/up of a gated MLP) go through one call: the input is
saved once, each weight is dequantized once per pass, and their input gradients are summed into one buffer. The
module's own forward (transformers', or Liger's SwiGLU MLP) still runs; the shared call only precomputes what its
projections return for that input. The design follows unsloth's `kernels/fast_lora.py` and axolotl's LoRA kernels
(`docs/lora_optims.qmd`), written in plain PyTorch plus bitsandbytes' dequantization, so it runs on CPU in CI the
same way as on the GPU.

It applies to a LoRA layer with one active adapter, no dropout (PEFT's `nn.Identity`), no LoRA bias, no DoRA and a
frozen base bias; anything else, and a merged or disabled adapter at run time, keeps PEFT's forward. The adapter's
parameters are PEFT's own, so a saved adapter is a standard PEFT adapter.
"""

from __future__ import annotations

import types

import torch


# Projections that share one input, by the attribute names transformers' Llama-family models use.
SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def fusable(layer: torch.nn.Module) -> bool:
    """Whether a module is a PEFT LoRA layer on a 4-bit weight that the fused path computes exactly."""
    try:
        from peft.tuners.lora.bnb import Linear4bit
    except ImportError:  # bitsandbytes missing: there is nothing 4-bit to fuse
        return False
    if not isinstance(layer, Linear4bit) or len(layer.active_adapters) != 1:
        return False
    name = layer.active_adapters[0]
    base = layer.get_base_layer()
    return (
        name in layer.lora_A
        and isinstance(layer.lora_dropout[name], torch.nn.Identity)
        and not layer.use_dora.get(name, False)
        and not layer.lora_bias.get(name, False)
        and name not in getattr(layer, "lora_variant", {})
        and getattr(base.weight, "quant_state", None) is not None
        and (base.bias is None or not base.bias.requires_grad)
    )


class _SharedInputLoRA(torch.autograd.Function):
    """Several 4-bit + LoRA projections of one 2-D input: outputs in forward; dX (summed), dA, dB in backward."""

    @staticmethod
    def forward(ctx, x, weights, biases, scalings, *adapters):
        outputs = []
        for index, (weight, bias, scaling) in enumerate(zip(weights, biases, scalings)):
            lora_a, lora_b = adapters[2 * index], adapters[2 * index + 1]
            base = _dequantize(weight, x.dtype)
            out = torch.mm(x, base.t()) if bias is None else torch.addmm(bias.to(x.dtype), x, base.t())
            del base
            outputs.append(out.addmm_(x @ lora_a.t(), lora_b.t(), alpha=scaling))
        ctx.weights, ctx.scalings = weights, scalings
        ctx.save_for_backward(x, *adapters)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grad_outputs):
        x, *adapters = ctx.saved_tensors
        grad_x = None
        grad_adapters = []
        for index, (weight, scaling, grad) in enumerate(zip(ctx.weights, ctx.scalings, grad_outputs)):
            lora_a, lora_b = adapters[2 * index], adapters[2 * index + 1]
            if grad is None:  # an output the loss does not depend on
                grad_adapters += [None, None]
                continue
            grad = grad.to(x.dtype)
            grad_b_scaled = (grad @ lora_b).mul_(scaling)  # [tokens, r]: scaling applied on the small side
            grad_adapters.append((grad_b_scaled.t() @ x).to(lora_a.dtype))
            grad_adapters.append((grad.t() @ (x @ lora_a.t()).mul_(scaling)).to(lora_b.dtype))
            if ctx.needs_input_grad[0]:
                base = _dequantize(weight, x.dtype)
                if grad_x is None:
                    grad_x = torch.mm(grad, base)
                else:
                    grad_x.addmm_(grad, base)
                del base
                grad_x.addmm_(grad_b_scaled, lora_a)
        return (grad_x, None, None, None, *grad_adapters)


def _dequantize(weight, dtype: torch.dtype) -> torch.Tensor:
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.dequantize_4bit(weight, weight.quant_state).to(dtype)


def fused_projections(layers, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The outputs of fusable LoRA layers for one input `x` [..., in_features], computed by one autograd call."""
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    flat = x.reshape(-1, x.shape[-1]).to(dtype)
    weights, biases, scalings, adapters = [], [], [], []
    for layer in layers:
        name = layer.active_adapters[0]
        base = layer.get_base_layer()
        weights.append(base.weight)
        biases.append(base.bias)
        scalings.append(float(layer.scaling[name]))
        adapters += [layer.lora_A[name].weight.to(dtype), layer.lora_B[name].weight.to(dtype)]
    with torch.autocast(x.device.type, enabled=False):  # every operand is already in the compute dtype
        outputs = _SharedInputLoRA.apply(flat, tuple(weights), tuple(biases), tuple(scalings), *adapters)
    return tuple(out.view(*x.shape[:-1], out.shape[-1]) for out in outputs)


def _runs_fused(layer) -> bool:
    """Run-time conditions PEFT can change after patching (merge, disable_adapter(), set_adapter)."""
    from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

    base = layer.get_base_layer()
    fix_4bit_weight_quant_state_from_module(base)
    return (
        not layer.disable_adapters
        and not layer.merged
        and layer.active_adapters == [layer._fused_adapter]
        # bitsandbytes repacks CPU weights for inference; its own forward reads that format
        and not getattr(base.weight.quant_state, "packing_format_for_cpu", False)
    )


def _lora_forward(self, x, *args, **kwargs):
    """Replacement forward of one fused LoRA layer: a shared call's precomputed output, else its own fused call."""
    pending, self._fused_pending = self._fused_pending, None
    if pending is not None and pending[0] is x:
        return pending[1]
    if args or kwargs or not _runs_fused(self):
        return self._peft_forward(x, *args, **kwargs)
    return fused_projections([self], x)[0]


def _shared_input_forward(self, hidden_states, *args, **kwargs):
    """Attention/MLP forward whose q/k/v (or gate/up) answer their call on `hidden_states` from one shared call."""
    group = self._fused_group
    if all(_runs_fused(layer) for layer in group):
        for layer, out in zip(group, fused_projections(group, hidden_states)):
            layer._fused_pending = (hidden_states, out)
    try:  # try/finally rather than a context manager: torch.compile cannot break a graph inside the latter
        return self._unfused_forward(hidden_states, *args, **kwargs)
    finally:
        for layer in group:  # a forward that never asked (another code path) leaves nothing stale behind
            layer._fused_pending = None


def fuse_lora(model: torch.nn.Module) -> dict[str, int]:
    """Patch every fusable LoRA layer of `model` in place; returns counts of fused projections and shared groups.

    Each layer's forward becomes the fused one (falling back to PEFT's at run time when it no longer applies), and
    each attention/MLP module whose q/k/v or gate/up are all fusable precomputes them in one shared call.
    """
    layers = 0
    for module in model.modules():
        if fusable(module) and not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward
            module._fused_adapter = module.active_adapters[0]
            module._fused_pending = None
            module.forward = types.MethodType(_lora_forward, module)
            layers += 1
    groups = 0
    for module in model.modules():
        for names in SHARED_INPUT_GROUPS:
            group = [getattr(module, name, None) for name in names]
            if hasattr(module, "_fused_group") or not all(hasattr(layer, "_peft_forward") for layer in group):
                continue
            module._fused_group = group
            module._unfused_forward = module.forward
            module.forward = types.MethodType(_shared_input_forward, module)
            groups += 1
    return {"projections": layers, "shared_input_groups": groups}


def compile_decoder_layers(model: torch.nn.Module) -> int:
    """torch.compile each decoder layer in place (regional compilation, as torchtune does); returns how many.

    `dynamic=True`: padding-free rows change length every step, and static shapes would recompile each time.
    """
    count = 0
    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            module.compile(dynamic=True)
            count += 1
    return count
