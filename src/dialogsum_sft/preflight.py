"""Recipe checks that need neither torch nor TRL: scripts/sft.py runs them before its heavy imports.

Importing TRL's dataclasses (torch, transformers, PEFT, bitsandbytes) takes 8 s of CPU; a misspelt key or a batch
size of 0 should not wait for it. The recipe file, `env`, the values `check_values` bounds, and (once any full parse
has listed them) the known option names are checked here from the raw YAML and command line. The full parser in
configs.py repeats every check on the parsed values, so nothing depends on this pass having run.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from importlib import metadata
from typing import Any, Callable

import yaml

from .errors import RecipeError


# The system prompt, instruction and chat template alone take 60-90 tokens: a shorter max_length drops every row.
MIN_MAX_LENGTH = 64
# Values TRL and the Trainer reject only once the model has loaded (or accept, and train nothing or nonsense).
AT_LEAST = {
    "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1, "gradient_accumulation_steps": 1,
    "lora_r": 1, "max_length": MIN_MAX_LENGTH, "warmup_steps": 0, "weight_decay": 0, "max_grad_norm": 0,
    "dataloader_num_workers": 0, "save_total_limit": 1,
}
ABOVE_ZERO = ("learning_rate", "lora_alpha")
STEP_INTERVALS = (("save_steps", "save_strategy"), ("eval_steps", "eval_strategy"),
                  ("logging_steps", "logging_strategy"))
BOUNDED = (*AT_LEAST, *ABOVE_ZERO, "lora_dropout", "num_train_epochs", "max_steps", *dict(STEP_INTERVALS))
# TrainingArguments' defaults for the values the checks combine (a recipe that leaves one out gets these).
DEFAULTS = {"max_steps": -1, "num_train_epochs": 3.0, "save_strategy": "steps", "eval_strategy": "no",
            "logging_strategy": "steps", "dry_run": False}


def check_values(value_of: Callable[[str], Any]) -> None:
    """Bounds on recipe values; `value_of(name)` is the value, or None where it is not known (then not checked)."""
    for name, minimum in AT_LEAST.items():
        value = value_of(name)
        if value is not None and value < minimum:
            raise RecipeError(f"{name} must be at least {minimum}; got {value}")
    for name in ABOVE_ZERO:
        value = value_of(name)
        if value is not None and value <= 0:
            raise RecipeError(f"{name} must be above 0; got {value}")
    dropout = value_of("lora_dropout")
    if dropout is not None and not 0 <= dropout < 1:
        raise RecipeError(f"lora_dropout must be in [0, 1); got {dropout}")
    epochs, max_steps = value_of("num_train_epochs"), value_of("max_steps")
    if epochs is not None and max_steps is not None and max_steps <= 0 and epochs <= 0:
        raise RecipeError(f"num_train_epochs must be above 0 when max_steps is not set; got {epochs}: the run "
                          "would make no optimizer step")
    for name, strategy in STEP_INTERVALS:
        value = value_of(name)
        if value is not None and value <= 0 and str(value_of(strategy)).rsplit(".", 1)[-1].lower() == "steps":
            raise RecipeError(f"{name} must be above 0 with {strategy}: steps; got {value}")


def load_recipe_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise RecipeError(f"recipe file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{path} is not valid YAML{where}: {problem}") from err
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path} is not UTF-8 text: {err.reason} at byte {err.start}") from err
    if not isinstance(config, dict):
        raise RecipeError(f"{path} must be a YAML mapping of keys to values")
    env = config.get("env", {})
    if not isinstance(env, dict) or any(isinstance(value, (dict, list)) for value in env.values()):
        raise RecipeError(f"env in {path} must be a mapping of environment variable names to values")
    return config


def unknown_key_error(key: str, where: str, known: list[str]) -> RecipeError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return RecipeError(f"unknown key '{key}' {where}{hint}")


# The options the full parser knows, saved by it for this exact set of library versions and dataclasses.
def _options_cache() -> str:
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs.py")
    with open(source, "rb") as handle:
        digest = hashlib.sha256(handle.read())
    for package in ("trl", "transformers"):
        digest.update(f"{package}=={metadata.version(package)}".encode())
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "dialogsum_sft", f"recipe-options-{digest.hexdigest()[:16]}.json")


def save_options(options: dict[str, str]) -> None:
    """Called by the full parser: every option string and its key (best effort: only a cache)."""
    path = _options_cache()
    if os.path.isfile(path):
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump({"options": options}, handle)
        os.replace(temporary, path)
    except OSError:
        pass


def _saved_options() -> dict | None:
    try:
        with open(_options_cache(), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def check_recipe_argv(argv: list[str]) -> None:
    """What can be refused from the raw recipe and command line alone (see the module docstring)."""
    argv = list(argv)
    config: dict[str, Any] = {}
    if argv and not argv[0].startswith("-"):
        path = argv.pop(0)
    elif "--config" in argv and argv.index("--config") + 1 < len(argv):
        path = argv.pop(argv.index("--config") + 1)
        argv.remove("--config")
    else:
        path = None
    if path is not None:
        config = load_recipe_file(path)
    saved = _saved_options()
    command_line = _command_line_values(argv)
    if saved is not None:
        keys = sorted(set(saved["options"].values()))
        for key in config:
            if key not in keys and key != "env":
                raise unknown_key_error(key, f"in {path}", keys)
        command_line.pop("--help", None)  # the full parser prints the help
        for option in command_line:
            if option not in saved["options"]:
                raise unknown_key_error(option.lstrip("-"), "on the command line", keys)
        command_line = {saved["options"][option]: value for option, value in command_line.items()}
    values = {**DEFAULTS, **config, **{option.lstrip("-"): value for option, value in command_line.items()}}
    check_values(lambda name: _number(values.get(name)) if name in BOUNDED else values.get(name))
    check_paths(values)


def check_paths(values: dict[str, Any]) -> None:
    """The local model, data, checkpoint and output locations the recipe names (Hub ids are left to the loaders)."""
    from .data import check_dataset_source, check_local_splits
    from .errors import check_model_dir, check_model_source, check_output_path

    model = values.get("model_name_or_path")
    if isinstance(model, str) and model:
        check_model_source(model)
        check_model_dir(model)
    dataset = values.get("dataset_name")
    if isinstance(dataset, str) and dataset:
        check_dataset_source(dataset)
    if isinstance(dataset, str) and os.path.isdir(dataset):
        splits = [values.get("dataset_train_split") or "train"]
        if str(values.get("eval_strategy")).lower() != "no":
            splits.append(values.get("dataset_test_split") or "validation")
        check_local_splits(dataset, splits)
    checkpoint = values.get("resume_from_checkpoint")
    if isinstance(checkpoint, str) and checkpoint:
        check_checkpoint(checkpoint)
    dry_run = str(values.get("dry_run", False)).lower() not in ("false", "0", "no")
    if not dry_run and isinstance(values.get("output_dir"), str):
        check_output_path(values["output_dir"], "output_dir")


def check_checkpoint(checkpoint: str) -> None:
    if not os.path.isfile(os.path.join(checkpoint, "trainer_state.json")):
        raise RecipeError(f"resume_from_checkpoint {checkpoint} is not a complete checkpoint (no trainer_state.json); "
                          "leave it unset: a rerun resumes from the last complete checkpoint in output_dir by itself")


def _number(value):
    """Command-line strings and YAML's `1e-4` as numbers; None for what does not convert (the parser's to report)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    return None


def _command_line_values(argv: list[str]) -> dict[str, str | None]:
    """`--key value` / `--key=value` pairs (a flag followed by another option gets None)."""
    values: dict[str, str | None] = {}
    for index, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        option, equals, value = arg.partition("=")
        if not equals:
            following = argv[index + 1] if index + 1 < len(argv) else None
            value = None if following is None or following.startswith("--") else following
        values[option] = value
    return values
