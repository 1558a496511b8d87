"""`engine.score`'s settings: the shared LLM flags (ClientArgs), the scorers' sizes, best-of-n."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.cli import cli
from engine.core.errors import UserError
from engine.core.examples import SplitConfig
from engine.core.schemas import TRAIN_TYPES, Explanation
from engine.interpret.config import EXPLAINERS, NEIGHBOURS, NON_ACTIVATING
from engine.interpret.llm import ClientArgs
from engine.score.scorers.base import ScoreConfig


@dataclass(frozen=True)
class ScoreRunConfig(ClientArgs):
    """One `engine.score` run (--provider is the judge; embedding and surprisal need none)."""

    scorers: tuple[str, ...] = cli(("detection", "fuzz"), metavar="SCORER")
    "Scorers to run: detection fuzz simulation embedding intruder surprisal (embedding and surprisal run offline)."
    non_activating: str = cli("random", choices=NON_ACTIVATING, aliases=("--non_activating_source",))
    "Source of the non-activating examples: random | neighbours | faiss (see engine.interpret.negatives)."
    neighbours: str = cli("cofiring", choices=NEIGHBOURS)
    "With --non-activating neighbours: which latents count as similar: cofiring, decoder or encoder (direction cosine)."
    latents: str = ""
    "Dictionary indices to score ('1,5,9-20' or a features JSON file); '' = all with an explanation."
    best_of: int = 1
    "Explanations generated per latent; the best on a selection half of the held-out set is kept (1 = off)."
    best_of_temperature: float = 1.0
    "Sampling temperature of the --best-of candidates."
    explainer: str = cli("default", choices=EXPLAINERS)
    "Explainer variant for --best-of candidates."
    max_examples: int = cli(20, aliases=("--n-examples-train", "--n_examples_train"))
    "Examples shown to the --best-of candidates' explainer."
    train_type: str = cli("mix", choices=TRAIN_TYPES, aliases=("--train_type",))
    "How the --best-of candidates' examples are drawn: top | random | quantiles | mix (see engine.interpret)."
    ratio_top: float = cli(0.5, aliases=("--ratio_top",))
    "mix: share of the --best-of candidates' examples taken from the top list."
    n_quantiles: int | None = cli(None, aliases=("--n_quantiles",))
    "Activation strata of the held-out set (and of --best-of draws); default: as the explanation recorded, else 5."
    score: ScoreConfig = cli(default_factory=ScoreConfig)
    overwrite: tuple[str, ...] = cli((), choices=("scores",), metavar="STAGE")
    "Start afresh: move RUN's scores aside into RUN/replaced-<time>/ first (never deleted)."
    min_examples: int = cli(0, aliases=("--min_examples",))
    "Latents that fired fewer times than this are not scored (they stay in the harvest); the summary counts them."
    shard: str = ""
    "'k/N': score only latent range k of N, into its own logs (merge with python -m engine.merge); '' = all."
    progress: bool = True
    "Show progress bars."

    def __post_init__(self):
        self.candidate_config(0)  # a bad sampler setting is a one-line UserError before any work
        if self.n_quantiles is not None and self.n_quantiles < 1:
            raise UserError(f"--n-quantiles {self.n_quantiles}: at least 1 -- or leave it out for the explanation's own")
        if not 0.0 <= self.score.min_judged <= 1.0:
            raise UserError(f"--min-judged {self.score.min_judged}: a share between 0 and 1")

    def candidate_config(self, seed: int) -> SplitConfig:
        """The sampler settings of --best-of candidates (seed: the run's)."""
        return SplitConfig(n_examples_train=self.max_examples, train_type=self.train_type, ratio_top=self.ratio_top,
                           n_quantiles=self.n_quantiles or 5, n_examples_test=self.score.n_activating,
                           n_non_activating=self.score.n_negatives, seed=seed)

    def scoring_config(self, e: Explanation, seed: int) -> SplitConfig:
        """How `e` is scored: the sampler it was explained with (these flags' when it has no record), with this
        run's n_quantiles (when given), n_examples_test and n_non_activating."""
        base = e.sampler or self.candidate_config(seed)
        return SplitConfig(n_examples_train=base.n_examples_train, train_type=base.train_type,
                           ratio_top=base.ratio_top, n_quantiles=self.n_quantiles or base.n_quantiles,
                           n_examples_test=self.score.n_activating, n_non_activating=self.score.n_negatives,
                           seed=base.seed)
