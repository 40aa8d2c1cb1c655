"""DialogSum loading, validation and formatting.

This module owns every string that reaches the model: training, evaluation and inference all build their
prompts with `build_prompt`, so the three can never drift apart.
"""

from __future__ import annotations

import json
import os
import re

from .errors import DataError, explain_load_error, looks_like_path


DATASET_HUB_ID = "knkarthick/dialogsum"
SPLITS = ("train", "validation", "test")
REQUIRED_COLUMNS = ("id", "dialogue", "summary")
TEXT_COLUMNS = ("dialogue", "summary")

SYSTEM_PROMPT = "You are a helpful assistant that writes short, faithful summaries of dialogues."
# "As the dialogue names them": a DialogSum tag (#Person1#) or a name ("Anna: ..."); training rows with names
# (`named_speakers_fraction`, speakers.py) teach the model both, so it does not invent tags for named chats.
INSTRUCTION = (
    "Summarize the following dialogue in one to three sentences. "
    "Refer to the speakers as the dialogue names them."
)
# Llama 3.x templates stamp "Today Date" into the system turn; pinning it keeps tokens identical across days.
# Templates that do not use the variable ignore it.
CHAT_TEMPLATE_KWARGS = {"date_string": "26 Jul 2024"}


def build_prompt(dialogue: str) -> list[dict[str, str]]:
    """The conversational prompt (system + user turn) for one dialogue."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{INSTRUCTION}\n\n{dialogue.strip()}"},
    ]


def build_completion(summary: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": summary.strip()}]


def to_prompt_completion(row: dict) -> dict:
    """One DialogSum row as TRL conversational prompt/completion data (loss on the completion only)."""
    return {
        "prompt": build_prompt(row["dialogue"]),
        "completion": build_completion(row["summary"]),
        "chat_template_kwargs": CHAT_TEMPLATE_KWARGS,
    }


def render_prompt(tokenizer, dialogue: str) -> str:
    """The exact text the model sees before it writes a summary (generation prompt included)."""
    return tokenizer.apply_chat_template(
        build_prompt(dialogue), tokenize=False, add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS
    )


def load_dialogsum(name_or_dir: str, splits: tuple[str, ...] = SPLITS, token: str | None = None):
    """DialogSum as a DatasetDict, from a local directory of `<split>.jsonl` files or from the Hub."""
    from datasets import Dataset, DatasetDict

    if os.path.isdir(name_or_dir):
        # Read here, not by datasets' JSON builder: every bad line is reported with its file and number.
        dataset = {split: Dataset.from_list(rows) for split, rows in check_local_splits(name_or_dir, splits).items()}
    else:
        check_dataset_source(name_or_dir)
        dataset = _load_from_hub(name_or_dir, splits, token)
    dataset = DatasetDict({split: dataset[split] for split in splits})
    for split, rows in dataset.items():
        validate_rows(rows, split)
    return dataset


def check_dataset_source(name: str) -> None:
    if not os.path.isdir(name) and looks_like_path(name):  # Hub ids are `name` or `org/name`
        raise DataError(f"dataset directory not found: {name}")


def check_local_splits(folder: str, splits) -> dict[str, list[dict]]:
    """The rows of `<split>.jsonl` in `folder` for each split, every line checked (stdlib only: runs in preflight)."""
    files = {split: os.path.join(folder, f"{split}.jsonl") for split in splits}
    missing = [path for path in files.values() if not os.path.isfile(path)]
    if missing:
        raise DataError(f"{folder} has no {', '.join(os.path.basename(p) for p in missing)}")
    return {split: read_jsonl_rows(path, TEXT_COLUMNS, REQUIRED_COLUMNS) for split, path in files.items()}


def _load_from_hub(dataset_id: str, splits: tuple[str, ...], token: str | None):
    from datasets import load_dataset

    try:
        dataset = load_dataset(dataset_id, token=token)
    except Exception as err:
        raise explain_load_error(err, dataset_id, what="dataset", error_type=DataError) from err
    missing = [split for split in splits if split not in dataset]
    if missing:
        raise DataError(f"dataset {dataset_id} has no split(s) {', '.join(missing)}")
    return dataset


def validate_rows(rows, split: str) -> None:
    """Fail on data the trainer would otherwise learn nonsense from: missing columns, empty texts, no rows."""
    missing = [column for column in REQUIRED_COLUMNS if column not in rows.column_names]
    if missing:
        raise DataError(
            f"{split} split lacks column(s) {', '.join(missing)} (has {', '.join(rows.column_names)}); "
            f"DialogSum rows need {', '.join(REQUIRED_COLUMNS)}"
        )
    if len(rows) == 0:
        raise DataError(f"{split} split is empty")
    for column in ("dialogue", "summary"):
        for index, text in enumerate(rows[column]):
            if not isinstance(text, str) or not text.strip():
                row_id = rows[index]["id"]
                raise DataError(f"{split} row {index} (id {row_id}) has an empty {column}; fix or remove that row")


def read_dialogues(handle, where: str) -> list[str]:
    """Plain-text dialogues: one turn per line, blank lines between dialogues."""
    dialogues = [block.strip() for block in re.split(r"\n\s*\n", handle.read())]
    dialogues = [block for block in dialogues if block]
    if not dialogues:
        raise DataError(f"no dialogue in {where}: write one turn per line, a blank line between dialogues")
    return dialogues


def read_dialogue_rows(path: str) -> list[dict]:
    """JSON-lines rows, each with a non-empty `dialogue` string."""
    return read_jsonl_rows(path, ("dialogue",))


def read_jsonl_rows(path: str, texts: tuple[str, ...], fields: tuple[str, ...] = ()) -> list[dict]:
    """The rows of a JSON-lines file, each a JSON object with a non-empty string under every key in `texts` and a
    value under every key in `fields`; any other line fails naming the file, the line number and what is wrong.
    """
    rows = []
    try:
        with open(path, "rb") as handle:
            lines = handle.read().split(b"\n")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from err
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise DataError(f"{where} is not UTF-8 ({err.reason} at byte {err.start}); re-save the file as UTF-8") \
                from None
        except ValueError as err:
            cut = " (the file ends inside it: was the file cut short?)" if number == len(lines) else ""
            raise DataError(f"{where} is not valid JSON: {err.msg} at column {err.colno}{cut}") from None
        if not isinstance(row, dict):
            raise DataError(f"{where} is a JSON {type(row).__name__}, not an object with {', '.join(texts)}")
        for key in fields:
            if key not in row:
                raise DataError(f"{where} has no `{key}`")
        for key in texts:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(f"{where} has no `{key}` text (a non-empty string); fix or remove that row")
        rows.append(row)
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows


def unique_dialogues(rows) -> list[dict]:
    """Group rows that share a dialogue (DialogSum test: 3 reference summaries each), keeping first-seen order.

    Rows are grouped by dialogue id (`test_12_1`, `test_12_2` -> `test_12`), falling back to the text itself.
    """
    groups: dict[str, dict] = {}
    for row in rows:
        match = re.fullmatch(r"(.+)_\d+", row["id"]) if row["id"].startswith("test_") else None
        key = match.group(1) if match else row["dialogue"]
        group = groups.setdefault(key, {"id": key if match else row["id"], "dialogue": row["dialogue"], "references": []})
        group["references"].append(row["summary"])
    return list(groups.values())


def token_lengths(rows, tokenizer) -> tuple[list[int], list[int]]:
    """Prompt and prompt+summary token counts of each row, as the chat template renders them for training."""
    prompts, full = [], []
    for row in rows:
        example = to_prompt_completion(row)
        prompts.append(
            tokenizer.apply_chat_template(
                example["prompt"], tokenize=False, add_generation_prompt=True, **CHAT_TEMPLATE_KWARGS
            )
        )
        full.append(
            tokenizer.apply_chat_template(
                example["prompt"] + example["completion"], tokenize=False, **CHAT_TEMPLATE_KWARGS
            )
        )
    encode = tokenizer(prompts + full, add_special_tokens=False)["input_ids"]  # the template already adds BOS
    lengths = [len(ids) for ids in encode]
    return lengths[: len(prompts)], lengths[len(prompts):]


def percentiles(values: list[int]) -> dict[str, int]:
    ordered = sorted(values)
    quantiles = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
    at = {name: ordered[min(len(ordered) - 1, int(q * len(ordered)))] for name, q in quantiles.items()}
    return {**at, "max": ordered[-1]}


def fit_to_max_length(rows, tokenizer, max_length: int | None, split: str) -> tuple[object, dict]:
    """Drop rows that `max_length` would cut, and say how many and why.

    TRL truncates over-long examples from the end, which would train on a summary cut mid-sentence (or, when the
    prompt alone is too long, on nothing at all); dropping them keeps every trained summary whole.
    """
    prompt_lengths, total_lengths = token_lengths(rows, tokenizer)
    report = {
        "rows": len(rows),
        "prompt_tokens": percentiles(prompt_lengths),
        "total_tokens": percentiles(total_lengths),
        "total_tokens_sum": sum(total_lengths),
        "dropped_prompt_too_long": 0,
        "dropped_summary_cut": 0,
    }
    if max_length is not None:
        keep = []
        for index, (prompt, total) in enumerate(zip(prompt_lengths, total_lengths)):
            if prompt >= max_length:
                report["dropped_prompt_too_long"] += 1
            elif total > max_length:
                report["dropped_summary_cut"] += 1
            else:
                keep.append(index)
        if not keep:
            raise DataError(
                f"every {split} row is longer than max_length={max_length} tokens; raise max_length "
                f"(prompt+summary p50 is {report['total_tokens']['p50']} tokens)"
            )
        if len(keep) < len(rows):
            rows = rows.select(keep)
    report["kept"] = len(rows)
    return rows, report


def prepare_for_training(dataset, tokenizer, limits: dict[str, int | None], max_length: int | None) -> dict:
    """Cut each split of `dataset` to its limit, drop over-long rows, turn it into prompt/completion rows (in place).

    Returns the data report of each split (`fit_to_max_length`), which the run saves with its results.
    """
    reports = {}
    for split in list(dataset):
        rows = dataset[split]
        if limits.get(split) is not None:
            rows = rows.select(range(min(limits[split], len(rows))))
        rows, reports[split] = fit_to_max_length(rows, tokenizer, max_length, split)
        dataset[split] = rows.map(to_prompt_completion, remove_columns=rows.column_names)
    return reports


def prepare_training_splits(dataset, tokenizer, script_args, training_args) -> tuple[dict, object]:
    """sft.py's data step: named speakers in a share of the training rows, the length fit and chat formatting of every
    split; returns the length reports and the eval split as loaded (for ROUGE while training; None when it is off)."""
    from .speakers import name_speakers_in_rows

    rouge_rows = dataset[script_args.dataset_test_split] if training_args.rouge_eval_samples else None
    train_split = script_args.dataset_train_split
    dataset[train_split] = name_speakers_in_rows(dataset[train_split], script_args.named_speakers_fraction,
                                                 training_args.seed)
    limits = {train_split: script_args.max_train_samples, script_args.dataset_test_split: script_args.max_eval_samples}
    return prepare_for_training(dataset, tokenizer, limits, training_args.max_length), rouge_rows


def format_report(split: str, report: dict, max_length: int | None) -> str:
    prompt, total = report["prompt_tokens"], report["total_tokens"]
    dropped = report["dropped_prompt_too_long"] + report["dropped_summary_cut"]
    line = (
        f"{split}: {report['rows']} rows; tokens prompt p50/p90/p99/max {prompt['p50']}/{prompt['p90']}/"
        f"{prompt['p99']}/{prompt['max']}, prompt+summary {total['p50']}/{total['p90']}/{total['p99']}/{total['max']}"
    )
    if max_length is not None:
        line += (
            f"; max_length={max_length} drops {dropped} ({100 * dropped / report['rows']:.2f}%): "
            f"{report['dropped_summary_cut']} whose summary would be cut, "
            f"{report['dropped_prompt_too_long']} whose prompt alone is too long"
        )
    return line
