"""ROUGE protocol checked against values worked out by hand (F = 2PR / (P + R), reported x100, 2 decimals)."""

import pytest

from dialogsum_sft.rouge import PROTOCOL, check_scores, score, score_each, split_sentences


def test_single_pair_matches_hand_computed_values():
    # prediction: the cat sat (3 tokens); reference: the cat sat on the mat (6 tokens)
    # R1: overlap the, cat, sat = 3 -> P 3/3, R 3/6, F 2/3
    # R2: prediction bigrams (the cat) (cat sat), both in the reference's 5 -> P 2/2, R 2/5, F 4/7
    # RL: LCS "the cat sat" = 3 -> as R1; RLsum: one sentence each -> as RL
    result = score(["the cat sat"], [["the cat sat on the mat"]])
    expected = {"rouge1": 66.67, "rouge2": 57.14, "rougeL": 66.67, "rougeLsum": 66.67}
    assert result["mean_over_references"] == expected
    assert result["best_of_references"] == expected
    assert (result["num_dialogues"], result["num_pairs"]) == (1, 1)


def test_stemming_matches_inflected_forms():
    # Porter stems words longer than 3 characters: cats -> cat, running -> run, runs -> run ("cat" is kept).
    # Both texts become "cat run": every n-gram matches, F = 1 (0 without stemming).
    result = score(["cats running"], [["cat runs"]])
    assert result["mean_over_references"] == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0, "rougeLsum": 100.0}


def test_mean_over_references_averages_pairs_and_best_of_averages_dialogues():
    # dialogue 1, prediction "the cat sat":
    #   vs "the cat sat on the mat": R1 2/3, R2 4/7 (first test)
    #   vs "the cat sat": R1 1, R2 1
    # dialogue 2, prediction "a dog" vs "a cat": R1 P 1/2 R 1/2 F 1/2; R2 (a dog) vs (a cat) -> 0
    # mean over the 3 pairs: R1 (2/3 + 1 + 1/2) / 3 = 13/18 = 72.22; R2 (4/7 + 1 + 0) / 3 = 11/21 = 52.38
    # best of, over the 2 dialogues: R1 (1 + 1/2) / 2 = 75; R2 (1 + 0) / 2 = 50
    result = score(["the cat sat", "a dog"], [["the cat sat on the mat", "the cat sat"], ["a cat"]])
    assert result["mean_over_references"]["rouge1"] == 72.22
    assert result["mean_over_references"]["rouge2"] == 52.38
    assert result["best_of_references"]["rouge1"] == 75.0
    assert result["best_of_references"]["rouge2"] == 50.0
    assert (result["num_dialogues"], result["num_pairs"]) == (2, 3)


def test_rouge_lsum_scores_sentences_separately_from_rouge_l():
    # reference: the cat sat the dog ran; prediction: the dog ran the cat sat (sentences swapped)
    # R1: all 6 tokens match -> 1.  R2: 4 of the 5 bigrams match (not "sat the" / "ran the") -> 4/5
    # RL over the whole text: LCS is 3 ("the cat sat" or "the dog ran") -> P 3/6, R 3/6, F 1/2
    # RLsum: each reference sentence is an LCS of one prediction sentence -> 6 hits of 6 -> F 1
    result = score(["The dog ran. The cat sat."], [["The cat sat. The dog ran."]])
    assert result["mean_over_references"] == {"rouge1": 100.0, "rouge2": 80.0, "rougeL": 50.0, "rougeLsum": 100.0}


def test_split_sentences_after_terminal_punctuation_and_whitespace_only():
    assert split_sentences(" Hi there! How are you? Fine. ") == "Hi there!\nHow are you?\nFine."
    assert split_sentences("It costs 3.50 dollars.") == "It costs 3.50 dollars."


def test_empty_prediction_scores_zero():
    result = score([""], [["the cat sat"]])
    assert set(result["mean_over_references"].values()) == {0.0}


@pytest.mark.parametrize(
    "predictions, references, message",
    [
        (["a", "b"], [["a"]], "2 predictions but 1 reference lists"),
        ([], [], "nothing to score"),
        (["a"], [[]], "no reference summaries"),
        (["a"], [["a", " "]], "empty or non-string reference"),
        (["a"], ["a"], "must be a list of strings"),
        ([None], [["a"]], "not a string"),
    ],
)
def test_invalid_inputs_raise_clear_errors(predictions, references, message):
    with pytest.raises(ValueError, match=message):
        score(predictions, references)


def test_protocol_names_version_stemming_and_split():
    assert "rouge_score 0.1.2" in PROTOCOL
    assert "use_stemmer=True" in PROTOCOL
    assert ". ! ?" in PROTOCOL


def test_check_scores_names_what_is_missing():
    good = score(["the cat sat"], [["the cat sat"]])
    check_scores(good, "tuned")
    del good["best_of_references"]["rougeLsum"]
    with pytest.raises(ValueError, match=r"tuned\['best_of_references'\] lacks rougeLsum"):
        check_scores(good, "tuned")
    with pytest.raises(ValueError, match="no 'mean_over_references'"):
        check_scores({}, "base")


def test_score_each_is_the_mean_over_each_dialogues_references():
    # The dialogues of the mean-over-references test: R1 (2/3 + 1) / 2 = 83.33 and 1/2; R2 (4/7 + 1) / 2 = 78.57, 0
    each = score_each(["the cat sat", "a dog"], [["the cat sat on the mat", "the cat sat"], ["a cat"]])
    assert [(row["rouge1"], row["rouge2"]) for row in each] == [(83.33, 78.57), (50.0, 0.0)]
    assert set(each[0]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    with pytest.raises(ValueError, match="1 predictions but 2 reference lists"):
        score_each(["x"], [["a"], ["b"]])
