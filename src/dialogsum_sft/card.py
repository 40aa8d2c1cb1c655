"""The model card (README.md) of a pushed adapter: Hub metadata, usage, recipe, evaluation, limitations.

`metrics` is the evaluation's result (`EvalMetrics`, eval_results.json). The card's model-index (the Hub's evaluation results) carries the fine-tuned mean-over-references scores, the
protocol comparable with published DialogSum results. `recipe` is the run's recipe dict (`recipe.yaml`); the
training table lists the settings it holds, so keys left at their TRL defaults do not appear.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypedDict

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .data import CHAT_TEMPLATE_KWARGS, DATASET_HUB_ID, INSTRUCTION, SYSTEM_PROMPT
from .errors import is_local_path
from .rouge import PROTOCOLS, ROUGE_NAMES, ROUGE_TYPES, check_scores
from .stats import format_stats


DATA_LICENSE = "cc-by-nc-sa-4.0"
TAGS = ["peft", "lora", "qlora", "trl", "sft", "summarization", "dialogsum"]
PROTOCOL_LABELS = {"mean_over_references": "mean over references", "best_of_references": "best of references"}


class ModelScores(TypedDict):
    """ROUGE F-measures x100 of one model (`rouge.score`), per protocol: {"rouge1": .., "rougeL": .., ...}."""

    mean_over_references: dict[str, float]
    best_of_references: dict[str, float]


class EvalMetrics(TypedDict, total=False):
    """eval_results.json; the card needs `tuned` and reads the other keys when present."""

    split: str  # "test" or "validation"
    num_dialogues: int
    num_pairs: int  # (dialogue, reference) pairs
    protocol: str  # rouge.PROTOCOL
    tuned: ModelScores
    base: ModelScores | None  # None when the base was not evaluated (--no_base)
    generation: dict  # settings used for both models: max_new_tokens, do_sample, ...
    timing: dict[str, dict]  # per model: seconds, dialogues_per_second, peak_gpu_memory_gib on GPU
    adapter: str
    adapter_revision: str | None
    adapter_sha256: str  # of adapter_model.safetensors: a push checks it evaluated these weights
    base_model_hub_id: str
    base_model: str
    dataset: str
    max_samples: int | None
    speakers: str  # "tags" (DialogSum's #PersonN#) or "named" (--named_speakers: tags replaced by first names)
    stats: dict[str, dict]  # per model: stats.generation_stats (empty, cut, invented speakers, length ratio)
    examples: list[dict]  # the split's first dialogues: id, dialogue, references, base, tuned


EXAMPLES = 3  # dialogues shown in the card


# Recipe keys shown in the training table, in this order, with their labels.
RECIPE_ROWS = (
    ("lora_r", "LoRA rank r"),
    ("lora_alpha", "LoRA alpha"),
    ("lora_dropout", "LoRA dropout"),
    ("lora_target_modules", "LoRA target modules"),
    ("use_rslora", "rank-stabilized LoRA"),
    ("use_dora", "DoRA"),
    ("load_in_4bit", "4-bit base (QLoRA)"),
    ("load_in_8bit", "8-bit base"),
    ("bnb_4bit_quant_type", "4-bit quant type"),
    ("use_bnb_nested_quant", "double quantization"),
    ("bnb_4bit_quant_storage", "quant storage dtype"),
    ("dtype", "compute dtype"),
    ("learning_rate", "learning rate"),
    ("lr_scheduler_type", "LR schedule"),
    ("warmup_ratio", "warmup ratio"),
    ("warmup_steps", "warmup steps (< 1: ratio)"),
    ("weight_decay", "weight decay"),
    ("max_grad_norm", "max grad norm"),
    ("optim", "optimizer"),
    ("num_train_epochs", "epochs"),
    ("max_steps", "max steps"),
    ("per_device_train_batch_size", "batch size per device"),
    ("gradient_accumulation_steps", "gradient accumulation steps"),
    ("max_length", "max length (tokens)"),
    ("packing", "packing"),
    ("padding_free", "padding-free batches"),
    ("max_train_samples", "training rows used"),
    ("gradient_checkpointing", "gradient checkpointing"),
    ("bf16", "bf16 mixed precision"),
    ("seed", "seed"),
)


def build_model_card(
    *,
    repo_id: str,
    base_model_hub_id: str,
    metrics: EvalMetrics,
    recipe: dict,
    plots: Sequence[str] = (),
    license: str = DATA_LICENSE,
    base_model_note: str | None = None,
) -> ModelCard:
    """The card of the adapter pushed to `repo_id`; `plots` are image paths relative to the repository root."""
    for name, value in (("repo_id", repo_id), ("base_model_hub_id", base_model_hub_id)):
        if not value or is_local_path(value) or "\\" in value:
            raise ValueError(f"{name} must be a Hub id such as org/name, not a local path; got {value!r}")
    for plot in plots:
        if plot.startswith(("/", "\\", "~")) or ".." in plot.replace("\\", "/").split("/"):
            raise ValueError(f"plot paths must be relative to the repository root; got {plot!r}")
    check_scores(metrics.get("tuned"), "metrics['tuned']")
    if metrics.get("base") is not None:
        check_scores(metrics["base"], "metrics['base']")

    data = ModelCardData(
        base_model=base_model_hub_id,
        library_name="peft",
        pipeline_tag="text-generation",
        datasets=[DATASET_HUB_ID],
        language="en",
        license=license,
        tags=TAGS,
        metrics=["rouge"],
        model_name=repo_id.split("/")[-1],
        eval_results=[
            EvalResult(
                task_type="summarization",
                task_name="Dialogue summarization",
                dataset_type=DATASET_HUB_ID,
                dataset_name="DialogSum",
                dataset_split=metrics.get("split", "test"),
                metric_type="rouge",
                metric_name=ROUGE_NAMES[rouge_type],
                metric_value=metrics["tuned"]["mean_over_references"][rouge_type],
            )
            for rouge_type in ROUGE_TYPES
        ],
    )
    sections = [
        _intro(repo_id, base_model_hub_id, recipe, base_model_note),
        _usage(repo_id, recipe),
        _training(base_model_hub_id, recipe),
        _evaluation(metrics, plots),
        _limitations(base_model_hub_id, license, base_model_note),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def usage_snippet(repo_id: str, recipe: dict | None = None) -> str:
    """Self-contained Python that loads the adapter and summarizes a dialogue with the training prompt.

    A QLoRA adapter is loaded onto the base quantized as in training: it learned against the NF4-rounded weights
    and scores 2-3 ROUGE lower on the original bf16 ones (docs/benchmarks.md).
    """
    recipe = recipe or {}
    if recipe.get("load_in_4bit"):
        # ModelConfig also accepts "auto" and None, which are no torch dtype; bf16 is what QLoRA computes in then.
        compute_dtype = recipe.get("dtype") if recipe.get("dtype") in ("bfloat16", "float16", "float32") else "bfloat16"
        quantization = (
            f"\n    load_in_4bit=True, bnb_4bit_quant_type={recipe.get('bnb_4bit_quant_type', 'nf4')!r}, "
            f"bnb_4bit_use_double_quant={bool(recipe.get('use_bnb_nested_quant'))},"
            f"\n    bnb_4bit_compute_dtype=torch.{compute_dtype},\n"
        )
        load = f'''import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer, BitsAndBytesConfig

repo_id = {repo_id!r}
# The base quantized exactly as in training: the adapter learned against these 4-bit weights.
quantization = BitsAndBytesConfig({quantization})
model = AutoPeftModelForCausalLM.from_pretrained(repo_id, quantization_config=quantization)'''
    else:
        load = f'''from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

repo_id = {repo_id!r}
model = AutoPeftModelForCausalLM.from_pretrained(repo_id)'''
    return load + f'''
tokenizer = AutoTokenizer.from_pretrained(repo_id)

# The prompt exactly as in training.
SYSTEM_PROMPT = {SYSTEM_PROMPT!r}
INSTRUCTION = {INSTRUCTION!r}
CHAT_TEMPLATE_KWARGS = {CHAT_TEMPLATE_KWARGS!r}  # pins the date some chat templates (Llama 3) stamp in

dialogue = """#Person1#: Are you coming to the picnic on Saturday?
#Person2#: I'd love to, but I work until noon. Can I join you after that?
#Person1#: Sure, we'll be at the lake until five."""
messages = [
    {{"role": "system", "content": SYSTEM_PROMPT}},
    {{"role": "user", "content": f"{{INSTRUCTION}}\\n\\n{{dialogue.strip()}}"}},
]
inputs = tokenizer.apply_chat_template(
    messages, add_generation_prompt=True, return_dict=True, return_tensors="pt", **CHAT_TEMPLATE_KWARGS
).to(model.device)
output = model.generate(**inputs, max_new_tokens=128, do_sample=False)  # greedy decoding
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
'''


def _intro(repo_id: str, base_model_hub_id: str, recipe: dict, base_model_note: str | None) -> str:
    method = "QLoRA (LoRA on a 4-bit quantized base model)" if recipe.get("load_in_4bit") else "LoRA"
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A LoRA adapter for [{base_model_hub_id}](https://huggingface.co/{base_model_hub_id}) that summarizes "
        f"English dialogues in one to three sentences. It was trained with {method} and TRL's "
        f"`SFTTrainer` on the train split of [DialogSum](https://huggingface.co/datasets/{DATASET_HUB_ID}).",
    ]
    if base_model_note:
        lines += ["", f"> **Base model note:** {_sentence(base_model_note)}"]
    return "\n".join(lines)


def _usage(repo_id: str, recipe: dict) -> str:
    needs = "`peft`, `transformers`, `bitsandbytes` and `torch`" if recipe.get("load_in_4bit") else \
        "`peft`, `transformers` and `torch`"
    return "\n".join([
        "## Usage",
        "",
        f"Needs {needs}; the base model is downloaded from the Hub.",
        "",
        "```python",
        usage_snippet(repo_id, recipe).rstrip(),
        "```",
    ])


def _training(base_model_hub_id: str, recipe: dict) -> str:
    rows = [("base model", f"`{base_model_hub_id}`")]
    rows += [(label, _format_value(recipe[key])) for key, label in RECIPE_ROWS if key in recipe]
    table = ["| setting | value |", "|---|---|", *(f"| {label} | {value} |" for label, value in rows)]
    return "\n".join([
        "## Training",
        "",
        f"Data: the train split of [`{DATASET_HUB_ID}`](https://huggingface.co/datasets/{DATASET_HUB_ID}) "
        "(dialogue and one reference summary per row), as conversational prompt/completion pairs: a system "
        "prompt, the instruction and the dialogue in the user turn, the summary as the assistant turn. The loss "
        "covers only the summary and its end-of-turn token. Rows that would not fit whole in the maximum length "
        "were dropped rather than truncated.",
        "",
        *table,
        "",
        "Settings not listed keep the TRL / transformers defaults.",
    ])


def _format_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{item}`" for item in value)
    if isinstance(value, str):
        return f"`{value}`"
    return str(value)


def rouge_table(metrics: EvalMetrics) -> list[str]:
    """The Markdown table of ROUGE scores: one row per metric, one column per model and protocol."""
    models = [("fine-tuned", metrics["tuned"])]
    if metrics.get("base") is not None:
        models.insert(0, ("base", metrics["base"]))
    columns = [(name, protocol) for protocol in PROTOCOLS for name, _ in models]
    header = "| metric | " + " | ".join(f"{name}, {PROTOCOL_LABELS[protocol]}" for name, protocol in columns) + " |"
    table = [header, "|---" * (len(columns) + 1) + "|"]
    scores = dict(models)
    for rouge_type in ROUGE_TYPES:
        values = " | ".join(f"{scores[name][protocol][rouge_type]:.2f}" for name, protocol in columns)
        table.append(f"| {ROUGE_NAMES[rouge_type]} | {values} |")
    return table


def stats_table(metrics: EvalMetrics) -> list[str]:
    """The Markdown table of generation stats (`stats.generation_stats`), one column per model; [] without stats."""
    stats = metrics.get("stats") or {}
    models = [(label, format_stats(stats[key])) for key, label in (("base", "base"), ("tuned", "fine-tuned"))
              if stats.get(key)]
    if not models:
        return []
    table = ["| generation | " + " | ".join(label for label, _ in models) + " |", "|---" * (len(models) + 1) + "|"]
    for name in models[0][1]:
        table.append(f"| {name} | " + " | ".join(shown[name] for _, shown in models) + " |")
    return table


def _examples(metrics: EvalMetrics) -> list[str]:
    examples = metrics.get("examples") or []
    if not examples:
        return []
    lines = ["", "### Examples", "", f"The first {len(examples)} dialogues of the {metrics.get('split', 'test')} "
             "split, not chosen by score."]
    for example in examples:
        lines += ["", f"**{example['id']}**", "", "```text", example["dialogue"].strip(), "```", ""]
        lines += [f"- reference: {_markdown_text(ref)}" for ref in example["references"]]
        if example.get("base") is not None:
            lines.append(f"- base: {_markdown_text(example['base'])}")
        lines.append(f"- fine-tuned: {_markdown_text(example['tuned'])}")
    return lines


def _markdown_text(text: str) -> str:
    """Model output as inert Markdown: no HTML, no emphasis or links, one line."""
    return re.sub(r"([\\`*_\[\]<>|])", r"\\\1", " ".join(text.split())) or "*(empty)*"


def _evaluation(metrics: EvalMetrics, plots: Sequence[str]) -> str:
    table = rouge_table(metrics)
    counts = ""
    if "num_dialogues" in metrics and "num_pairs" in metrics:
        counts = f" ({metrics['num_dialogues']} dialogues, {metrics['num_pairs']} dialogue-reference pairs)"
    lines = [
        "## Evaluation",
        "",
        f"ROUGE F-measures x100 on the DialogSum {metrics.get('split', 'test')} split{counts}. "
        "*Mean over references* scores every (dialogue, reference) pair on its own and averages over all pairs "
        "(the DialogSum paper's protocol, and the one in this card's model-index). *Best of references* takes, "
        "per dialogue, the best score over its references; it is never lower and not comparable with "
        "mean-over-references results.",
        "",
        *table,
    ]
    if metrics.get("base") is None:
        lines += ["", "The base model was not evaluated in this run."]
    if stats_table(metrics):
        lines += ["", "Generation stats: summaries that came out empty, that hit `max_new_tokens` without an "
                  "end-of-turn token (cut off), that name a speaker the dialogue does not have (an invented "
                  "`#PersonN#` tag or name), and their length relative to the references.", "",
                  *stats_table(metrics)]
    if metrics.get("protocol"):
        lines += ["", f"Protocol: {_sentence(metrics['protocol'])}"]
    if metrics.get("generation"):
        settings = ", ".join(f"`{key}={value}`" for key, value in metrics["generation"].items())
        lines += ["", f"Generation settings: {settings}."]
    for plot in plots:
        alt = plot.replace("\\", "/").split("/")[-1].rsplit(".", 1)[0].replace("_", " ").replace("-", " ")
        lines += ["", f"![{alt}]({plot})"]
    lines += _examples(metrics)
    return "\n".join(lines)


def _sentence(text: str) -> str:
    return text.strip().rstrip(".") + "."


def _limitations(base_model_hub_id: str, license: str, base_model_note: str | None) -> str:
    lines = [
        "## Limitations",
        "",
        "- Trained and evaluated only on DialogSum: short, English, everyday (chit-chat) dialogues whose speakers "
        "are tagged `#Person1#`, `#Person2#`, ... Other languages, domains (meetings, support chats, medical) and "
        "long transcripts are out of scope and untested.",
        "- Summaries can be unfaithful: they may swap speakers or state details the dialogue does not contain. "
        "ROUGE measures word overlap with the references, not factual accuracy.",
        f"- License: DialogSum is licensed CC BY-NC-SA 4.0 (non-commercial, share-alike); this adapter, trained on "
        f"it, is released under `{license}`. The base model "
        f"[{base_model_hub_id}](https://huggingface.co/{base_model_hub_id}) keeps its own license.",
    ]
    if base_model_note:
        lines.append(f"- Base model: {_sentence(base_model_note)}")
    return "\n".join(lines)
