"""PNG figures for the model card and the reports: loss curves, ROUGE bars, benchmark bars."""

from __future__ import annotations

import json
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .rouge import ROUGE_NAMES, ROUGE_TYPES, check_scores


def plot_loss(trainer_state: dict | str | os.PathLike, out_png: str | os.PathLike) -> str:
    """Train and eval loss against the optimizer step, from a Trainer's `trainer_state.json` (path or dict).

    When the run logged ROUGE while training (`eval_rouge1` ..., training_rouge.py) a second panel shows it.
    """
    history, source = _log_history(trainer_state)
    # "loss" entries are the logging_steps averages; the final summary entry says "train_loss" and is left out.
    train = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry and "step" in entry]
    evals = [(entry["step"], entry["eval_loss"]) for entry in history if "eval_loss" in entry and "step" in entry]
    if not train and not evals:
        raise ValueError(
            f"nothing to plot: {source} log_history has no 'loss' or 'eval_loss' entries "
            "(was training logged, e.g. logging_steps > 0?)"
        )
    rouge = {}
    for rouge_type in ("rouge1", "rouge2", "rougeL"):
        points = [(entry["step"], entry[f"eval_{rouge_type}"]) for entry in history
                  if f"eval_{rouge_type}" in entry and "step" in entry]
        if points:
            rouge[rouge_type] = points
    fig, ax = _figure((12, 4.2) if rouge else (7, 4.2), panels=2 if rouge else 1)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", linewidth=1.5)
    if evals:
        ax.plot(*zip(*evals), label="eval loss", color="tab:orange", marker="o", linewidth=1.5)
    _label_step_axes(ax, "loss (cross-entropy on summary tokens)", "Training and evaluation loss")
    if rouge:
        ax = fig.add_subplot(1, 2, 2)
        for rouge_type, points in rouge.items():
            ax.plot(*zip(*points), label=ROUGE_NAMES[rouge_type], marker="o", linewidth=1.5)
        _label_step_axes(ax, "F-measure x100, mean over references", "ROUGE of generated summaries while training")
    return _save(fig, out_png)


def plot_loss_overlay(trainer_states: dict[str, dict | str | os.PathLike], out_png: str | os.PathLike) -> str:
    """The train-loss curves of several runs on one axis, labelled by the dict's keys (e.g. two LoRA code paths)."""
    fig, ax = _figure((7, 4.2))
    for label, trainer_state in trainer_states.items():
        history, source = _log_history(trainer_state)
        train = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry and "step" in entry]
        if not train:
            raise ValueError(f"nothing to plot: {source} log_history has no 'loss' entries")
        ax.plot(*zip(*train), label=label, linewidth=1.5)
    _label_step_axes(ax, "train loss (cross-entropy on summary tokens)", "Train loss")
    return _save(fig, out_png)


def _label_step_axes(ax, ylabel: str, title: str) -> None:
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()


def _log_history(trainer_state: dict | str | os.PathLike) -> tuple[list, str]:
    """A Trainer state's log_history (from a dict or a trainer_state.json path) and how to name it in errors."""
    if isinstance(trainer_state, dict):
        state, source = trainer_state, "trainer state"
    else:
        source = os.fspath(trainer_state)
        with open(source, encoding="utf-8") as handle:
            state = json.load(handle)
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise ValueError(f"{source} has no log_history list; is it a Trainer's trainer_state.json?")
    return history, source


def plot_rouge(metrics: dict, out_png: str | os.PathLike) -> str:
    """Grouped bars of ROUGE-1/2/L/Lsum, base vs fine-tuned, mean over references (see `card` for `metrics`)."""
    check_scores(metrics.get("tuned"), "metrics['tuned']")
    models = [("fine-tuned", metrics["tuned"], "tab:orange")]
    if metrics.get("base") is not None:
        check_scores(metrics["base"], "metrics['base']")
        models.insert(0, ("base", metrics["base"], "tab:gray"))
    width = 0.8 / len(models)
    fig, ax = _figure((7, 4.2))
    for index, (label, scores, color) in enumerate(models):
        values = [scores["mean_over_references"][rouge_type] for rouge_type in ROUGE_TYPES]
        positions = [x + (index - (len(models) - 1) / 2) * width for x in range(len(ROUGE_TYPES))]
        bars = ax.bar(positions, values, width, label=label, color=color)
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=9)
    ax.set_xticks(range(len(ROUGE_TYPES)), [ROUGE_NAMES[rouge_type] for rouge_type in ROUGE_TYPES])
    ax.set_ylabel("F-measure x100")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.1)  # room for the value labels
    split = metrics.get("split", "test")
    ax.set_title(f"ROUGE on DialogSum {split}, mean over (dialogue, reference) pairs")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right")
    return _save(fig, out_png)


def plot_benchmark(
    rows: list[dict], out_png: str | os.PathLike, value_key: str, label_key: str, title: str, xlabel: str | None = None
) -> str:
    """Horizontal bars of `row[value_key]` labelled by `row[label_key]`, values written on the bars."""
    if not rows:
        raise ValueError("nothing to plot: no benchmark rows")
    for index, row in enumerate(rows):
        for key in (value_key, label_key):
            if key not in row:
                raise ValueError(f"benchmark row {index} has no '{key}' (keys: {', '.join(map(str, row))})")
        if not isinstance(row[value_key], (int, float)):
            raise ValueError(f"benchmark row {index} '{value_key}' is not a number: {row[value_key]!r}")
    labels = [str(row[label_key]) for row in rows]
    values = [row[value_key] for row in rows]
    fig, ax = _figure((7, 1.2 + 0.45 * len(rows)))
    bars = ax.barh(range(len(rows)), values, color="tab:blue")
    ax.bar_label(bars, labels=[_format_number(value) for value in values], padding=3, fontsize=9)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()  # first row on top, as in the report's table
    ax.set_xlim(0, max(max(values), 0) * 1.15 or 1)
    ax.set_xlabel(xlabel or value_key)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out_png)


def _format_number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"  # 12,345 tokens/s; 12.3 GB


def _figure(figsize: tuple[float, float], panels: int = 1):
    """A figure drawn by Agg without pyplot: no global backend switch, no figure left open in pyplot's registry.

    Returns the figure and the axes of its first panel (of `panels` side by side)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, panels, 1)


def _save(fig, out_png: str | os.PathLike) -> str:
    out_png = os.fspath(out_png)
    os.makedirs(os.path.dirname(out_png) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120, format="png")
    return out_png
