"""Generation stats: empty, cut and invented-speaker summaries and the length ratio, counted by hand."""

import pytest

from dialogsum_sft.stats import flags, format_stats, generation_stats


DIALOGUES = ["#Person1#: Hi.\n#Person2#: Hello.", "Anna: Hi.\nBen: Hello.", "#Person1#: Bye."]
REFERENCES = [["#Person1# greets #Person2#.", "They greet each other warmly."], ["Anna greets Ben."], ["Bye."]]


def test_stats_count_each_flag_and_the_words_ratio():
    summaries = ["#Person1# greets #Person2# and #Person3#.", "", "#Person1# says bye and then says bye and"]
    stats = generation_stats(summaries, REFERENCES, DIALOGUES, stopped=[True, True, False])
    # words: 5 + 0 + 8 = 13; references: (3 + 5) / 2 + 3 + 1 = 8 -> ratio 13 / 8
    assert stats == {"num_summaries": 3, "empty": 1, "empty_share": 0.3333, "cut": 1, "cut_share": 0.3333,
                     "invented": 1, "invented_share": 0.3333, "mean_words": 4.33, "length_ratio": 1.625}
    assert format_stats(stats)["cut at max_new_tokens"] == "1 (33.33%)"
    assert format_stats(stats)["length ratio to references (words)"] == "1.62"


def test_without_stop_flags_cut_is_not_recorded_rather_than_zero():
    stats = generation_stats(["Hi.", "Anna greets Ben.", "Bye."], REFERENCES, DIALOGUES, stopped=None)
    assert stats["cut"] is None and stats["cut_share"] is None and stats["empty"] == 0
    assert format_stats(stats)["cut at max_new_tokens"] == "not recorded"
    with pytest.raises(ValueError, match="one entry per dialogue"):
        generation_stats(["Hi."], REFERENCES, DIALOGUES, stopped=None)


def test_flags_of_one_summary():
    assert flags("Anna greets Ben.", DIALOGUES[1], stopped=True) == {}
    assert flags("  ", DIALOGUES[1], stopped=False) == {"empty": True, "cut": True}
    assert flags("#Person1# greets Ben.", DIALOGUES[1], stopped=None) == {"invented": ["#Person1#"]}
