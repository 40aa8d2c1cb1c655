"""Speakers: DialogSum tags them `#Person1#`, `#Person2#`, ...; the chats users summarize name them ("Anna: ...").

`name_speakers` replaces every tag of a dialogue, consistently in the dialogue and its summaries, by a first name
the texts do not already use. Training uses it to teach the model to refer to speakers as the dialogue names them
(`named_speakers_fraction` of the rows), evaluation to build the named-speaker variant of a split
(`named_variant`). `invented_speakers` finds the speaker references of a summary that its dialogue never uses: a
`#Tag#`, a bare `Person 1` / `Speaker 2`, or one of the names `name_speakers` draws from.
"""

from __future__ import annotations

import random
import re


# Common first names, distinct as words (no name is part of another), none a frequent English word.
FIRST_NAMES = (
    "Aaron", "Abigail", "Adrian", "Alice", "Amelia", "Andrew", "Anna", "Arthur", "Beatrice", "Benjamin", "Carla",
    "Caroline", "Daniel", "Diana", "Edward", "Elena", "Emily", "Ethan", "Fiona", "Gabriel", "Greta", "Hannah",
    "Henry", "Isaac", "Isabel", "Jacob", "Julia", "Kevin", "Laura", "Lucas", "Maria", "Martin", "Megan", "Nathan",
    "Nina", "Oliver", "Olivia", "Oscar", "Paula", "Peter", "Rachel", "Robert", "Samuel", "Sarah", "Sofia", "Thomas",
    "Tobias", "Ursula", "Victor", "Vivian", "Walter", "Yusuf", "Zoe", "Priya", "Kenji", "Mei", "Omar", "Leila",
    "Mateo", "Ingrid",
)  # fmt: skip

_PERSON_TAG = re.compile(r"#person(\d+)#", re.IGNORECASE)
_ANY_TAG = re.compile(r"#[A-Za-z]+\d*#")
_BARE_LABEL = re.compile(r"(?<![#\w])(?:person|speaker)\s?(\d+)\b(?!#)", re.IGNORECASE)
_NAME = re.compile(r"\b(" + "|".join(FIRST_NAMES) + r")\b")


def speaker_tags(text: str) -> list[int]:
    """The numbers of the `#PersonN#` tags in `text`, sorted (DialogSum's spelling varies in case: `#PErson2#`)."""
    return sorted({int(number) for number in _PERSON_TAG.findall(text)})


def name_speakers(dialogue: str, summaries: list[str], key: str) -> tuple[str, list[str], dict[int, str]]:
    """`dialogue` and `summaries` with each `#PersonN#` replaced by one first name; the same `key` draws the same.

    Names already in the texts are never drawn, so no speaker gets the name of someone they talk about. Returns
    the texts and the mapping {N: name}.
    """
    texts = [dialogue, *summaries]
    tags = sorted(set().union(*(speaker_tags(text) for text in texts)))
    used = {word.lower() for text in texts for word in re.findall(r"\w+", text)}
    candidates = [name for name in FIRST_NAMES if name.lower() not in used]
    if len(candidates) < len(tags):
        raise ValueError(f"{len(tags)} speakers but only {len(candidates)} unused names to give them")
    names = dict(zip(tags, random.Random(key).sample(candidates, len(tags))))

    def replace(text: str) -> str:
        return _PERSON_TAG.sub(lambda match: names[int(match.group(1))], text)

    return replace(dialogue), [replace(summary) for summary in summaries], names


def is_named(key: str, fraction: float) -> bool:
    """Whether the row `key` is one of the `fraction` whose speakers get names; fixed per key, not per call order."""
    return fraction > 0 and random.Random(f"select:{key}").random() < fraction


def name_speakers_in_rows(rows, fraction: float, seed: int):
    """A `datasets.Dataset` of DialogSum rows with `fraction` of them (chosen by `seed` and row id) named."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"named_speakers_fraction must be between 0 and 1; got {fraction}")
    if fraction == 0:
        return rows

    def rename(row):
        key = f"{seed}:{row['id']}"
        if not is_named(key, fraction):
            return row
        dialogue, (summary,), _ = name_speakers(row["dialogue"], [row["summary"]], key)
        return {**row, "dialogue": dialogue, "summary": summary}

    return rows.map(rename)


def named_variant(rows: list[dict], seed: int = 0) -> list[dict]:
    """Unique-dialogue rows (`data.unique_dialogues`) with every dialogue's tags named in it and its references."""
    named = []
    for row in rows:
        dialogue, references, _ = name_speakers(row["dialogue"], row["references"], f"{seed}:{row['id']}")
        named.append({**row, "dialogue": dialogue, "references": references})
    return named


def invented_speakers(summary: str, dialogue: str) -> list[str]:
    """Speaker references in `summary` that `dialogue` does not contain, in order of first appearance.

    Three kinds: any `#Tag#` (compared case-insensitively, as DialogSum spells `#PErson2#`), a bare `Person 1` or
    `Speaker 2` whose number the dialogue does not tag, and any of `FIRST_NAMES` the dialogue never mentions.
    """
    lowered = dialogue.lower()
    dialogue_tags = set(speaker_tags(dialogue))
    found = [tag for tag in _ANY_TAG.findall(summary) if tag.lower() not in lowered]
    for match in _BARE_LABEL.finditer(summary):
        if int(match.group(1)) not in dialogue_tags and match.group(0).lower() not in lowered:
            found.append(match.group(0))
    dialogue_words = set(re.findall(r"\w+", dialogue))
    found += [name for name in _NAME.findall(summary) if name not in dialogue_words]
    return list(dict.fromkeys(found))
