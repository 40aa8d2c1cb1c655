#!/usr/bin/env python
"""QLoRA supervised fine-tuning on DialogSum with TRL's SFTTrainer.

    accelerate launch scripts/sft.py recipes/dialogsum.yaml [--key value ...]
    python scripts/sft.py recipes/smollm2-135m.yaml --dry_run
"""

import contextlib
import json
import logging
import os
import sys

import yaml

from dialogsum_sft.data import format_report, load_dialogsum, prepare_training_splits
from dialogsum_sft.errors import UnreachableError, check_model_dir, check_model_source, explain_load_error, run_cli
from dialogsum_sft.logs import setup_logging
from dialogsum_sft.preflight import check_recipe_argv


logger = logging.getLogger("sft")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    check_recipe_argv(argv)  # a bad recipe fails here, in well under a second, before torch and TRL load
    from dialogsum_sft import artifacts
    from dialogsum_sft.configs import parse_recipe

    script_args, training_args, model_args, recipe = parse_recipe(argv)
    setup_logging(training_args)
    if training_args.hub_token:
        # The Trainer pickles its arguments into training_args.bin (output dir and every checkpoint). Training never
        # pushes, so the token only authenticates downloads: hand it to huggingface_hub through the environment.
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None
    # One run per output dir; rank 0 holds it for the whole job (the launcher ends the other ranks if it refuses).
    writes = not script_args.dry_run and training_args.process_index == 0
    with artifacts.hold_output_dir(training_args.output_dir) if writes else contextlib.nullcontext():
        train(script_args, training_args, model_args, recipe)


def train(script_args, training_args, model_args, recipe):
    from trl import get_peft_config, get_quantization_config

    from dialogsum_sft import artifacts
    from dialogsum_sft.attention import register_varlen_attention
    from dialogsum_sft.configs import (
        base_model_hub_id,
        check_attention_for_packing,
        check_gpu,
        check_liger,
        prepare_trainer_args,
    )
    from dialogsum_sft.model import load_tokenizer
    from dialogsum_sft.trainer import QLoRASFTTrainer
    from dialogsum_sft.training_rouge import TrainingRouge

    ###################
    # 1. Checks that need no weights
    ###################
    check_model_source(model_args.model_name_or_path)
    check_model_dir(model_args.model_name_or_path)
    hub_id = base_model_hub_id(model_args)
    check_attention_for_packing(training_args, model_args)
    if not script_args.dry_run:
        check_gpu(script_args.require_gpu)
        check_liger(training_args.use_liger_kernel)
    notes = []

    ###################
    # 2. Data and tokenizer
    ###################
    splits = [script_args.dataset_train_split]
    if training_args.eval_strategy != "no":
        splits.append(script_args.dataset_test_split)
    try:
        dataset = load_dialogsum(script_args.dataset_name, tuple(splits))
        tokenizer = load_tokenizer(model_args.model_name_or_path, model_args.model_revision,
                                   training_args.trust_remote_code)
    except UnreachableError as err:
        if not script_args.dry_run:
            raise
        notes.append(f"note: {err}")
        dataset = tokenizer = None
    reports, rouge_rows = {}, None
    if dataset is not None and tokenizer is not None:
        reports, rouge_rows = prepare_training_splits(dataset, tokenizer, script_args, training_args)

    if script_args.dry_run:
        print(yaml.safe_dump({"recipe": recipe, "base_model_hub_id": hub_id}, sort_keys=False).rstrip())
        for split, report in reports.items():
            print(format_report(split, report, training_args.max_length))
        print("\n".join(notes) or "dry run: recipe, data and tokenizer are valid; no weights were loaded")
        return
    for split, report in reports.items():
        logger.info(format_report(split, report, training_args.max_length))

    ###################
    # 3. Model and trainer (TRL loads the 4-bit base and wraps it with LoRA)
    ###################
    register_varlen_attention()  # `attn_implementation: sdpa_varlen` in a recipe
    prepare_trainer_args(training_args, model_args)
    try:
        trainer = QLoRASFTTrainer(
            model=model_args.model_name_or_path,
            args=training_args,
            train_dataset=dataset[script_args.dataset_train_split],
            eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
            processing_class=tokenizer,
            quantization_config=get_quantization_config(model_args),
            peft_config=get_peft_config(model_args),
        )
    except Exception as err:
        raise explain_load_error(err, model_args.model_name_or_path) from err
    if rouge_rows is not None:
        trainer.training_rouge = TrainingRouge.for_trainer(trainer, rouge_rows)

    ###################
    # 4. Train, resuming from the last complete checkpoint of an interrupted run (an interruption says how to resume)
    ###################
    train_result = artifacts.train_resuming(trainer)
    metrics = {**train_result.metrics, "train_samples": len(dataset[script_args.dataset_train_split])}
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())

    ###################
    # 5. Save adapter, tokenizer, stop tokens, recipe and metrics; all or nothing
    ###################
    artifacts.save_run(trainer, tokenizer, recipe=recipe, metrics=metrics, data_reports=reports, base_model_hub_id=hub_id)
    logger.info(f"adapter saved to {training_args.output_dir}: {json.dumps(metrics)}")
    trainer.end()


if __name__ == "__main__":
    run_cli(main)
