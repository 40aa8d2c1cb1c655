"""The ROUGE protocol every reported number follows.

Scores come from Google's `rouge_score` package (the implementation behind `evaluate`'s "rouge"), with Porter
stemming, reported as F-measures x100 rounded to 2 decimals. DialogSum's test split has several reference
summaries per dialogue (3 each), and papers aggregate them in two ways, so `score` reports both, labelled:

* `mean_over_references`: every (dialogue, reference) pair is scored on its own and the scores are averaged over
  all pairs (1500 pairs for the 500 test dialogues). This is the DialogSum paper's and the HF convention, and the
  number to compare with published results.
* `best_of_references`: per dialogue, the best score over its references (per metric), averaged over dialogues.
  It is always at least as high; never compare it with a mean-over-references number.

rougeLsum is summary-level LCS over newline-separated sentences. Model outputs and references are plain
paragraphs, so both are split into sentences first: a sentence ends at `.`, `!` or `?` followed by whitespace
(newlines already in the text also end one). A regex rather than nltk's punkt, which needs a download; it errs on
abbreviations such as "Mr. Smith", which are rare in DialogSum summaries. rouge1/2/L ignore the split.
"""

from __future__ import annotations

import re
from importlib.metadata import version

from rouge_score import rouge_scorer


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ROUGE_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
PROTOCOLS = ("mean_over_references", "best_of_references")
PROTOCOL = (
    f"rouge_score {version('rouge_score')} RougeScorer, Porter stemming (use_stemmer=True), F-measure x100; "
    "rougeLsum on sentences split after . ! ? followed by whitespace; mean_over_references: each "
    "(dialogue, reference) pair scored separately and averaged over all pairs; best_of_references: per dialogue the "
    "maximum over its references, averaged over dialogues"
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> str:
    """The text with one sentence per line, as rougeLsum expects."""
    return "\n".join(_SENTENCE_END.split(text.strip()))


def score(predictions: list[str], references: list[list[str]]) -> dict:
    """ROUGE F-measures x100 of one prediction per dialogue against that dialogue's references.

    Returns `{"mean_over_references": {rouge_type: float}, "best_of_references": {rouge_type: float},
    "num_dialogues": int, "num_pairs": int}` with the rouge types of `ROUGE_TYPES`.
    """
    pair_sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    best_sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    num_pairs = 0
    for pairs in _pair_scores(predictions, references):
        num_pairs += len(pairs)
        for rouge_type in ROUGE_TYPES:
            values = [pair[rouge_type].fmeasure for pair in pairs]
            pair_sums[rouge_type] += sum(values)
            best_sums[rouge_type] += max(values)
    return {
        "mean_over_references": {key: round(100 * value / num_pairs, 2) for key, value in pair_sums.items()},
        "best_of_references": {key: round(100 * value / len(predictions), 2) for key, value in best_sums.items()},
        "num_dialogues": len(predictions),
        "num_pairs": num_pairs,
    }


def score_each(predictions: list[str], references: list[list[str]]) -> list[dict[str, float]]:
    """Per dialogue, `{rouge_type: F x100}` averaged over its references (the mean-over-references protocol).

    The mean of these weighted by each dialogue's number of references is `score`'s mean_over_references.
    """
    return [
        {rouge_type: round(100 * sum(pair[rouge_type].fmeasure for pair in pairs) / len(pairs), 2)
         for rouge_type in ROUGE_TYPES}
        for pairs in _pair_scores(predictions, references)
    ]


def _pair_scores(predictions: list[str], references: list[list[str]]):
    """Per dialogue, the rouge_score results of its prediction against each of its references."""
    _check_inputs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    for prediction, refs in zip(predictions, references):
        prediction = split_sentences(prediction)
        yield [scorer.score(split_sentences(ref), prediction) for ref in refs]  # score(target, prediction)


def _check_inputs(predictions: list[str], references: list[list[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} reference lists; "
            "pass one list of references per prediction"
        )
    if not predictions:
        raise ValueError("nothing to score: predictions and references are empty")
    for index, (prediction, refs) in enumerate(zip(predictions, references)):
        if not isinstance(prediction, str):
            raise ValueError(f"prediction {index} is a {type(prediction).__name__}, not a string")
        if isinstance(refs, str) or not isinstance(refs, (list, tuple)):
            raise ValueError(f"references {index} must be a list of strings, got {type(refs).__name__}")
        if not refs:
            raise ValueError(f"dialogue {index} has no reference summaries")
        if not all(isinstance(ref, str) and ref.strip() for ref in refs):
            raise ValueError(f"dialogue {index} has an empty or non-string reference summary")


def check_scores(scores: dict, what: str) -> None:
    """Fail clearly when `scores` lacks a protocol or rouge type that `score` returns."""
    if not isinstance(scores, dict):
        raise ValueError(f"{what} must be a dict of ROUGE scores as rouge.score returns, got {type(scores).__name__}")
    for protocol in PROTOCOLS:
        values = scores.get(protocol)
        if not isinstance(values, dict):
            raise ValueError(f"{what} has no '{protocol}' scores")
        missing = [rouge_type for rouge_type in ROUGE_TYPES if not isinstance(values.get(rouge_type), (int, float))]
        if missing:
            raise ValueError(f"{what}['{protocol}'] lacks {', '.join(missing)}")
