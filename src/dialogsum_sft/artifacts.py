"""The training output directory: resuming from complete checkpoints, and a final save that is all or nothing.

A run is finished when `run_results.json` is in the output directory (its own name: Trainer's train_results.json
has another layout). Everything the run saves is first written to a hidden staging folder and moved into place
with `run_results.json` last, so a crash never leaves a directory that looks finished.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import yaml

from .adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS  # noqa: F401  (artifacts.ADAPTER_CONFIG in tests)
from .errors import Interrupted, RecipeError, TrainingError, check_output_path, signal_name
from .runinfo import run_info


logger = logging.getLogger(__name__)


FINISHED_MARKER = "run_results.json"
STAGING_DIR = ".incomplete"
LOCK_FILE = ".lock"


def is_finished_run(output_dir: str) -> bool:
    return os.path.isfile(os.path.join(output_dir, FINISHED_MARKER))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint-N whose trainer state was fully written (the Trainer writes it last)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        prefix, _, step = name.partition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and step.isdigit():
            steps.append(int(step))
    for step in sorted(steps, reverse=True):
        checkpoint = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        try:
            with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as handle:
                json.load(handle)
        except (OSError, ValueError):
            continue  # killed while this checkpoint was being written
        if os.path.isfile(os.path.join(checkpoint, ADAPTER_WEIGHTS)):
            return checkpoint
    return None


def check_output_dir(output_dir: str) -> None:
    if is_finished_run(output_dir):
        raise RecipeError(
            f"{output_dir} already holds a finished run ({FINISHED_MARKER}); pass another --output_dir or delete it"
        )


@contextmanager
def hold_output_dir(output_dir: str) -> Iterator[None]:
    """Create `output_dir` and hold an exclusive lock on it for one training run.

    Creating it first makes an output location that cannot be written fail in a second, before any data or weights
    load; the lock makes a second run into the same directory fail at once instead of deleting the first one's
    staging folder mid-save. The kernel drops the lock when the process ends, however it ends (kill -9 included), so
    a stale lock file never blocks a rerun. A directory this call created and that holds nothing but the lock is
    removed again, so a run that failed early leaves nothing behind.
    """
    check_output_path(output_dir, "output_dir")
    created = not os.path.isdir(output_dir)
    handle = _lock(output_dir)
    try:
        check_output_dir(output_dir)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        if created and os.listdir(output_dir) == [LOCK_FILE]:
            os.unlink(os.path.join(output_dir, LOCK_FILE))  # while still held: a newcomer then locks a fresh file
            os.rmdir(output_dir)
        handle.close()


def _lock(output_dir: str):
    path = os.path.join(output_dir, LOCK_FILE)
    while True:
        try:
            os.makedirs(output_dir, exist_ok=True)
            handle = open(path, "a+", encoding="utf-8")
        except OSError as err:
            where = "is a file" if os.path.isfile(output_dir) else "cannot be created or written"
            reason = "" if err.errno == errno.EEXIST else f" ({err.strerror})"
            raise RecipeError(f"output_dir {output_dir} {where}{reason}: pass another --output_dir") from err
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RecipeError(f"output_dir {output_dir} is in use by another training run ({holder}): wait for it "
                              "to end, or pass another --output_dir") from None
        try:
            same_file = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            return handle
        handle.close()  # the holder removed the file (and maybe the folder) between our open and our lock: again


def train_resuming(trainer):
    """trainer.train(), resuming from the last complete checkpoint of an interrupted run; an interruption (SIGINT,
    SIGTERM) becomes one line that says how to resume."""
    output_dir = trainer.args.output_dir
    checkpoint = trainer.args.resume_from_checkpoint or last_complete_checkpoint(output_dir)
    if checkpoint:
        logger.info(f"resuming from {checkpoint}")
    try:
        return trainer.train(resume_from_checkpoint=checkpoint)
    except KeyboardInterrupt as interrupt:
        last = last_complete_checkpoint(output_dir)
        resume = f"rerun the same command to resume from {last}" if last else (
            "no checkpoint was complete yet, so a rerun of the same command starts over")
        raise Interrupted(f"training interrupted by {signal_name(interrupt)} at step {trainer.state.global_step}: "
                          f"{resume}", interrupt) from None


def check_trained(state) -> None:
    """Refuse to save a run as finished unless it made every optimizer step it planned (and at least one)."""
    if state.global_step == 0:
        raise TrainingError("training made no optimizer step (check num_train_epochs, max_steps and the number of "
                            "training rows): nothing was saved")
    if state.global_step < state.max_steps:
        raise TrainingError(f"training stopped at step {state.global_step} of {state.max_steps}; the run is not "
                            "saved as finished: rerun the same command to resume from its last checkpoint")


def verify_adapter(folder: str) -> int:
    """Fail if the saved adapter is empty (ZeRO-3 + PEFT can save zero-size tensors); return its tensor count."""
    from safetensors import safe_open

    path = os.path.join(folder, ADAPTER_WEIGHTS)
    with safe_open(path, framework="pt") as handle:
        names = list(handle.keys())
        empty = [name for name in names if 0 in handle.get_slice(name).get_shape()]
    if not names or empty:
        raise RuntimeError(f"{path} is incomplete: {len(names)} tensors, {len(empty)} empty ({empty[:3]})")
    return len(names)


def reset_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def move_staged_into_place(output_dir: str) -> None:
    """Move the staged files into output_dir, the finished marker last."""
    staged = os.path.join(output_dir, STAGING_DIR)
    names = sorted(os.listdir(staged), key=lambda name: name == FINISHED_MARKER)
    for name in names:
        target = os.path.join(output_dir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staged, name), target)
    os.rmdir(staged)


def save_run(trainer, tokenizer, *, recipe: dict, metrics: dict, data_reports: dict, base_model_hub_id: str) -> None:
    """Save adapter, tokenizer, stop tokens, trainer state, recipe and run_results.json; all or nothing.

    Every rank must call it: under ZeRO-3 saving gathers the adapter from all ranks.
    """
    from .model import stop_token_ids

    check_trained(trainer.state)
    output_dir = trainer.args.output_dir
    staging = os.path.join(output_dir, STAGING_DIR)
    if trainer.is_world_process_zero():
        reset_dir(staging)
    trainer.accelerator.wait_for_everyone()
    trainer.model.peft_config["default"].base_model_name_or_path = base_model_hub_id  # a local path is useless
    trainer.save_model(staging)
    if trainer.is_world_process_zero():
        verify_adapter(staging)
        generation_config = trainer.model.generation_config
        generation_config.eos_token_id = stop_token_ids(tokenizer, generation_config)
        generation_config.pad_token_id = tokenizer.pad_token_id
        generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        trainer.state.save_to_json(os.path.join(staging, "trainer_state.json"))
        with open(os.path.join(staging, "recipe.yaml"), "w", encoding="utf-8") as handle:
            yaml.safe_dump(recipe, handle, sort_keys=False)
        results = {"metrics": metrics, "data": data_reports, "base_model_hub_id": base_model_hub_id, **run_info()}
        with open(os.path.join(staging, FINISHED_MARKER), "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
        move_staged_into_place(output_dir)
    trainer.accelerator.wait_for_everyone()
