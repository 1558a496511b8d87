"""Which activation examples the explainer sees, and which are held out for scoring.

Every latent's harvest record has two example lists: `top_examples` (the K
largest activations, highest first) and `random_examples` (a uniform sample of
all firings). The split is:

* strata: "top" for the top list; the random list (minus any firing already in
  the top list) is cut into `n_quantiles` equal-count bins by activation rank,
  "q1" (weakest firings) to "qN" (strongest). Recall is later reported per stratum.
* explainer set: every other top example (ranks 0, 2, 4, ... counted over the
  examples whose window does not overlap one already chosen; at most
  `explain_top`), plus `explain_per_quantile` examples drawn at random from every
  quantile bin (again skipping overlaps), so the explainer sees both the
  strongest and typical firings, and no text twice.
* held-out set: every other example whose token window does not overlap any
  explainer window (same sequence, intersecting positions), so no scored token
  was ever shown to the explainer.

The draw is deterministic: its generator is seeded by `SplitConfig.seed` and the
latent's component key (SHA-256), independent of the order latents are processed.
The ids ("sequence:position") of the examples shown are stored in the
Explanation's `example_ids`; scoring removes every example overlapping one of
those ids, so the guarantee holds even if the split settings change between runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from engine.core.schemas import ActivationExample, ComponentData


@dataclass(frozen=True)
class Window:
    """A token window with this latent's true activation on every token."""

    sequence: int
    "Row of the token store."
    start: int
    "Position of the first token of the window in its sequence."
    tokens: list[str]
    token_ids: list[int]
    activations: list[float]
    "This latent's activation per token (all zero for a non-activating window)."
    stratum: str
    "top | q1..qN (activating) | neg (non-activating)."
    position: int
    "Firing position (activating) or centre of the window (non-activating), in the sequence."

    @property
    def id(self) -> str:
        return f"{self.sequence}:{self.position}"

    @property
    def activating(self) -> bool:
        return self.stratum != "neg"

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def overlaps(self, sequence: int, start: int, end: int) -> bool:
        return self.sequence == sequence and self.start < end and start < self.end

    @classmethod
    def of(cls, e: ActivationExample, stratum: str) -> Window:
        return cls(sequence=e.sequence, start=e.position - e.firing_index, tokens=e.tokens, token_ids=e.token_ids,
                   activations=e.activations, stratum=stratum, position=e.position)


@dataclass(frozen=True)
class SplitConfig:
    """How many examples the explainer sees; everything else is held out."""

    explain_top: int = 10
    "Top examples shown (every other distinct one of the top list)."
    explain_per_quantile: int = 2
    "Random examples shown from each activation-quantile bin."
    n_quantiles: int = 5
    "Equal-count bins of the random sample by activation."
    seed: int = 0
    "Mixed with the component key to seed each latent's draw."

    @classmethod
    def with_budget(cls, max_examples: int, n_quantiles: int = 5, seed: int = 0) -> SplitConfig:
        """About `max_examples` shown: half from the top, the rest spread over the quantile bins."""
        top = max(1, (max_examples + 1) // 2)
        per_q = max(0, (max_examples - top) // n_quantiles)
        return cls(explain_top=top, explain_per_quantile=per_q, n_quantiles=n_quantiles, seed=seed)


@dataclass
class Split:
    explain: list[Window] = field(default_factory=list)
    held_out: list[Window] = field(default_factory=list)

    @property
    def explain_ids(self) -> list[str]:
        return [w.id for w in self.explain]


def latent_rng(key: str, seed: int, salt: str = "") -> np.random.Generator:
    """A generator determined by (seed, component key, salt) alone."""
    digest = hashlib.sha256(f"{seed}|{key}|{salt}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def strata(c: ComponentData, n_quantiles: int) -> list[Window]:
    """All distinct examples of `c` as windows labelled top / q1..qN."""
    out = [Window.of(e, "top") for e in c.top_examples]
    seen = {w.id for w in out}
    rand = [e for e in c.random_examples if f"{e.sequence}:{e.position}" not in seen]
    if rand:
        order = np.argsort(np.array([e.activation for e in rand]), kind="stable")  # weakest first
        bins = np.array_split(order, min(n_quantiles, len(rand)))
        for q, idx in enumerate(bins, start=1):
            out += [Window.of(rand[i], f"q{q}") for i in idx]
    return out


def split_examples(c: ComponentData, cfg: SplitConfig = SplitConfig()) -> Split:
    windows = strata(c, cfg.n_quantiles)
    rng = latent_rng(c.component_key, cfg.seed, "split")
    explain: list[Window] = []

    def clashes(w: Window) -> bool:
        return any(w.overlaps(e.sequence, e.start, e.end) for e in explain)

    # top: alternate explain / held out over the windows that do not overlap an explained one
    turn = 0
    for w in (w for w in windows if w.stratum == "top"):
        if clashes(w):
            continue
        if turn % 2 == 0 and len(explain) < cfg.explain_top:
            explain.append(w)
        turn += 1
    by_q: dict[str, list[Window]] = {}
    for w in windows:
        if w.stratum != "top":
            by_q.setdefault(w.stratum, []).append(w)
    for q in sorted(by_q, key=lambda s: int(s[1:])):
        taken = 0
        for i in rng.permutation(len(by_q[q])).tolist():
            if taken == cfg.explain_per_quantile:
                break
            if not clashes(by_q[q][i]):
                explain.append(by_q[q][i])
                taken += 1
    held = [w for w in windows if not clashes(w)]
    return Split(explain=explain, held_out=held)


def parse_id(example_id: str) -> tuple[int, int]:
    seq, pos = example_id.split(":")
    return int(seq), int(pos)


def exclude_shown(windows: list[Window], shown_ids: list[str], half_width: int) -> list[Window]:
    """`windows` minus any overlapping a shown example (id 'seq:pos' = a window of ±half_width around pos)."""
    shown: dict[int, list[tuple[int, int]]] = {}
    for i in shown_ids:
        seq, pos = parse_id(i)
        shown.setdefault(seq, []).append((pos - half_width, pos + half_width + 1))
    return [w for w in windows if not any(w.overlaps(w.sequence, lo, hi) for lo, hi in shown.get(w.sequence, ()))]
