"""Which activation examples the explainer sees, and which are held out for scoring.

Every latent's harvest record has two example lists: `top_examples` (the K
largest activations, highest first) and `random_examples` (a uniform sample of
all firings). The split is set by the sampler settings (`SplitConfig`, delphi's
names; recorded in every Explanation and ScoreResult):

* strata: "top" for the top list; the random list (minus any firing already in
  the top list) is cut into `n_quantiles` equal-count bins by activation rank,
  "q1" (weakest firings) to "qN" (strongest). Recall is later reported per stratum.
* explainer set, `n_examples_train` examples by `train_type`:
  - top: from the top list only, at alternating ranks (0, 2, 4, ... counted over
    the examples whose window does not overlap one already chosen), then the
    remaining ones strongest first, so the top stratum keeps held-out examples
    while n_examples_train <= K / 2;
  - random: drawn uniformly from the random sample (uniform over all firings);
  - quantiles: n_examples_train / n_quantiles drawn at random from every bin
    (the remainder one each to the strongest bins);
  - mix (default): round(ratio_top * n_examples_train) from the top list at
    alternating ranks only (so half its distinct windows are always held out), the
    rest spread over the bins as for `quantiles`.
  Every draw skips a window overlapping one already chosen, so no text is shown
  twice; a bin or list that runs out gives fewer examples (nothing spills over).
* held-out set: every other example whose token window does not overlap any
  explainer window (same sequence, intersecting positions), so no scored token
  was ever shown to the explainer. Scorers draw `n_examples_test` of them round
  robin over the strata; `FillReport` counts the latents whose held-out set
  cannot give every stratum its even share (n_examples_test // (1 + n_quantiles))
  or the whole n_examples_test, for the one-line warning of interpret and score.

The draw is deterministic: its generator is seeded by `SplitConfig.seed` and the
latent's component key (SHA-256), independent of the order latents are processed.
The ids ("sequence:position") of the examples shown are stored in the
Explanation's `example_ids`; scoring removes every example overlapping one of
those ids, so the guarantee holds even if the split settings change between runs.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import msgspec
import numpy as np

from engine.core.errors import UserError
from engine.core.schemas import TRAIN_TYPES, ActivationExample, ComponentData, Sampler


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


class SplitConfig(Sampler, kw_only=True, frozen=True):
    """The sampler settings (fields and meaning: engine.core.schemas.Sampler) and the counts they imply."""

    def __post_init__(self):
        bad = [] if self.train_type in TRAIN_TYPES else [f"--train-type {self.train_type!r} ({'|'.join(TRAIN_TYPES)})"]
        bad += [f"--ratio-top {self.ratio_top} (between 0 and 1)"] if not 0.0 <= self.ratio_top <= 1.0 else []
        bad += [f"--n-quantiles {self.n_quantiles} (at least 1)"] if self.n_quantiles < 1 else []
        bad += [f"--{name.replace('_', '-')} {getattr(self, name)} (at least 0)"
                for name in ("n_examples_train", "n_examples_test", "n_non_activating") if getattr(self, name) < 0]
        if bad:
            raise UserError(f"sampler settings: {'; '.join(bad)}")

    @classmethod
    def with_budget(cls, max_examples: int, n_quantiles: int = 5, seed: int = 0) -> SplitConfig:
        """The default mix with `max_examples` shown: half from the top, the rest spread over the bins."""
        return cls(n_examples_train=max_examples, n_quantiles=n_quantiles, seed=seed)

    @property
    def explain_top(self) -> int:
        """Explainer examples taken from the top list."""
        if self.train_type == "top":
            return self.n_examples_train
        if self.train_type == "mix":
            return int(self.ratio_top * self.n_examples_train + 0.5)
        return 0

    def per_quantile(self) -> list[int]:
        """Explainer examples drawn from q1..qN (quantiles, mix): the rest of the budget, the remainder
        one each to the strongest bins."""
        if self.train_type not in ("quantiles", "mix"):
            return [0] * self.n_quantiles
        base, extra = divmod(self.n_examples_train - self.explain_top, self.n_quantiles)
        return [base + (q >= self.n_quantiles - extra) for q in range(self.n_quantiles)]

    def record(self) -> Sampler:
        """These settings as the record stored with explanations and scores."""
        return Sampler(**msgspec.structs.asdict(self))


@dataclass
class Split:
    explain: list[Window] = field(default_factory=list)
    held_out: list[Window] = field(default_factory=list)
    sampler: SplitConfig | None = None
    "The settings this split was drawn with."

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


def split_examples(c: ComponentData, cfg: SplitConfig | None = None) -> Split:
    cfg = cfg or SplitConfig()
    windows = strata(c, cfg.n_quantiles)
    rng = latent_rng(c.component_key, cfg.seed, "split")
    explain: list[Window] = []

    def clashes(w: Window) -> bool:
        return any(w.overlaps(e.sequence, e.start, e.end) for e in explain)

    # top: alternate explain / held out over the windows that do not overlap an explained one, then the rest
    tops = [w for w in windows if w.stratum == "top"]
    turn, taken = 0, []
    for w in tops:
        if clashes(w):
            continue
        if turn % 2 == 0 and len(taken) < cfg.explain_top:
            explain.append(w)
            taken.append(w)
        turn += 1
    for w in tops if cfg.train_type == "top" else ():  # top: then the odd ranks, strongest first
        if len(taken) >= cfg.explain_top:
            break
        if w not in taken and not clashes(w):
            explain.append(w)
            taken.append(w)
    if cfg.train_type == "random":  # uniform over firings: the random sample, wherever its windows were filed
        sampled = {f"{e.sequence}:{e.position}" for e in c.random_examples}
        pool = [w for w in windows if w.id in sampled]
        _draw(pool, cfg.n_examples_train, rng, explain, clashes)
    else:
        by_q: dict[str, list[Window]] = {}
        for w in windows:
            if w.stratum != "top":
                by_q.setdefault(w.stratum, []).append(w)
        shares = cfg.per_quantile()
        for q in sorted(by_q, key=stratum_order):
            _draw(by_q[q], shares[int(q[1:]) - 1], rng, explain, clashes)
    held = [w for w in windows if not clashes(w)]
    return Split(explain=explain, held_out=held, sampler=cfg)


def _draw(pool: list[Window], n: int, rng: np.random.Generator, explain: list[Window], clashes) -> None:
    """Append up to n windows of `pool` to `explain`, in random order, skipping any that overlap one chosen."""
    taken = 0
    for i in rng.permutation(len(pool)).tolist():
        if taken == n:
            break
        if not clashes(pool[i]):
            explain.append(pool[i])
            taken += 1


def strata_names(n_quantiles: int) -> list[str]:
    """top, q1 .. qN: the order scorers draw held-out windows in."""
    return ["top"] + [f"q{q}" for q in range(1, n_quantiles + 1)]


def stratum_order(name: str) -> tuple[int, int, str]:
    """Sort key: top, then q1, q2, ..., q10 (numerically), then anything else by name."""
    if name == "top":
        return (0, 0, "")
    if name[:1] == "q" and name[1:].isdigit():
        return (1, int(name[1:]), "")
    return (2, 0, name)


def shortfall(held: list[Window], cfg: Sampler) -> dict[str, int]:
    """stratum -> activating windows the requested test set lacks there (its even share, n_examples_test //
    (1 + n_quantiles), minus those held out), and 'total' when fewer than n_examples_test are held out in all."""
    names = strata_names(cfg.n_quantiles)
    share = cfg.n_examples_test // len(names)
    have = Counter(w.stratum for w in held if w.activating)
    out = {s: share - have[s] for s in names if have[s] < share}
    if sum(have.values()) < cfg.n_examples_test:
        out["total"] = cfg.n_examples_test - sum(have.values())
    return out


@dataclass
class FillReport:
    """Latents whose held-out set cannot fill the requested test set, for one warning line per run."""

    cfg: Sampler
    seen: int = 0
    short: Counter = field(default_factory=Counter)
    "stratum (or 'total') -> latents short there."
    latents_short: int = 0
    negatives_short: int = 0
    "Latents given fewer non-activating windows than they need (score only)."

    def add(self, held: list[Window], n_negatives: int | None = None) -> None:
        gaps = shortfall(held, self.cfg)
        self.seen += 1
        self.short.update(gaps.keys())
        self.latents_short += bool(gaps)
        if n_negatives is not None:
            need = min(self.cfg.n_non_activating, sum(w.activating for w in held), self.cfg.n_examples_test)
            self.negatives_short += n_negatives < need

    def warning(self, top_k: int, n_random: int) -> str | None:
        """One line, or None when every latent's test set could be filled."""
        parts = []
        if self.latents_short:
            n = self.cfg.n_examples_test
            share = n // (1 + self.cfg.n_quantiles)
            worst = ", ".join(f"{k} {v}" for k, v in self.short.most_common(4))
            parts.append(f"--n-examples-test {n} ({share} per stratum over top, q1..q{self.cfg.n_quantiles}) cannot "
                         f"be filled from the harvested sample (top_k {top_k}, n_random {n_random}) for "
                         f"{self.latents_short} of {self.seen} latents (latents short per stratum: {worst})")
        if self.negatives_short:
            parts.append(f"{self.negatives_short} of {self.seen} latents got fewer non-activating examples than "
                         f"their held-out activating ones (--n-non-activating {self.cfg.n_non_activating})")
        if not parts:
            return None
        return ("warning: " + "; ".join(parts) + " -- harvest a larger sample (n_random) or lower --n-examples-test "
                "/ --n-quantiles")


def window_centre(pos, seq_len: int, window: int, centred: bool = True):
    """The position whose ±W window the harvest stores for an example at `pos` (int or tensor positions).

    centred (--center-examples, the default): the firing itself, its window clipped to the sequence.
    Otherwise delphi's fixed chunks [j c, (j+1) c) of c = 2W+1 tokens (the last one shorter when c does not
    divide the sequence): the chunk's middle, or the sequence's last token when the chunk is too short for
    its middle, so the stored ±W window always covers the whole chunk (window_bounds)."""
    if centred:
        return pos
    mid = pos // (2 * window + 1) * (2 * window + 1) + window
    if hasattr(mid, "clamp"):
        return mid.clamp(max=seq_len - 1)
    return np.minimum(mid, seq_len - 1) if isinstance(mid, np.ndarray) else min(mid, seq_len - 1)


def window_bounds(pos, seq_len: int, window: int, centred: bool = True):
    """[start, end) of an example's window (int or numpy positions): ±W around the firing clipped to the
    sequence, or its fixed chunk. Fixed chunks never overlap, so one top example per chunk (the harvest's
    rule) means disjoint windows."""
    lo, hi = (np.maximum, np.minimum) if isinstance(pos, np.ndarray) else (max, min)
    if centred:
        return lo(0, pos - window), hi(seq_len, pos + window + 1)
    c = 2 * window + 1
    start = pos // c * c
    return start, hi(seq_len, start + c)


def overlap_reach(window: int, centred: bool = True) -> int:
    """How far from its firing an example's window reaches: W centred, up to 2W in fixed chunks."""
    return window if centred else 2 * window


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
