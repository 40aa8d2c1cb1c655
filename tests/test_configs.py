import os

import pytest
import yaml

from dialogsum_sft.configs import parse_recipe
from dialogsum_sft.errors import RecipeError
from helpers import ROOT, error_lines, run_script


SMOLLM2_RECIPE = os.path.join(ROOT, "recipes", "smollm2-135m.yaml")
LLAMA_RECIPE = os.path.join(ROOT, "recipes", "dialogsum.yaml")


def write_recipe(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_positional_recipe_and_command_line_override():
    script_args, training_args, model_args, recipe = parse_recipe(
        [SMOLLM2_RECIPE, "--learning_rate", "1e-4", "--use_cpu", "true"]
    )
    assert training_args.learning_rate == 1e-4
    assert model_args.load_in_4bit and model_args.bnb_4bit_quant_type == "nf4"
    assert model_args.dtype == "bfloat16" and model_args.bnb_4bit_quant_storage == "bfloat16"
    assert recipe["learning_rate"] == 1e-4 and recipe["lora_target_modules"] == "all-linear"
    assert script_args.dataset_name == "../shared/data/dialogsum"


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-4` as a string; it must still parse as a learning rate.
    path = write_recipe(tmp_path, "model_name_or_path: org/model\nuse_peft: true\nlearning_rate: 1e-4\nuse_cpu: true\n")
    assert parse_recipe([path])[1].learning_rate == 1e-4


def test_config_flag_is_equivalent_to_positional():
    positional = parse_recipe([SMOLLM2_RECIPE, "--use_cpu", "true"])[3]
    flagged = parse_recipe(["--config", SMOLLM2_RECIPE, "--use_cpu", "true"])[3]
    assert positional == flagged


def test_llama_recipe_is_a_careful_qlora_setup():
    script_args, training_args, model_args, _ = parse_recipe([LLAMA_RECIPE, "--use_cpu", "true"])
    assert model_args.model_name_or_path == "meta-llama/Llama-3.2-3B-Instruct"
    assert script_args.dataset_name == "knkarthick/dialogsum"
    assert model_args.load_in_4bit and model_args.use_bnb_nested_quant and model_args.lora_target_modules == "all-linear"
    assert model_args.dtype == "bfloat16" and script_args.require_gpu
    assert not training_args.assistant_only_loss


@pytest.mark.parametrize(
    "text, message",
    [
        ("lerning_rate: 1.0e-4\n", "unknown key 'lerning_rate' in .* \\(did you mean 'learning_rate'\\?\\)"),
        ("learning_rate: fast\n", "key 'learning_rate' in .* must be float; got 'fast'"),
        ("lora_r: 1.5\n", "key 'lora_r' in .* must be int; got 1.5"),
        ("lr_scheduler_type: sometimes\n", "lr_scheduler_type"),
        ("learning_rate: [1\n", "is not valid YAML \\(line 4, column 1\\)"),
        ("env:\n  - A=1\n", "^env in .* must be a mapping of environment variable names to values$"),
    ],
)
def test_bad_recipes_fail_naming_the_problem(tmp_path, text, message):
    path = write_recipe(tmp_path, "model_name_or_path: org/model\nuse_peft: true\n" + text)
    with pytest.raises(RecipeError, match=message):
        parse_recipe([path])


def test_recipe_must_be_a_mapping(tmp_path):
    with pytest.raises(RecipeError, match="must be a YAML mapping"):
        parse_recipe([write_recipe(tmp_path, "- a list\n")])


def test_unknown_command_line_key_fails(tmp_path):
    with pytest.raises(RecipeError, match="unknown key 'lora_alpah' on the command line \\(did you mean 'lora_alpha'\\?\\)"):
        parse_recipe([SMOLLM2_RECIPE, "--lora_alpah", "8"])


def test_missing_recipe_file():
    with pytest.raises(RecipeError, match="recipe file not found: nope.yaml"):
        parse_recipe(["nope.yaml"])


def test_training_never_pushes_and_always_trains_an_adapter(tmp_path):
    with pytest.raises(RecipeError, match="evaluate.py --push_to_hub"):
        parse_recipe([SMOLLM2_RECIPE, "--push_to_hub", "true", "--use_cpu", "true"])
    path = write_recipe(tmp_path, "model_name_or_path: org/model\nuse_cpu: true\n")
    with pytest.raises(RecipeError, match="use_peft: true"):
        parse_recipe([path])


def test_resolved_recipe_never_holds_the_token():
    recipe = parse_recipe([SMOLLM2_RECIPE, "--hub_token", "hf_secret_value", "--use_cpu", "true"])[3]
    assert "hf_secret_value" not in yaml.safe_dump(recipe)


def test_remote_code_is_off_unless_the_recipe_says_so(tmp_path):
    for shipped in (SMOLLM2_RECIPE, LLAMA_RECIPE):
        _, training_args, _, recipe = parse_recipe([shipped, "--use_cpu", "true"])
        assert training_args.trust_remote_code is False and recipe.get("trust_remote_code", False) is False
    path = write_recipe(tmp_path, "model_name_or_path: org/model\nuse_peft: true\nuse_cpu: true\n")
    assert parse_recipe([path])[1].trust_remote_code is False
    path = write_recipe(tmp_path, "model_name_or_path: org/model\nuse_peft: true\nuse_cpu: true\ntrust_remote_code: true\n")
    _, training_args, _, recipe = parse_recipe([path])
    assert training_args.trust_remote_code is True and recipe["trust_remote_code"] is True


def test_cli_errors_are_one_line_and_leave_no_output(tmp_path):
    out = tmp_path / "out"
    result = run_script("sft.py", SMOLLM2_RECIPE, "--lerning_rate", "1e-4", "--output_dir", out)
    assert result.returncode == 2
    assert error_lines(result) == [
        "error: unknown key 'lerning_rate' on the command line (did you mean 'learning_rate'?)"
    ]
    assert "Traceback" not in result.stderr
    assert not out.exists()
