"""Embedding: is the explanation closer in meaning to the activating excerpts? Fully offline.

MiniLM (all-MiniLM-L6-v2) embeds the explanation, the held-out activating
excerpts and as many non-activating ones; the cosine similarity ranks the excerpts, giving the
AUC. For the 0/1 metrics the k most similar excerpts are predicted activating,
k = the number of activating excerpts (a threshold fixed by the design, not fit
to the answers).
"""

from __future__ import annotations

import numpy as np

from engine.score.scorers.base import Details, ScoreConfig, ScoreItem, ranked


class Embedding:
    name = "embedding"
    llm = False

    def __init__(self, cfg: ScoreConfig, embedder=None, memo_size: int = 100_000):
        """embedder: texts -> unit-norm vectors [n, d] (MiniLM().embed when None, loaded on first use).
        memo_size: texts whose vectors are kept (negatives recur across latents: they come from one pool)."""
        self.cfg = cfg
        self._embed = embedder
        self.memo: dict[str, np.ndarray] = {}
        self.memo_size = memo_size

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._embed is None:
            from engine.interpret.minilm import MiniLM

            self._embed = MiniLM().embed
        new = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if new:
            vecs = self._embed(new)
            if len(self.memo) + len(new) > self.memo_size:
                self.memo.clear()
            self.memo.update(zip(new, vecs))
            if any(t not in self.memo for t in texts):  # memo just cleared and too small for this call
                return self._embed(texts)
        return np.stack([self.memo[t] for t in texts])

    def calls(self, item: ScoreItem):
        return []

    def outcome(self, item: ScoreItem, responses: list = ()) -> Details:
        def similarity(windows):
            vecs = self.embed([item.label] + [w.text for w in windows])  # [1 + n, d]
            return vecs[1:] @ vecs[0]  # [n]

        return ranked(item, self.name, self.cfg, similarity)[0]
