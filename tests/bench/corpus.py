"""A search corpus for the bench: English memories, 384-dimension embeddings, query sets.

The text is real English prose: sentences of the Python reference documentation shipped with
every CPython (pydoc_data), one or two per memory, so that word frequencies follow a natural
(Zipf-like) distribution with very common, medium and rare words. The embeddings are random
but clustered (1000 centres plus noise), like those of a sentence-embedding model, where a
query has true neighbours rather than a uniform sphere of equidistant points.
"""

from __future__ import annotations

import random
import re
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pydoc_data.topics import topics

DIMENSION = 384
CENTRES = 1000
NOISE_VECTORS = 2000
WORD = re.compile(r"[a-z]+")
# Function words a query may contain but that are not searched alone (see service/search.py).
STOP = {"the", "a", "an", "of", "to", "is", "in", "and", "or", "for", "be", "it", "that", "as",
        "by", "if", "on", "this", "are", "with", "not", "can", "from", "at", "which", "its"}


def english_sentences() -> list[str]:
    """Sentences of 30-300 characters from the Python docs, white space collapsed."""
    text = " ".join(topics.values())
    found = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        sentence = " ".join(sentence.split())
        if 30 < len(sentence) < 300 and re.search(r"[a-z]{3}", sentence):
            found.append(sentence)
    return found


@dataclass
class SearchCorpus:
    """``size`` memories with embeddings, and the document frequency of every word."""

    size: int
    seed: int = 7
    frequencies: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.sentences = english_sentences()
        r = self.rng.random
        self.centres = [array("f", (r() - 0.5 for _ in range(DIMENSION)))
                        for _ in range(CENTRES)]
        self.noise = [array("f", (0.6 * (r() - 0.5) for _ in range(DIMENSION)))
                      for _ in range(NOISE_VECTORS)]

    def vector(self) -> list[float]:
        """A point near one of the centres."""
        centre = self.rng.choice(self.centres)
        noise = self.rng.choice(self.noise)
        return [c + n for c, n in zip(centre, noise, strict=True)]

    def memories(self) -> Iterator[tuple[str, list[float]]]:
        """(content, embedding) pairs; contents are unique (a counter ends each one)."""
        for i in range(self.size):
            content = " ".join(self.rng.choice(self.sentences)
                               for _ in range(self.rng.randint(1, 2)))
            content = f"{content} #{i}"
            self.frequencies.update(set(WORD.findall(content.lower())))
            yield content, self.vector()

    def words(self, low: float, high: float) -> list[str]:
        """Words in at least ``low`` and at most ``high`` of the memories (fractions)."""
        lo, hi = low * self.size, high * self.size
        return sorted(w for w, n in self.frequencies.items()
                      if lo <= n <= hi and len(w) > 2 and w not in STOP)

    def queries(self) -> dict[str, list[str]]:
        """Query sets by how many memories their words match."""
        rng = random.Random(self.seed + 1)
        # The 500 rarest words (each sentence recurs in ~50 memories, so "rare" is 20-100).
        rare = sorted(self.words(0, 1.0), key=lambda w: self.frequencies[w])[:500]
        medium = self.words(5e-3, 2e-2)
        common = self.words(0.1, 1.0)
        return {
            "rare": [" ".join(rng.sample(rare, rng.randint(1, 2))) for _ in range(300)],
            "medium": [" ".join(rng.sample(medium, 2)) for _ in range(300)],
            # Words in 10-40% of all memories, two or three at a time.
            "common": [" ".join(rng.sample(common, rng.randint(2, 3))) for _ in range(300)],
            # Questions as an assistant asks them: stop words around medium and common words.
            "question": [f"what is the {rng.choice(medium)} of the {rng.choice(common)}"
                         for _ in range(300)],
            # Nothing but stop words: every row matches; bounded by ranking the newest only.
            "stop_words": [" ".join(rng.sample(sorted(STOP), 3)) for _ in range(300)],
        }
