"""Named speakers: tags replaced consistently and deterministically; invented speakers found, real ones not."""

import re

import pytest
from datasets import Dataset

from dialogsum_sft.data import unique_dialogues
from dialogsum_sft.speakers import (
    FIRST_NAMES,
    invented_speakers,
    name_speakers,
    name_speakers_in_rows,
    named_variant,
    speaker_tags,
)
from helpers import read_rows


DIALOGUE = "#Person1#: Hi Tom, is #Person2# here?\n#Person2#: Yes. #PErson2# is me.\n#Person3#: And me."
SUMMARIES = ["#Person1# asks for #Person2#; #Person3# joins.", "#Person2#'s friend #Person1# says hi to Tom."]


def test_every_tag_becomes_one_name_in_dialogue_and_summaries_alike():
    dialogue, summaries, names = name_speakers(DIALOGUE, SUMMARIES, "seed:test_1")
    assert sorted(names) == [1, 2, 3] and len(set(names.values())) == 3
    assert all(name in FIRST_NAMES for name in names.values())
    assert dialogue == (f"{names[1]}: Hi Tom, is {names[2]} here?\n{names[2]}: Yes. {names[2]} is me.\n"
                        f"{names[3]}: And me.")
    assert summaries == [f"{names[1]} asks for {names[2]}; {names[3]} joins.",
                         f"{names[2]}'s friend {names[1]} says hi to Tom."]
    assert not any("#" in text for text in (dialogue, *summaries))


def test_names_are_fixed_by_the_key_and_never_one_the_texts_already_use():
    first = name_speakers(DIALOGUE, SUMMARIES, "42:test_1")
    assert name_speakers(DIALOGUE, SUMMARIES, "42:test_1") == first
    drawn = {tuple(name_speakers(DIALOGUE, SUMMARIES, f"42:test_{i}")[2].values()) for i in range(20)}
    assert len(drawn) > 10  # different rows get different names
    crowded = "#Person1#: " + " ".join(FIRST_NAMES[:-1])  # every name but the last one is taken
    assert name_speakers(crowded, [], "k")[2] == {1: FIRST_NAMES[-1]}
    with pytest.raises(ValueError, match="2 speakers but only 1 unused names"):
        name_speakers(crowded + "\n#Person2#: Hi.", [], "k")


def test_named_variant_of_real_validation_dialogues_leaves_no_tag(data_dir):
    rows = unique_dialogues(read_rows(data_dir, "validation", 50))
    named = named_variant(rows, seed=0)
    assert named == named_variant(rows, seed=0) and named != named_variant(rows, seed=1)
    for original, renamed in zip(rows, named):
        assert speaker_tags(original["dialogue"]) and not speaker_tags(renamed["dialogue"])
        assert not any(speaker_tags(ref) for ref in renamed["references"])
        assert invented_speakers(renamed["references"][0], renamed["dialogue"]) == []
        # The speakers' lines start with their names, as a chat export would.
        assert re.match(r"[A-Z][a-z]+: ", renamed["dialogue"])


def test_training_fraction_is_chosen_per_row_id_and_seed():
    rows = Dataset.from_list([{"id": f"train_{i}", "dialogue": "#Person1#: Hi.\n#Person2#: Hello.",
                               "summary": "#Person1# greets #Person2#."} for i in range(400)])
    named = name_speakers_in_rows(rows, 0.25, seed=42)
    renamed = [row["id"] for row in named if "#" not in row["dialogue"]]
    assert 60 < len(renamed) < 140
    assert all("#" not in row["summary"] for row in named if "#" not in row["dialogue"])
    assert [row["dialogue"] for row in name_speakers_in_rows(rows, 0.25, seed=42)] == named["dialogue"]
    # The same rows whatever their order: the choice hangs on the row id, not the position.
    shuffled = name_speakers_in_rows(rows.shuffle(seed=0), 0.25, seed=42)
    assert sorted(row["id"] for row in shuffled if "#" not in row["dialogue"]) == sorted(renamed)
    assert name_speakers_in_rows(rows, 0.0, seed=42) is rows
    with pytest.raises(ValueError, match="between 0 and 1"):
        name_speakers_in_rows(rows, 1.5, seed=42)


@pytest.mark.parametrize("summary, dialogue, expected", [
    ("#Person1# greets #Person2#.", "#Person1#: Hi.\n#Person2#: Hello.", []),
    ("#Person1# greets #Person3#.", "#Person1#: Hi.\n#Person2#: Hello.", ["#Person3#"]),
    ("#Person1# greets Anna.", "Anna: Hi.\nBen: Hello.", ["#Person1#"]),
    ("Person 1 greets Person2.", "Anna: Hi.\nBen: Hello.", ["Person 1", "Person2"]),
    ("Person 1 greets Person 2.", "#Person1#: Hi.\n#Person2#: Hello.", []),  # the tags without their #s
    ("Anna asks Oliver about Tom.", "Anna: Hi Tom.\nBen: Hello.", ["Oliver"]),
    ("Anna calls #PhoneNumber#.", "Anna: Call #PhoneNumber#.", []),  # DialogSum's other placeholders
    ("#person2# answers.", "#PErson2#: Yes.", []),
    ("A person I know and speaker notes.", "Anna: Hi.", []),
])
def test_invented_speakers(summary, dialogue, expected):
    assert invented_speakers(summary, dialogue) == expected
