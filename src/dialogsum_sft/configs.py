"""Recipes: YAML files that fill dataclasses subclassing TRL's, with command-line overrides.

`scripts/sft.py recipes/x.yaml --learning_rate 1e-4` works like TRL's `--config recipes/x.yaml`, and a key
that no dataclass knows (in the YAML or on the command line) fails at once, naming the key.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

import trl

from . import preflight
from .data import DATASET_HUB_ID
from .distributed import check_recipe_for_launcher, let_peft_find_adapters_under_fsdp
from .errors import RecipeError, is_local_path
from .preflight import load_recipe_file


# Keys that must never be written to disk or printed.
SECRET_KEYS = ("hub_token",)


@dataclass
class ScriptArguments(trl.ScriptArguments):
    dataset_name: str | None = field(
        default=DATASET_HUB_ID,
        metadata={"help": "DialogSum as a Hub id, or a local directory holding {train,validation,test}.jsonl."},
    )
    dataset_test_split: str = field(default="validation", metadata={"help": "Split used for eval loss."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows (smoke tests, demos)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N eval rows."})
    named_speakers_fraction: float = field(
        default=0.0,
        metadata={"help": "Share of training rows whose #PersonN# tags become first names, in dialogue and summary "
                          "alike (chosen by seed and row id), so the model learns to use the names a chat gives."},
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Validate the recipe, print the configuration and data statistics, load no weights."},
    )
    require_gpu: bool = field(
        default=False, metadata={"help": "Fail early when no CUDA GPU is visible (recipes sized for a GPU)."}
    )


@dataclass
class ModelConfig(trl.ModelConfig):
    base_model_hub_id: str | None = field(
        default=None,
        metadata={
            "help": "Hub id written into the adapter as its base model when `model_name_or_path` is a local "
            "directory (a local path is useless to anyone who downloads the adapter)."
        },
    )


@dataclass
class SFTConfig(trl.SFTConfig):
    """TRL's SFTConfig, plus ROUGE of generated summaries at every evaluation (training_rouge.py)."""

    rouge_eval_samples: int = field(
        default=0,
        metadata={"help": "At every evaluation also summarize the first N eval-split dialogues and log "
                          "eval_rouge1/2/L/Lsum (usable as metric_for_best_model: eval_rouge2); 0: off."},
    )
    rouge_eval_max_new_tokens: int = field(
        default=128, metadata={"help": "max_new_tokens of those summaries (evaluate.py's default)."}
    )

    fused_lora: bool = field(
        default=False,
        metadata={
            "help": "Run each 4-bit LoRA projection as one fused autograd function (q/k/v and gate/up sharing one "
            "input) instead of PEFT's unfused path (src/dialogsum_sft/fused_lora.py). Needs load_in_4bit, "
            "lora_dropout 0, no DoRA; the adapter saved is the same standard PEFT adapter."
        },
    )
    compile_layers: bool = field(
        default=False,
        metadata={"help": "torch.compile each decoder layer (dynamic shapes) to cut per-kernel launch overhead."},
    )


DATACLASSES = (ScriptArguments, SFTConfig, ModelConfig)


class RecipeParser(trl.TrlParser):
    """TrlParser with a positional recipe path, typo suggestions, type checks and one-line errors."""

    def __init__(self):
        super().__init__(DATACLASSES)
        # For preflight's check of the raw recipe, next time, before the heavy imports.
        preflight.save_options({option: action.dest for action in self._actions for option in action.option_strings
                                if action.dest != "help"})

    def error(self, message):  # argparse calls this instead of raising; we want one line, not usage + exit
        raise RecipeError(message)

    def known_keys(self) -> list[str]:
        return [action.dest for action in self._actions if action.dest != "help"]

    def _unknown_key_error(self, key: str, where: str) -> RecipeError:
        return preflight.unknown_key_error(key, where, self.known_keys())

    def _check_types(self, config: dict[str, Any], path: str) -> None:
        actions = {action.dest: action for action in self._actions}
        for key, value in config.items():
            action = actions[key]
            if action.choices is not None and value not in action.choices:
                choices = ", ".join(map(str, action.choices))
                raise RecipeError(f"key '{key}' in {path} must be one of {choices}; got {value!r}")
            expected = action.type
            if expected not in (int, float) or value is None:
                continue
            # argparse converts string defaults (PyYAML reads `1e-4` as a string), but passes other YAML values
            # through unchecked, so a float where an int belongs would reach the trainer.
            try:
                ok = not isinstance(value, bool) and (
                    isinstance(value, str) and expected(value) is not None
                    or isinstance(value, int)
                    or (expected is float and isinstance(value, float))
                )
            except ValueError:
                ok = False
            if not ok:
                raise RecipeError(f"key '{key}' in {path} must be {expected.__name__}; got {value!r}")

    def parse(self, argv: list[str]) -> tuple[ScriptArguments, SFTConfig, ModelConfig, dict[str, Any]]:
        """Parse a recipe and overrides; the last item is the resolved recipe (see `resolved_recipe`)."""
        argv = list(argv)
        config: dict[str, Any] = {}
        config_args: list[str] = []
        if argv and not argv[0].startswith("-"):
            argv = ["--config", *argv]  # positional recipe: `sft.py recipes/x.yaml ...`
        if "--config" in argv:
            index = argv.index("--config")
            if index + 1 >= len(argv):
                raise RecipeError("--config needs a recipe path")
            path = argv.pop(index + 1)
            argv.pop(index)
            config_args = ["--config", path]
            # Read here first: TRL's parse_args_and_config gives no line for bad YAML and drops unknown keys silently.
            config = load_recipe_file(path)
            for key in config:
                if key not in self.known_keys() and key != "env":
                    raise self._unknown_key_error(key, f"in {path}")
            self._check_types({k: v for k, v in config.items() if k != "env"}, path)
        _, remaining = self.parse_known_args(argv)  # before the dataclasses' own checks can fail first
        if remaining:
            key = next((arg for arg in remaining if arg.startswith("--")), remaining[0])
            raise self._unknown_key_error(key.lstrip("-").split("=")[0], "on the command line")
        try:  # TRL sets the recipe's `env` (refusing one that is not a mapping), its defaults, then parses
            parsed = self.parse_args_and_config(args=[*config_args, *argv])
        except (TypeError, ValueError) as err:  # TRL's env check and the dataclasses' __post_init__ checks
            message = str(err).splitlines()[0]
            if "bf16/gpu" in message:
                message = "bf16: true needs a GPU with bf16 support; to train on the CPU pass --use_cpu true"
            raise RecipeError(message) from err
        script_args, training_args, model_args = parsed
        validate(script_args, training_args, model_args)
        dest_of = {option: action.dest for action in self._actions for option in action.option_strings}
        cli_keys = [dest_of[arg.split("=")[0]] for arg in argv if arg.split("=")[0] in dest_of]
        keys = list(dict.fromkeys([*(key for key in config if key != "env"), *cli_keys]))
        return script_args, training_args, model_args, resolved_recipe(keys, *parsed)


def validate(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> None:
    if not model_args.model_name_or_path:
        raise RecipeError("model_name_or_path is not set: name a Hub id or a local model directory")
    if not model_args.use_peft:
        raise RecipeError("this project trains LoRA adapters: set use_peft: true")
    if training_args.push_to_hub:
        raise RecipeError(
            "training does not push: run scripts/evaluate.py --push_to_hub after training "
            "(it evaluates first and writes the model card)"
        )
    if training_args.assistant_only_loss:
        raise RecipeError(
            "assistant_only_loss needs {% generation %} markers most chat templates lack; the data is "
            "prompt/completion, so the loss already covers only the summary (leave assistant_only_loss unset)"
        )
    if not 0 <= script_args.named_speakers_fraction <= 1:
        raise RecipeError("named_speakers_fraction must be between 0 and 1; "
                          f"got {script_args.named_speakers_fraction}")
    if training_args.rouge_eval_samples < 0:
        raise RecipeError(f"rouge_eval_samples must be 0 (off) or more; got {training_args.rouge_eval_samples}")
    if training_args.rouge_eval_samples and training_args.eval_strategy == "no":
        raise RecipeError("rouge_eval_samples runs at each evaluation: set eval_strategy (steps or epoch)")
    best = (training_args.metric_for_best_model or "").removeprefix("eval_")
    if best.startswith("rouge") and not training_args.rouge_eval_samples:
        raise RecipeError(f"metric_for_best_model {training_args.metric_for_best_model} needs rouge_eval_samples "
                          "> 0 (the dialogues summarized at each evaluation)")
    if training_args.fused_lora:
        if not model_args.load_in_4bit:
            raise RecipeError("fused_lora: true fuses 4-bit LoRA projections: set load_in_4bit: true")
        if model_args.lora_dropout or model_args.use_dora:
            raise RecipeError("fused_lora: true needs lora_dropout: 0 and use_dora: false "
                              f"(got lora_dropout {model_args.lora_dropout}, use_dora {model_args.use_dora})")
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(script_args, name)
        if value is not None and value < 1:
            raise RecipeError(f"{name} must be at least 1; got {value}")
    check_values(training_args, model_args)
    check_recipe_for_launcher(training_args, model_args)
    if training_args.resume_from_checkpoint:
        preflight.check_checkpoint(training_args.resume_from_checkpoint)


def check_values(training_args: SFTConfig, model_args: ModelConfig) -> None:
    preflight.check_values(lambda name: getattr(training_args if hasattr(training_args, name) else model_args, name))


# Attention implementations that keep padding-free / packed sequences apart: flash attention and this project's
# sdpa_varlen (attention.py) read the sequence boundaries (cu_seq_lens) the collator passes, and transformers builds
# a block-diagonal mask from position_ids for sdpa, eager and flex attention (tests/test_packing.py checks them).
PACKING_SAFE_ATTENTION = ("sdpa_varlen", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


def base_model_hub_id(model_args) -> str:
    """The Hub id to record as the adapter's base model (never a local path)."""
    if model_args.base_model_hub_id:
        if is_local_path(model_args.base_model_hub_id):
            raise RecipeError(f"base_model_hub_id must be a Hub id such as org/name; got {model_args.base_model_hub_id}")
        return model_args.base_model_hub_id
    if is_local_path(model_args.model_name_or_path):
        raise RecipeError(
            f"model_name_or_path is a local path ({model_args.model_name_or_path}): set base_model_hub_id to the "
            "Hub id of that model so the adapter names a base its users can download"
        )
    return model_args.model_name_or_path


def check_attention_for_packing(training_args, model_args) -> None:
    packs = training_args.packing or training_args.padding_free
    implementation = model_args.attn_implementation or "sdpa"
    if packs and implementation not in PACKING_SAFE_ATTENTION:
        raise RecipeError(
            f"packing/padding_free with attn_implementation={implementation} would let packed examples attend to "
            f"each other; use one of {', '.join(PACKING_SAFE_ATTENTION)} or turn packing off"
        )


def check_gpu(require_gpu: bool) -> None:
    import torch

    if require_gpu and not torch.cuda.is_available():
        raise RecipeError(
            "this recipe needs a CUDA GPU (require_gpu: true) and none is visible; on CPU use "
            "recipes/smollm2-135m.yaml, or pass --require_gpu false to try anyway"
        )


def check_liger(use_liger_kernel: bool) -> None:
    """An environment check like check_gpu (a GPU recipe still parses on a CPU machine): Liger needs Triton."""
    if not use_liger_kernel:
        return
    try:
        import liger_kernel.transformers  # noqa: F401  (needs Triton, hence a CUDA machine)
    except ImportError as err:
        raise RecipeError(f"use_liger_kernel: true needs liger-kernel and Triton (pip install '.[gpu]' on a "
                          f"CUDA machine): {err}") from err


def prepare_trainer_args(training_args: SFTConfig, model_args: ModelConfig) -> None:
    """What TRL's SFTTrainer needs beyond the recipe: the model's load kwargs, a max_length it can enforce."""
    if training_args.padding_free and not training_args.packing:
        # data.prepare_for_training already dropped every example longer than max_length; TRL refuses a max_length
        # it cannot enforce without packing, so it gets none.
        training_args.max_length = None
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    if training_args.distributed_state.distributed_type != "NO":
        # TRL clears device_map only for DDP and DeepSpeed; under FSDP its "auto" would spread each rank's 4-bit
        # model over every GPU. None lets bitsandbytes place it on the rank's own device.
        training_args.model_init_kwargs["device_map"] = None
    if training_args.distributed_state.distributed_type == "FSDP":
        let_peft_find_adapters_under_fsdp()  # else every save under FSDP1 writes an empty adapter


def resolved_recipe(keys: list[str], *configs) -> dict[str, Any]:
    """The recipe as it ran: every key the YAML or command line set, with its parsed value, secrets removed."""
    values = {}
    for key in keys:
        if key in SECRET_KEYS:
            continue
        owner = next(config for config in configs if hasattr(config, key))
        values[key] = _plain(getattr(owner, key))
    return values


def _plain(value: Any) -> Any:
    """YAML-safe form of a config value (enums, dtypes and dataclasses become strings or dicts)."""
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    return str(value)


def parse_recipe(argv: list[str]) -> tuple[ScriptArguments, SFTConfig, ModelConfig, dict[str, Any]]:
    return RecipeParser().parse(argv)
