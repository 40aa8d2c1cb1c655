"""What ROUGE does not show about a set of generated summaries: the ones a reader should look at first.

Per summary (`flags`): empty, cut at `max_new_tokens` (generation ended without a stop id), or naming a speaker
its dialogue does not (`speakers.invented_speakers`). Over a set (`generation_stats`): the share of each, and the
length of the summaries relative to their references in words, which shows a model that rambles or stops short.
"""

from __future__ import annotations

from .speakers import invented_speakers


FLAG_LABELS = {"empty": "empty", "cut": "cut at max_new_tokens", "invented": "invented speaker"}


def flags(summary: str, dialogue: str, stopped: bool | None) -> dict[str, object]:
    """`{"empty": True}`, `{"cut": True}`, `{"invented": [tags]}` for what applies; `{}` for a clean summary.

    `stopped` is whether generation ended on a stop id (None: not recorded, never flagged as cut).
    """
    found: dict[str, object] = {}
    if not summary.strip():
        found["empty"] = True
    if stopped is False:
        found["cut"] = True
    invented = invented_speakers(summary, dialogue)
    if invented:
        found["invented"] = invented
    return found


def generation_stats(
    summaries: list[str], references: list[list[str]], dialogues: list[str], stopped: list[bool] | None
) -> dict[str, float | int | None]:
    """Counts and shares (0-1) of empty, cut and invented-speaker summaries, and the words ratio to references.

    `length_ratio` is the summaries' total words over their references' (each dialogue's mean reference length),
    so 1.0 means as long as the references on average. `cut` and `cut_share` are None when `stopped` is None.
    """
    lengths = {len(summaries), len(references), len(dialogues), *([] if stopped is None else [len(stopped)])}
    if len(lengths) > 1:
        raise ValueError("summaries, references, dialogues (and stopped) must have one entry per dialogue")
    if not summaries:
        raise ValueError("no summaries to describe")
    found = [flags(summary, dialogue, None if stopped is None else stopped[index])
             for index, (summary, dialogue) in enumerate(zip(summaries, dialogues))]
    words = sum(len(summary.split()) for summary in summaries)
    reference_words = sum(sum(len(ref.split()) for ref in refs) / len(refs) for refs in references)
    stats: dict[str, float | int | None] = {"num_summaries": len(summaries)}
    for name in FLAG_LABELS:
        count = sum(name in entry for entry in found)
        unknown = name == "cut" and stopped is None
        stats[name] = None if unknown else count
        stats[f"{name}_share"] = None if unknown else round(count / len(summaries), 4)
    stats["mean_words"] = round(words / len(summaries), 2)
    stats["length_ratio"] = round(words / reference_words, 3) if reference_words else None
    return stats


def format_stats(stats: dict) -> dict[str, str]:
    """Display strings for a stats dict: "3 (0.60%)" per flag, "0.95" for the length ratio."""
    shown = {}
    for name, label in FLAG_LABELS.items():
        count = stats.get(name)
        shown[label] = "not recorded" if count is None else f"{count} ({100 * stats[f'{name}_share']:.2f}%)"
    shown["mean words"] = f"{stats['mean_words']:.1f}"
    ratio = stats["length_ratio"]
    shown["length ratio to references (words)"] = "n/a" if ratio is None else f"{ratio:.2f}"
    return shown
