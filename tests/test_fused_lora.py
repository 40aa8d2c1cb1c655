"""The fused QLoRA path (src/dialogsum_sft/fused_lora.py) against PEFT's own, on tiny random 4-bit models.

The same tests run on CPU (bitsandbytes' CPU backend, fp32 compute: tight tolerances) and, where a GPU is visible,
on CUDA in bf16 as training runs it.
"""

import json
import logging
import os

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, Qwen2Config

from dialogsum_sft import fused_lora
from dialogsum_sft.attention import VARLEN_ATTENTION, register_varlen_attention
from dialogsum_sft.configs import check_liger, parse_recipe
from dialogsum_sft.errors import RecipeError
from helpers import sft_in_process


SHAPE = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=128)
CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))
DEVICES = ["cpu", CUDA]
# (dtype, tolerance on logits/loss, relative tolerance on gradients) per device. On CUDA both paths run in bf16 and
# differ by rounding alone, so their gradients are also held against a float32 run of PEFT's path (`exact`).
PRECISION = {"cpu": (torch.float32, 1e-5, 1e-4), "cuda": (torch.bfloat16, 3e-2, 5e-2)}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    dirs = {}
    for name, config_class, model_class in (("llama", LlamaConfig, LlamaForCausalLM),
                                            ("qwen2", Qwen2Config, Qwen2ForCausalLM)):
        torch.manual_seed(0)
        dirs[name] = str(tmp_path_factory.mktemp(name))
        model_class(config_class(**SHAPE)).save_pretrained(dirs[name])
    return dirs


def load_lora(path, device, dropout=0.0, use_dora=False, attn=VARLEN_ATTENTION, dtype=None):
    """A 4-bit NF4 model with a LoRA adapter whose B is random (PEFT's default B = 0 would hide its gradients)."""
    register_varlen_attention()
    dtype = dtype or PRECISION[device][0]
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization, dtype=dtype,
                                                 attn_implementation=attn, device_map={"": device})
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, use_dora=use_dora, target_modules="all-linear",
                      init_lora_weights=False)
    model = get_peft_model(model, lora)
    for name, param in model.named_parameters():
        if param.requires_grad:
            param.data = param.data.to(dtype)
    return model.train()


def refuse_peft_path(model):
    """Make PEFT's forward of every fused layer fail, so a test cannot pass by quietly falling back to it."""
    def refuse(*args, **kwargs):
        raise AssertionError("PEFT's unfused forward ran")

    for module in model.modules():
        if hasattr(module, "_peft_forward"):
            module._peft_forward = refuse


def batch(device, packed, vocab=SHAPE["vocab_size"]):
    """Padding-free rows as TRL's collator passes them (restarting position ids, optionally cu_seq_lens), or one
    plain batch."""
    generator = torch.Generator().manual_seed(2)
    if packed is None:
        ids = torch.randint(0, vocab, (2, 11), generator=generator)
        return {"input_ids": ids.to(device), "labels": ids.to(device)}
    lengths = [5, 9, 3]
    ids = torch.randint(0, vocab, (1, sum(lengths)), generator=generator)
    inputs = {"input_ids": ids, "labels": ids.clone(),
              "position_ids": torch.cat([torch.arange(n) for n in lengths])[None]}
    if packed == "cu_seq_lens":
        bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        inputs.update(cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=max(lengths),
                      max_length_k=max(lengths))
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in inputs.items()}


def forward_backward(model, inputs):
    output = model(**inputs)
    output.loss.backward()
    grads = {name: param.grad.float().clone() for name, param in model.named_parameters() if param.requires_grad}
    return output.logits.float().detach(), output.loss.float().detach(), grads


def assert_same(reference, fused, device, exact=None):
    """Fused equals PEFT's path; with `exact` (a float32 run), a bf16 gradient may instead be as close to it as PEFT's
    own bf16 gradient is (twice the distance, plus 1% of its scale): rounding, not a different gradient."""
    _, tolerance, grad_tolerance = PRECISION[device]
    (logits_a, loss_a, grads_a), (logits_b, loss_b, grads_b) = reference, fused
    torch.testing.assert_close(logits_b, logits_a, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(loss_b, loss_a, atol=tolerance, rtol=tolerance)
    assert grads_a.keys() == grads_b.keys()
    assert any("q_proj.lora_A" in name for name in grads_a) and any("down_proj.lora_B" in name for name in grads_a)
    for name in grads_a:
        scale = grads_a[name].abs().max().item()
        assert scale > 0, name
        if exact is not None:
            truth = exact[2][name]
            peft_error = (grads_a[name] - truth).abs().max().item()
            fused_error = (grads_b[name] - truth).abs().max().item()
            assert fused_error <= 2 * peft_error + 0.01 * scale, (name, fused_error, peft_error, scale)
            continue
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=grad_tolerance * scale, rtol=grad_tolerance,
                                   msg=lambda message: f"{name}: {message}")


def float32_run(device, make_model, inputs):
    """On CUDA, the float32 run of PEFT's path that bf16 gradients are held against (None on CPU: already fp32)."""
    return forward_backward(make_model(torch.float32), inputs) if device == "cuda" else None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("packed", [None, "position_ids", "cu_seq_lens"])
def test_fused_path_matches_peft(model_dirs, arch, packed, device):
    reference, model = load_lora(model_dirs[arch], device), load_lora(model_dirs[arch], device)
    counts = fused_lora.fuse_lora(model)
    # 7 projections per layer; q/k/v and gate/up of each layer share their input
    layers = SHAPE["num_hidden_layers"]
    assert counts == {"projections": 7 * layers, "shared_input_groups": 2 * layers}
    refuse_peft_path(model)
    inputs = batch(device, packed)
    exact = float32_run(device, lambda dtype: load_lora(model_dirs[arch], device, dtype=dtype), inputs)
    assert_same(forward_backward(reference, inputs), forward_backward(model, inputs), device, exact)


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fused_path_inside_liger_kernels_matches_liger_on_peft(model_dirs, arch, device, monkeypatch):
    """With use_liger_kernel the MLP forward is Liger's SwiGLU: the fused projections must run inside it."""
    from transformers.models.llama import modeling_llama
    from transformers.models.qwen2 import modeling_qwen2

    liger = pytest.importorskip("liger_kernel.transformers")
    for module in (modeling_llama, modeling_qwen2):  # Liger also patches these modules' globals: undo after the test
        for name, value in list(vars(module).items()):
            monkeypatch.setattr(module, name, value)

    def liger_model(dtype=None):
        model = load_lora(model_dirs[arch], device, dtype=dtype)
        # what the Trainer does for TRL's use_liger_kernel (TRL keeps its own LM-head loss)
        liger._apply_liger_kernel_to_instance(model=model.get_base_model(), fused_linear_cross_entropy=False)
        return model

    models = [liger_model(), liger_model()]
    fused_lora.fuse_lora(models[1])
    refuse_peft_path(models[1])
    assert models[1].get_base_model().model.layers[0].mlp._get_name().startswith("Liger")
    inputs = batch(device, "cu_seq_lens")
    exact = float32_run(device, liger_model, inputs)
    assert_same(forward_backward(models[0], inputs), forward_backward(models[1], inputs), device, exact)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reentrant", [False, True])
def test_fused_path_under_gradient_checkpointing(model_dirs, reentrant, device):
    models = []
    for fuse in (False, True):
        model = load_lora(model_dirs["llama"], device)
        model.enable_input_require_grads()  # what TRL does for k-bit models; reentrant checkpointing needs it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        if fuse:
            fused_lora.fuse_lora(model)
            refuse_peft_path(model)
        models.append(model)
    inputs = batch(device, "position_ids")
    assert_same(forward_backward(models[0], inputs), forward_backward(models[1], inputs), device)


def test_shared_call_computes_each_group_once(model_dirs, monkeypatch):
    model = load_lora(model_dirs["llama"], "cpu")
    fused_lora.fuse_lora(model)
    calls = []
    apply = fused_lora._SharedInputLoRA.apply
    monkeypatch.setattr(fused_lora._SharedInputLoRA, "apply", lambda *args: calls.append(len(args[1])) or apply(*args))
    model(**batch("cpu", "position_ids"))
    # per layer: q/k/v together, o alone, gate/up together, down alone
    assert calls == [3, 1, 2, 1] * SHAPE["num_hidden_layers"]


@pytest.mark.parametrize("options", [dict(dropout=0.1), dict(use_dora=True)])
def test_unsupported_adapters_keep_peft_path(model_dirs, options):
    model = load_lora(model_dirs["llama"], "cpu", **options)
    assert fused_lora.fuse_lora(model) == {"projections": 0, "shared_input_groups": 0}


def test_disabled_adapter_falls_back_to_the_base_model(model_dirs):
    reference, model = load_lora(model_dirs["llama"], "cpu"), load_lora(model_dirs["llama"], "cpu")
    fused_lora.fuse_lora(model)
    inputs = batch("cpu", None)
    with torch.no_grad(), reference.disable_adapter(), model.disable_adapter():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits)


def test_saved_adapter_is_a_standard_peft_adapter(model_dirs, tmp_path):
    reference, model = load_lora(model_dirs["llama"], "cpu"), load_lora(model_dirs["llama"], "cpu")
    fused_lora.fuse_lora(model)
    forward_backward(model, batch("cpu", "position_ids"))
    reference.save_pretrained(tmp_path / "peft")
    model.save_pretrained(tmp_path / "fused")
    saved = {name: load_file(tmp_path / name / "adapter_model.safetensors") for name in ("peft", "fused")}
    assert saved["fused"].keys() == saved["peft"].keys()
    with open(tmp_path / "fused" / "adapter_config.json") as handle:
        assert json.load(handle)["lora_dropout"] == 0.0
    base = AutoModelForCausalLM.from_pretrained(model_dirs["llama"], dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, tmp_path / "fused")
    for name, tensor in saved["fused"].items():
        assert torch.equal(loaded.state_dict()[name.replace(".weight", ".default.weight")], tensor), name


RECIPE = [os.path.join(os.path.dirname(__file__), "..", "recipes", "smollm2-135m.yaml"), "--use_cpu", "true"]


def test_recipe_checks():
    with pytest.raises(RecipeError, match="fused_lora: true needs lora_dropout: 0"):
        parse_recipe([*RECIPE, "--fused_lora", "true"])
    _, training_args, _, resolved = parse_recipe([*RECIPE, "--fused_lora", "true", "--lora_dropout", "0",
                                                  "--compile_layers", "true"])
    assert training_args.fused_lora and training_args.compile_layers and resolved["fused_lora"] is True
    with pytest.raises(RecipeError, match="set load_in_4bit: true"):
        parse_recipe([*RECIPE, "--fused_lora", "true", "--lora_dropout", "0", "--load_in_4bit", "false"])


def test_liger_check_names_the_missing_piece():
    assert parse_recipe([*RECIPE, "--use_liger_kernel", "true"])[1].use_liger_kernel  # parses anywhere
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        with pytest.raises(RecipeError, match="use_liger_kernel: true needs liger-kernel and Triton"):
            check_liger(True)
    else:
        check_liger(True)


def test_sft_script_trains_the_same_adapter_on_the_fused_path(tmp_path, capsys, caplog, tiny_model_dir,
                                                              small_data_dir):

    caplog.set_level(logging.INFO, logger="dialogsum_sft.trainer")
    runs = {}
    for fused in ("false", "true"):
        out = tmp_path / f"fused-{fused}"
        status, errors = sft_in_process(
            capsys, "--model_name_or_path", tiny_model_dir, "--base_model_hub_id", "org/tiny", "--dataset_name",
            small_data_dir, "--output_dir", out, "--max_train_samples", "8", "--max_steps", "2", "--logging_steps",
            "1", "--per_device_train_batch_size", "4", "--padding_free", "true", "--attn_implementation",
            "sdpa_varlen", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--bf16",
            "false", "--dtype", "float32", "--bnb_4bit_quant_storage", "float32", "--lora_dropout", "0",
            "--fused_lora", fused,
        )
        assert (status, errors) == (None, [])
        with open(out / "trainer_state.json") as handle:
            losses = [entry["loss"] for entry in json.load(handle)["log_history"] if "loss" in entry]
        runs[fused] = losses, load_file(out / "adapter_model.safetensors")
    assert "fused_lora: 14 LoRA projections fused, 4 shared-input groups" in caplog.text
    (losses, adapter), (fused_losses, fused_adapter) = runs["false"], runs["true"]
    assert len(losses) == 2
    torch.testing.assert_close(fused_losses, losses, rtol=1e-4, atol=1e-5)
    assert fused_adapter.keys() == adapter.keys()
    for name in adapter:
        # Adam moves each weight by ~lr per step whatever the gradient's size, so near-zero gradients may differ by that
        torch.testing.assert_close(fused_adapter[name], adapter[name], rtol=1e-3, atol=2e-4)
