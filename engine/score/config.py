"""`engine.score`'s settings: the shared LLM flags (ClientArgs), the scorers' sizes, best-of-n."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.cli import cli
from engine.interpret.config import EXPLAINERS, NON_ACTIVATING
from engine.interpret.llm import ClientArgs
from engine.score.scorers.base import ScoreConfig


@dataclass(frozen=True)
class ScoreRunConfig(ClientArgs):
    """One `engine.score` run (--provider is the judge; embedding and surprisal need none)."""

    scorers: tuple[str, ...] = cli(("detection", "fuzz"), metavar="SCORER")
    "Scorers to run: detection fuzz simulation embedding intruder surprisal (embedding and surprisal run offline)."
    non_activating: str = cli("random", choices=NON_ACTIVATING, aliases=("--non_activating_source",))
    "Source of the non-activating examples: random | neighbours | faiss (see engine.interpret.negatives)."
    latents: str = ""
    "Dictionary indices to score ('1,5,9-20' or a features JSON file); '' = all with an explanation."
    best_of: int = 1
    "Explanations generated per latent; the best on a selection half of the held-out set is kept (1 = off)."
    best_of_temperature: float = 1.0
    "Sampling temperature of the --best-of candidates."
    explainer: str = cli("default", choices=EXPLAINERS)
    "Explainer variant for --best-of candidates."
    max_examples: int = 20
    "Examples shown to the --best-of candidates' explainer."
    score: ScoreConfig = cli(default_factory=ScoreConfig)
    shard: str = ""
    "'k/N': score only latent range k of N, into its own logs (merge with python -m engine.merge); '' = all."
    progress: bool = True
    "Show progress bars."
