"""Keyword labels without any LLM: `search_label(c) -> "import, from, module"`.

Two kinds of evidence, both from the harvest record alone:

* firing words: the tokens the latent fires on. A word's *share* is the mean of
  (a) its activation-weighted share of the firing mass in the examples and
  (b) its corpus-wide recall P(token | fires) from `input_token_stats`; its
  *precision* P(fires | token) comes from the corpus statistics
  (precision list, or exp(PMI) x firing density) and defaults to the firing
  density (i.e. "no more likely than any token") when the token is not listed.
  score = share x (0.25 + precision): frequent and specific tokens rank first.
* context words (TF-IDF): words within `CONTEXT` tokens before a firing token,
  tf = share of examples containing the word in that context, idf = log((1 + N) /
  (1 + df)) over the windows of every latent of the run (`Background`), or a
  stop-word list when no background is given. When no firing word dominates
  (largest share < DOMINANT), the best CONTEXT_WORDS context words lead the label.

Words are tokens stripped of surrounding whitespace and lower-cased; a
whitespace-only token is shown as "newline" or "space"; a token with no letter
or digit is quoted in backticks (`(`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.core.schemas import ComponentData

CONTEXT = 3
"Tokens before a firing token that count as its context."
MIN_RELATIVE = 0.2
"A word is kept when its score is at least this fraction of the best word's."
DOMINANT = 0.25
"Below this largest firing-mass share no firing token dominates, and context words lead the label."
CONTEXT_WORDS = 2
"Context words put first when no firing token dominates."
STOP_WORDS = frozenset("""a an and are as at be been but by can could did do does for from had has have he her his
how i if in into is it its me my no not of on or our she so than that the their them then there these they this
to too was we were what when where which who will with would you your""".split())
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]{2,}$")


def normalize(token: str) -> str:
    s = token.strip()
    if not s:
        return "newline" if "\n" in token else "space"
    return s.lower()


def _display(word: str) -> str:
    return word if any(ch.isalnum() for ch in word) else f"`{word}`"


@dataclass
class Background:
    """Document frequencies of context words over example windows (one window = one document)."""

    df: Counter = field(default_factory=Counter)
    n_docs: int = 0

    def add(self, c: ComponentData) -> None:
        for e in (*c.top_examples, *c.random_examples):
            self.df.update({normalize(t) for t in e.tokens})
            self.n_docs += 1

    @classmethod
    def of(cls, components: Iterable[ComponentData]) -> Background:
        bg = cls()
        for c in components:
            bg.add(c)
        return bg

    def idf(self, word: str) -> float:
        return math.log((1 + self.n_docs) / (1 + self.df.get(word, 0)))


def firing_scores(c: ComponentData) -> tuple[dict[str, float], dict[str, float]]:
    """word -> score, and word -> share of the firing mass."""
    mass: Counter = Counter()
    top = c.max_activation or 1.0
    for e in (*c.top_examples, *c.random_examples):
        for tok, a in zip(e.tokens, e.activations):
            if a > 0:
                mass[normalize(tok)] += a / top
    total = sum(mass.values())
    share = {w: m / total for w, m in mass.items()} if total else {}
    stats = c.input_token_stats
    recall: Counter = Counter()
    for s in stats.top_recall:
        recall[normalize(s.key)] += s.value
    if recall:
        share = {w: 0.5 * share.get(w, 0.0) + 0.5 * recall.get(w, 0.0) for w in set(share) | set(recall)}
    prec: dict[str, float] = {}
    for s in stats.top_pmi:
        prec[normalize(s.key)] = max(prec.get(normalize(s.key), 0.0), min(1.0, math.exp(s.value) * c.firing_density))
    for s in stats.top_precision:
        prec[normalize(s.key)] = max(prec.get(normalize(s.key), 0.0), s.value)
    base = c.firing_density
    scores = {w: sh * (0.25 + prec.get(w, base)) for w, sh in share.items() if sh > 0}
    return scores, share


def context_scores(c: ComponentData, background: Background | None) -> dict[str, float]:
    examples = (*c.top_examples, *c.random_examples)
    if not examples:
        return {}
    tf: Counter = Counter()
    for e in examples:
        words = set()
        fired = [i for i, a in enumerate(e.activations) if a > 0]
        for i in fired:
            for j in range(max(0, i - CONTEXT), i):
                if e.activations[j] <= 0:
                    words.add(normalize(e.tokens[j]))
        tf.update(w for w in words if _WORD.match(w))
    out = {}
    for w, n in tf.items():
        if background is not None and background.n_docs:
            idf = background.idf(w) / math.log(1 + background.n_docs)
        else:
            idf = 0.0 if w in STOP_WORDS else 1.0
        out[w] = n / len(examples) * idf
    return out


def _best(scores: dict[str, float], k: int) -> list[str]:
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    if not ranked or ranked[0][1] <= 0:
        return []
    floor = MIN_RELATIVE * ranked[0][1]
    return [w for w, s in ranked[:k] if s >= floor]


def search_label(c: ComponentData, max_words: int = 5, background: Background | None = None) -> str:
    """A comma-separated keyword label of at most `max_words` words ("" when nothing fired)."""
    fire, share = firing_scores(c)
    words = _best(fire, max_words)
    if words and max(share.values()) < DOMINANT:  # no dominant firing token: the context leads
        context = [w for w in _best(context_scores(c, background), CONTEXT_WORDS) if w not in words]
        words = context + words
    return ", ".join(_display(w) for w in words[:max_words])
