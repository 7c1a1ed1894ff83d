"""The words IOI prompts are made of: Wang et al.'s names, our places and objects, and the single-token filter.

A name, place or object is used only if it is one token with a leading space for the tokenizer in use
(`single_token_vocabulary`; what it drops is reported in one warning): the analyses read each role at one
position, and a word split in two would put half of it elsewhere.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence


NAMES: tuple[str, ...] = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda", "Daniel",
    "David", "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason", "Justin", "Sarah",
    "William", "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas", "Anthony", "Heather", "Eric",
    "Elizabeth", "Adam", "Megan", "Melissa", "Kevin", "Steven", "Thomas", "Timothy", "Christina", "Kyle",
    "Rachel", "Laura", "Lauren", "Amber", "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy",
    "Crystal", "Michelle", "Tiffany", "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca",
    "Jacob", "Stephen", "Patrick", "Sean", "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin",
    "Paul", "Angela", "Tyler", "Scott", "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis", "Lisa",
    "Kenneth", "Bryan", "Lindsey", "Kristen", "Jose", "Alexander", "Jesse", "Katie", "Lindsay", "Shannon",
    "Vanessa", "Courtney", "Christine", "Alicia", "Cody", "Allison", "Bradley", "Samuel", "George",
)  # the 99 names of Wang et al.'s generator (as vendored in ACDC) plus George: 100


PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station", "park", "library",
)


OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack", "book", "letter",
)


@dataclass
class VocabularyReport:
    """What survived the single-token filter for a tokenizer, and what was dropped."""

    names: list[str]
    places: list[str]
    objects: list[str]
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def __str__(self) -> str:
        kept = f"kept {len(self.names)} names, {len(self.places)} places, {len(self.objects)} objects"
        gone = "; ".join(f"dropped {k}: {', '.join(v)}" for k, v in self.dropped.items() if v)
        return kept + (f"; {gone}" if gone else "; dropped nothing")


def token_id(tokenizer, word: str) -> int | None:
    """Id of ' word' if it is a single token for this tokenizer, else None."""
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def single_token_vocabulary(
    tokenizer, names: Sequence[str] = NAMES, places: Sequence[str] = PLACES,
    objects: Sequence[str] = OBJECTS, min_names: int = 10, stacklevel: int = 2,
) -> VocabularyReport:
    """Keep the words that are one token (with a leading space); warn about the rest (the warning names the caller's
    line, or `stacklevel` - 1 frames above it for a wrapper); refuse if too few."""
    kept, dropped = {}, {}
    for kind, words in (("names", names), ("places", places), ("objects", objects)):
        words = sorted(set(words))
        kept[kind] = [w for w in words if token_id(tokenizer, w) is not None]
        dropped[kind] = [w for w in words if token_id(tokenizer, w) is None]
    report = VocabularyReport(kept["names"], kept["places"], kept["objects"], dropped)
    if len(report.names) < min_names or not report.places or not report.objects:
        raise ValueError(f"too few single-token words for this tokenizer ({report}); need >= {min_names} names")
    if any(dropped.values()):
        warnings.warn(f"IOI vocabulary: {report}", stacklevel=stacklevel)
    return report


def vocabulary_names(tokenizer) -> list[str]:
    """The names of NAMES that are one token for this tokenizer, sorted."""
    return sorted(n for n in NAMES if token_id(tokenizer, n) is not None)
