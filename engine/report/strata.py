"""Random firings grouped by activation stratum, the strata scoring uses (engine/core/examples.py).

The uniform sample, minus firings already among the top examples, is cut into
`n_quantiles` equal-count bins by activation rank: q1 the weakest, qN the strongest.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.examples import SplitConfig, strata
from engine.core.schemas import ActivationExample, ComponentData


@dataclass(frozen=True)
class Stratum:
    name: str
    "q1..qN"
    examples: list[ActivationExample]
    "Strongest first."
    lo: float
    "Smallest activation at the firing position in the group."
    hi: float


def stratum_groups(c: ComponentData, n_quantiles: int = SplitConfig().n_quantiles) -> tuple[list[Stratum], int]:
    """(groups strongest stratum first, how many random firings were left out as already among the top)."""
    by_id = {f"{e.sequence}:{e.position}": e for e in c.random_examples}
    groups: dict[str, list[ActivationExample]] = {}
    for w in strata(c, n_quantiles):
        if w.stratum != "top":
            groups.setdefault(w.stratum, []).append(by_id[w.id])
    out = []
    for name in sorted(groups, key=lambda s: -int(s[1:])):
        exs = sorted(groups[name], key=lambda e: -e.activation)
        out.append(Stratum(name, exs, min(e.activation for e in exs), max(e.activation for e in exs)))
    return out, len(c.random_examples) - sum(len(g.examples) for g in out)
