"""Multi-GPU support: the accelerate configs as `accelerate launch` reads them, and a real 2-process DDP run on CPU."""

import glob
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys

import accelerate.utils.launch as accelerate_launch
import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env
from safetensors.torch import load_file

from dialogsum_sft import artifacts
from dialogsum_sft.configs import parse_recipe
from dialogsum_sft.distributed import launcher_engine
from dialogsum_sft.errors import RecipeError
from helpers import ROOT, error_lines, run_script


CONFIG_DIR = os.path.join(ROOT, "accelerate_configs")
EXPECTED_TYPES = {
    "single_gpu.yaml": DistributedType.NO,
    "ddp.yaml": DistributedType.MULTI_GPU,
    "zero2.yaml": DistributedType.DEEPSPEED,
    "zero3.yaml": DistributedType.DEEPSPEED,
    "fsdp_qlora.yaml": DistributedType.FSDP,
}
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml")))


def launcher_env(name: str) -> dict[str, str]:
    """The variables `accelerate launch --config_file <name>` sets for the training processes (the plugins read
    these), so a misspelt key, which the launcher silently ignores, shows up as a missing setting."""
    args = launch_command_parser().parse_args(
        ["--config_file", os.path.join(CONFIG_DIR, name), "--num_processes", "2", "train.py"]
    )
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
        env = prepare_deepspeed_cmd_env(args)[1]
    elif args.use_fsdp or args.multi_gpu:
        env = prepare_multi_gpu_env(args)
    else:
        env = prepare_simple_launcher_cmd_env(args)[1]
    return {key: value for key, value in env.items() if os.environ.get(key) != value}


def test_every_config_is_covered():
    assert sorted(os.listdir(CONFIG_DIR)) == sorted(EXPECTED_TYPES)


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPES))
def test_config_loads_with_accelerates_own_loader(name):
    config = load_config_from_file(os.path.join(CONFIG_DIR, name))  # rejects unknown top-level keys
    assert config.distributed_type == EXPECTED_TYPES[name]
    assert config.mixed_precision == "bf16" and not config.use_cpu


def test_single_gpu_shows_the_run_one_gpu(monkeypatch):
    # TRL's device_map="auto" for one process would otherwise spread the model over every visible GPU.
    # accelerate >= 1.16 exports the visible-devices variable of the accelerator it finds: pretend a CUDA machine.
    if hasattr(accelerate_launch, "get_torch_accelerator_backend"):
        monkeypatch.setattr(accelerate_launch, "get_torch_accelerator_backend",
                            lambda check_available=True: ("cuda", torch.cuda))
    assert launcher_env("single_gpu.yaml")["CUDA_VISIBLE_DEVICES"] == "0"


def test_zero2_is_stage_2_and_leaves_the_batch_to_the_recipe(monkeypatch):
    for key, value in launcher_env("zero2.yaml").items():
        monkeypatch.setenv(key, value)
    config = DeepSpeedPlugin().deepspeed_config  # builds without the deepspeed package
    assert config["zero_optimization"]["stage"] == 2
    assert config["gradient_accumulation_steps"] == "auto" and config["gradient_clipping"] == "auto"


def test_zero3_gathers_the_adapter_on_save(monkeypatch):
    env = launcher_env("zero3.yaml")
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = DeepSpeedPlugin().deepspeed_config
    assert "zero3_save_16bit_model" in load_config_from_file(os.path.join(CONFIG_DIR, "zero3.yaml")).deepspeed_config
    assert config["zero_optimization"]["stage"] == 3
    # Without it PEFT + ZeRO-3 saved an adapter of zero-size tensors (trl#4416, peft#2892).
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    # "auto": DeepSpeed takes these from the recipe instead of clashing with it.
    assert config["gradient_accumulation_steps"] == "auto" and config["gradient_clipping"] == "auto"


def test_fsdp_qlora_settings_reach_the_training_processes():
    # Spelled out in the file, not left to launcher defaults (which already differ for use_orig_params and may
    # move to FSDP2); a misspelt key would fall back to the default unnoticed.
    fsdp = load_config_from_file(os.path.join(CONFIG_DIR, "fsdp_qlora.yaml")).fsdp_config
    for key in ("fsdp_version", "fsdp_cpu_ram_efficient_loading", "fsdp_sync_module_states", "fsdp_use_orig_params",
                "fsdp_auto_wrap_policy", "fsdp_state_dict_type", "fsdp_offload_params"):
        assert key in fsdp
    env = launcher_env("fsdp_qlora.yaml")
    expected = {
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_VERSION": "1",  # FSDP2 mis-decodes packed 4-bit weights (bitsandbytes#1945, accelerate#3983)
        "FSDP_CPU_RAM_EFFICIENT_LOADING": "true",
        "FSDP_SYNC_MODULE_STATES": "true",  # required by the line above
        "FSDP_USE_ORIG_PARAMS": "false",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
        "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",  # save_model writes no adapter with a sharded state dict
        "FSDP_OFFLOAD_PARAMS": "false",
        "FSDP_ACTIVATION_CHECKPOINTING": "false",  # the recipe's gradient_checkpointing decides
        "ACCELERATE_MIXED_PRECISION": "bf16",
    }
    assert {key: env.get(key) for key in expected} == expected


@pytest.mark.parametrize("recipe", RECIPES, ids=os.path.basename)
def test_recipes_fit_sharded_qlora(recipe):
    with open(recipe, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    if config.get("load_in_4bit"):
        # FSDP and ZeRO-3 shard only float tensors, and one dtype per flat parameter.
        assert config.get("bnb_4bit_quant_storage") == config.get("dtype")
    # TRL picks use_reentrant per backend: False for DDP (trl#4782), True for PEFT under ZeRO-3.
    assert "use_reentrant" not in (config.get("gradient_checkpointing_kwargs") or {})


# Runs scripts/sft.py unchanged, with TRL's SFTTrainer subclassed to record, on every rank, the rows it trained on,
# the metrics of its evaluations and the adapter it ended with.
PROBE = '''
import json, os, runpy, sys

import torch
import trl
from peft import get_peft_model_state_dict
from safetensors.torch import save_file


class ProbedSFTTrainer(trl.SFTTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rows_seen = []
        self.evaluations = []

    def training_step(self, model, inputs, *args, **kwargs):
        self.rows_seen.append(inputs["input_ids"].sum(dim=1).tolist())  # one fingerprint per row
        return super().training_step(model, inputs, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        metrics = super().evaluate(*args, **kwargs)
        self.evaluations.append(metrics)
        return metrics

    def save_model(self, output_dir=None, _internal_call=False):
        if not _internal_call:
            path = os.path.join(os.environ["PROBE_DIR"], f"rank{self.accelerator.process_index}")
            state = get_peft_model_state_dict(self.model)
            save_file({name: tensor.detach().contiguous() for name, tensor in state.items()}, path + ".safetensors")
            with open(path + ".json", "w") as handle:
                json.dump({
                    "rows_seen": self.rows_seen,
                    "evaluations": self.evaluations,
                    "world_size": self.accelerator.num_processes,
                    "backend": torch.distributed.get_backend(),
                    "linear4bit": any(type(m).__name__ == "Linear4bit" for m in self.model.modules()),
                }, handle)
        super().save_model(output_dir, _internal_call)


trl.SFTTrainer = ProbedSFTTrainer
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''

PER_DEVICE_BATCH = 2
STEPS = 3
TRAIN_ROWS = 16


# ROUGE while training: 3 dialogues, so two ranks summarize unequal shares (2 and 1); evaluated at the last step.
ROUGE_ARGS = ["--eval_strategy", "steps", "--eval_steps", str(STEPS), "--max_eval_samples", "2",
              "--rouge_eval_samples", "3", "--rouge_eval_max_new_tokens", "8"]


def probed_sft_command(tmp_path, launcher_args, tiny_model_dir, small_data_dir, extra=()):
    """`accelerate launch` of scripts/sft.py, through PROBE, on the tiny model (ddp.yaml on CPU)."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE, encoding="utf-8")
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(CONFIG_DIR, "ddp.yaml"), *launcher_args,
        # Not --cpu, which picks accelerate's single-process launcher: torchrun starts the processes, and
        # use_cpu makes them join over gloo. No bf16 autocast on CPU.
        "--mixed_precision", "no",
        str(probe), os.path.join(ROOT, "scripts", "sft.py"), os.path.join(ROOT, "recipes", "smollm2-135m.yaml"),
        "--model_name_or_path", tiny_model_dir, "--base_model_hub_id", "org/tiny", "--dataset_name", small_data_dir,
        "--max_train_samples", str(TRAIN_ROWS), "--max_steps", str(STEPS),
        "--per_device_train_batch_size", str(PER_DEVICE_BATCH), "--gradient_accumulation_steps", "1",
        "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", *extra,
        "--use_cpu", "true", "--bf16", "false", "--output_dir", str(tmp_path / "out"),
        # As the multi-GPU recipes train, with use_reentrant left to TRL/transformers: reentrant checkpointing
        # under DDP fails with "Expected to mark a variable ready only once" (trl#4782).
        "--gradient_checkpointing", "true",
        # load_in_4bit stays on, as in the product: bitsandbytes' CPU backend runs the NF4 model under DDP.
    ]


def probe_env(tmp_path):
    return {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "HF_HUB_OFFLINE": "1", "PROBE_DIR": str(tmp_path)}


def check_ranks_trained_one_adapter(tmp_path, rouge_evaluations=0):
    """Both ranks saw their own rows, ended with equal adapters, and rank 0 published exactly that adapter."""
    output_dir = tmp_path / "out"
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for info in ranks:
        assert info["world_size"] == 2 and info["backend"] == "gloo" and info["linear4bit"]
        assert [len(step) for step in info["rows_seen"]] == [PER_DEVICE_BATCH] * STEPS
    # Each rank trained on its own rows, so equal weights below mean the gradients were all-reduced.
    rows = [{row for step in info["rows_seen"] for row in step} for info in ranks]
    assert len(rows[0]) == len(rows[1]) == PER_DEVICE_BATCH * STEPS and not rows[0] & rows[1]

    adapters = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1)]
    assert adapters[0].keys() == adapters[1].keys()
    assert [name for name in adapters[0] if not torch.equal(adapters[0][name], adapters[1][name])] == []

    # The published adapter is complete, is what the ranks trained, and moved off its init (LoRA B starts at 0).
    assert artifacts.verify_adapter(str(output_dir)) == len(adapters[0])
    saved = load_file(output_dir / artifacts.ADAPTER_WEIGHTS)
    assert saved.keys() == adapters[0].keys()
    assert [name for name in saved if not torch.equal(saved[name], adapters[0][name])] == []
    lora_b = [tensor for name, tensor in saved.items() if "lora_B" in name]
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b)

    # Every evaluation (with ROUGE_ARGS: at the last step, then sft.py's final one) scored ROUGE identically on
    # both ranks.
    rouge = [[{k: v for k, v in metrics.items() if k.startswith("eval_rouge")} for metrics in info["evaluations"]]
             for info in ranks]
    assert len(rouge[0]) == rouge_evaluations and all(len(metrics) == 5 for metrics in rouge[0])
    assert rouge[0] == rouge[1]

    # Epochs count the global batch: 2 processes x 2 rows x 3 steps = 12 of 16 rows (one process would give 0.375).
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    assert state["epoch"] == pytest.approx(2 * PER_DEVICE_BATCH * STEPS / TRAIN_ROWS)
    assert artifacts.is_finished_run(str(output_dir))
    assert json.loads((output_dir / artifacts.ADAPTER_CONFIG).read_text())["base_model_name_or_path"] == "org/tiny"


def test_two_process_ddp_run_stays_in_sync_and_saves_a_complete_adapter(tmp_path, tiny_model_dir, small_data_dir):
    command = probed_sft_command(tmp_path, ["--num_processes", "2", "--main_process_port", "0"], tiny_model_dir,
                                 small_data_dir, extra=ROUGE_ARGS)
    result = subprocess.run(command, cwd=ROOT, env=probe_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    check_ranks_trained_one_adapter(tmp_path, rouge_evaluations=2)


def free_local_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_machines_on_localhost_train_one_adapter(tmp_path, tiny_model_dir, small_data_dir):
    # What scripts/slurm/sft.slurm runs on each node: one launcher per machine, joined by c10d rendezvous. Both
    # "machines" share the output directory, as cluster nodes share a filesystem.
    port = free_local_port()
    launchers = [
        subprocess.Popen(
            probed_sft_command(tmp_path, [
                "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--rdzv_backend", "c10d",
                "--max_restarts", "0",
            ], tiny_model_dir, small_data_dir),
            cwd=ROOT, env=probe_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]
    try:
        errors = [launcher.communicate(timeout=240)[1] for launcher in launchers]
    finally:
        for launcher in launchers:
            launcher.kill()  # no-op for one that finished; a hung rendezvous must not outlive the test
    assert [launcher.returncode for launcher in launchers] == [0, 0], [err[-3000:] for err in errors]
    check_ranks_trained_one_adapter(tmp_path)


# FSDP1 over gloo, as the Trainer saves under fsdp_qlora.yaml: PEFT's wrap policy, use_orig_params false, a
# FULL_STATE_DICT gathered on rank 0, then PeftModel.save_pretrained(state_dict=...). accelerate refuses FSDP
# without a GPU, so this drives FSDP directly (offload_to_cpu is off: the tensors already live on the CPU).
FSDP_SAVE = '''
import os, sys

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from peft.utils.other import fsdp_auto_wrap_policy
from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel as FSDP, StateDictType
from transformers import AutoModelForCausalLM

from dialogsum_sft.distributed import let_peft_find_adapters_under_fsdp

model_dir, out = sys.argv[1:3]
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                            LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
model = FSDP(peft_model, auto_wrap_policy=fsdp_auto_wrap_policy(peft_model), use_orig_params=False,
             device_id=torch.device("cpu"))
optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
torch.manual_seed(1 + rank)  # each rank its own batch: the gradients are reduced across ranks
ids = torch.randint(0, 1000, (2, 16))
model(input_ids=ids, labels=ids).loss.backward()
optimizer.step()

with FSDP.summon_full_params(model, writeback=False):  # the adapter as the ranks hold it after the step
    trained = {name: param.detach().clone() for name, param in model.named_parameters() if "lora_" in name}
with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=True)):
    state_dict = model.state_dict()
if rank == 0:
    torch.save(trained, os.path.join(out, "trained.pt"))
    peft_model.save_pretrained(os.path.join(out, "peft_alone"), state_dict=state_dict)
    let_peft_find_adapters_under_fsdp()
    peft_model.save_pretrained(os.path.join(out, "fixed"), state_dict=state_dict)
dist.barrier()
dist.destroy_process_group()
'''


def test_fsdp1_full_state_dict_saves_the_trained_adapter(tmp_path, tiny_model_dir):
    script = tmp_path / "fsdp_save.py"
    script.write_text(FSDP_SAVE, encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), tiny_model_dir, str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]

    # The bug as PEFT 0.21 has it: nested FSDP1 wrappers hide every adapter key (the GPU run's empty adapter).
    # When this fails PEFT has fixed it, and distributed.let_peft_find_adapters_under_fsdp can go.
    assert len(load_file(tmp_path / "peft_alone" / artifacts.ADAPTER_WEIGHTS)) == 0

    trained = torch.load(tmp_path / "trained.pt")
    saved = load_file(tmp_path / "fixed" / artifacts.ADAPTER_WEIGHTS)
    assert artifacts.verify_adapter(str(tmp_path / "fixed")) == len(trained) > 0
    assert {name.replace(".default.", ".") for name in trained} == set(saved)
    assert [name for name in trained if not torch.equal(trained[name], saved[name.replace(".default.", ".")])] == []
    lora_b = [tensor for name, tensor in saved.items() if "lora_B" in name]
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b)  # trained: LoRA B starts at zero


CPU_RECIPE = os.path.join(ROOT, "recipes", "smollm2-135m.yaml")
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}
ZERO3_ENV = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}


def parse_under(monkeypatch, env, *argv, deepspeed_installed=True):
    """parse_recipe as `accelerate launch` would run it (its variables in env). `make install` installs DeepSpeed,
    so only its absence is pretended."""
    if not deepspeed_installed:
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *args: None if name == "deepspeed" else find_spec(name, *args))
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "WORLD_SIZE", *FSDP_ENV, *ZERO3_ENV):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return parse_recipe([CPU_RECIPE, "--use_cpu", "true", *argv])


@pytest.mark.parametrize("env", [{}, FSDP_ENV, ZERO3_ENV, {"ACCELERATE_USE_DEEPSPEED": "true"}],
                         ids=["one-process", "fsdp", "zero3", "zero2"])
def test_shipped_recipe_passes_every_engine(monkeypatch, env):
    parse_under(monkeypatch, env)


@pytest.mark.parametrize("env, argv, words", [
    (FSDP_ENV, ["--bnb_4bit_quant_storage", "uint8"], "FSDP shards 4-bit weights only"),
    (ZERO3_ENV, ["--bnb_4bit_quant_storage", "uint8"], "DeepSpeed ZeRO-3 shards 4-bit weights only"),
    ({**FSDP_ENV, "FSDP_VERSION": "2"}, [], "FSDP2 (fsdp_version: 2) mis-decodes"),
    ({**FSDP_ENV, "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT"}, [], "only for FULL_STATE_DICT"),
    (FSDP_ENV, ["--fused_lora", "true", "--lora_dropout", "0"], "which FSDP shards: pass --fused_lora false"),
    (ZERO3_ENV, ["--fused_lora", "true", "--lora_dropout", "0"], "which ZeRO-3 shards: pass --fused_lora false"),
], ids=["fsdp-uint8", "zero3-uint8", "fsdp2-4bit", "fsdp-sharded-save", "fsdp-fused", "zero3-fused"])
def test_bad_engine_combinations_fail_in_the_recipe_check(monkeypatch, env, argv, words):
    with pytest.raises(RecipeError, match=re.escape(words)):
        parse_under(monkeypatch, env, *argv)


def test_uint8_storage_is_fine_where_nothing_shards_the_weights(monkeypatch):
    parse_under(monkeypatch, {"ACCELERATE_USE_DEEPSPEED": "true"}, "--bnb_4bit_quant_storage", "uint8")
    parse_under(monkeypatch, {**FSDP_ENV, "FSDP_VERSION": "2"}, "--load_in_4bit", "false")


def test_deepspeed_configs_need_deepspeed_installed(monkeypatch):
    with pytest.raises(RecipeError, match=re.escape('DeepSpeed, which is not installed: pip install -e ".[deepspeed]"')):
        parse_under(monkeypatch, ZERO3_ENV, deepspeed_installed=False)


def test_torchrun_without_an_engine_is_ddp(monkeypatch):
    # Not through parse_recipe: with WORLD_SIZE set, the Trainer's arguments join the process group as they parse.
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launcher_engine() == "ddp"


def test_device_map_under_a_launcher_fails_before_any_weights_load(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    with open(CPU_RECIPE, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    recipe.write_text(yaml.safe_dump({**config, "model_init_kwargs": {"device_map": "auto"}}), encoding="utf-8")
    result = run_script("sft.py", recipe, "--use_cpu", "true", "--output_dir", tmp_path / "out", env=FSDP_ENV)
    assert result.returncode == 2
    assert error_lines(result) == [
        "error: model_init_kwargs.device_map ('auto') cannot be used under a distributed launch (fsdp): each "
        "process places its own copy; remove device_map from the recipe"
    ]
    assert not (tmp_path / "out").exists()
