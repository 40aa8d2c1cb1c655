"""Pushing an evaluated adapter to the Hub: check it is publishable, stage exactly what the repo gets, push.

No adapter is pushed without the evaluation of exactly its weights (eval_results.json, checked by sha256): the
card's scores are those of what users download.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from . import embedded
from .adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_json, read_recipe
from .card import EvalMetrics, build_model_card
from .errors import HubError, UserError, as_hub_error, is_local_path
from .evaluation import RESULTS, adapter_sha256, write_plots
from .hub import push_folder


logger = logging.getLogger(__name__)

STAGING_DIR = "hub"  # inside the evaluation's output dir
# What a published adapter repo holds from the training output dir; checkpoints, TensorBoard runs and the pickled
# training_args.bin stay local.
ADAPTER_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG)
OPTIONAL_FILES = (
    "generation_config.json", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt", "recipe.yaml",
    "run_results.json",
)  # fmt: skip


def hub_repo_id(hub_model_id: str | None, recipe: dict) -> str:
    """The full `namespace/name` to push to; also checks the login before any long evaluation."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import get_token

    name = hub_model_id or recipe.get("hub_model_id")
    if not name:
        raise UserError("--push_to_hub needs --hub_model_id (or hub_model_id in the recipe)")
    if get_token() is None:
        raise HubError("not logged in to the Hub: set HF_TOKEN or run `hf auth login` with a write token")
    try:
        user = HfApi().whoami()["name"]
    except Exception as err:
        hub_error = as_hub_error(err, name, endpoint=constants.ENDPOINT)
        if hub_error is None:
            raise
        raise hub_error from err
    return name if "/" in name else f"{user}/{name}"


def check_publishable(adapter_dir: Path) -> str:
    """The adapter's base model Hub id; refuses a local path, which nobody downloading the adapter could load."""
    hub_id = read_json(adapter_dir / ADAPTER_CONFIG).get("base_model_name_or_path") or ""
    if not hub_id or is_local_path(hub_id) or "\\" in hub_id:
        raise UserError(
            f"{adapter_dir / ADAPTER_CONFIG} names base model {hub_id!r}, not a Hub id: retrain with "
            "base_model_hub_id set, or set base_model_name_or_path to the base's Hub id (org/name)"
        )
    for name in ADAPTER_FILES:
        if not (adapter_dir / name).is_file():
            raise UserError(f"{adapter_dir} has no {name}: nothing to publish")
    return hub_id


def load_results(adapter_dir: Path, output_dir: Path) -> EvalMetrics:
    """The evaluation of exactly these adapter weights, or a one-line refusal: no adapter is pushed without one."""
    results = output_dir / RESULTS
    if not results.is_file():
        raise UserError(
            f"no {RESULTS} in {output_dir}: evaluate the adapter first (a quick run: --max_samples 50), or point "
            "--output_dir at its evaluation"
        )
    metrics = read_json(results)
    if metrics.get("adapter_sha256") != adapter_sha256(adapter_dir):
        raise UserError(f"{results} was computed for other adapter weights than {adapter_dir}: evaluate it again")
    return metrics


def stage_for_hub(adapter_dir: Path, output_dir: Path, metrics: EvalMetrics, staging: Path, repo_id: str) -> None:
    """Fill `staging` with exactly what the Hub repo gets: adapter, tokenizer, recipe, metrics, plots, card."""
    from huggingface_hub.utils import get_token

    base_hub_id = check_publishable(adapter_dir)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ADAPTER_FILES + OPTIONAL_FILES:
        if (adapter_dir / name).is_file():
            shutil.copy2(adapter_dir / name, staging / name)
    shutil.copy2(output_dir / RESULTS, staging / RESULTS)
    plots = write_plots(metrics, adapter_dir, staging)
    recipe = read_recipe(adapter_dir)
    # The embedded models are dequantized GGUFs, not the Hub's weights: say so wherever one is the base.
    try:
        card = build_model_card(
            repo_id=repo_id, base_model_hub_id=base_hub_id, metrics=metrics, recipe=recipe, plots=plots,
            base_model_note=embedded.provenance_note(base_hub_id, recipe.get("model_name_or_path")),
        )
    except ValueError as err:
        raise UserError(f"cannot write the model card from {output_dir / RESULTS}: {err}") from err
    card.save(staging / "README.md")
    token = get_token()
    for path in staging.iterdir():
        if token and token.encode() in path.read_bytes():
            raise UserError(f"{path.name} holds your Hub token; remove it before pushing")


def push_adapter(adapter_dir: Path, output_dir: Path, repo_id: str, *, private: bool = False) -> str:
    """Stage the evaluated adapter in `output_dir`/hub with its card and push it in one commit; the commit URL."""
    metrics = load_results(adapter_dir, output_dir)
    if metrics.get("max_samples"):
        logger.warning(f"the card's scores cover only the first {metrics['num_dialogues']} {metrics['split']} "
                       "dialogues (--max_samples); evaluate the whole split for scores comparable with papers")
    staging = output_dir / STAGING_DIR
    stage_for_hub(adapter_dir, output_dir, metrics, staging, repo_id)
    rouge_l = metrics["tuned"]["mean_over_references"]["rougeL"]
    url = push_folder(staging, repo_id, private=private,
                      commit_message=f"Upload DialogSum QLoRA adapter (ROUGE-L {rouge_l:.2f})")
    return url
