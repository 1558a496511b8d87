"""`engine.interpret`'s settings: the shared LLM flags (ClientArgs) plus the explainer's own."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.cli import cli
from engine.core.examples import SplitConfig
from engine.core.schemas import TRAIN_TYPES
from engine.interpret.llm import ClientArgs

EXPLAINERS = ("default", "contrastive", "cot")
NON_ACTIVATING = ("random", "neighbours", "faiss")
NEIGHBOURS = ("cofiring", "decoder", "encoder")
"--neighbours: which latents count as similar (co-firing Jaccard, or decoder / encoder direction cosine)."


@dataclass(frozen=True)
class InterpretConfig(ClientArgs):
    """One `engine.interpret` run."""

    batch: bool = False
    "Anthropic Message Batches (half price, results within 24 h)."
    batch_poll_s: float = 30.0
    "Seconds between batch status polls."
    explainer: str = cli("default", choices=EXPLAINERS)
    "default | contrastive (adds non-activating examples) | cot (step-by-step reasoning)."
    non_activating: str = cli("random", choices=NON_ACTIVATING, aliases=("--non_activating_source",))
    "Source of the contrastive explainer's non-activating examples: random | neighbours | faiss."
    neighbours: str = cli("cofiring", choices=NEIGHBOURS)
    "With --non-activating neighbours: which latents count as similar: cofiring (Jaccard of co-firing), decoder or encoder (direction cosine, RUN/harvest/directions.safetensors)."
    n_non_activating: int = cli(8, aliases=("--n_non_activating",))
    "Non-activating examples shown to the contrastive explainer."
    latents: str = ""
    "Dictionary indices to explain ('1,5,9-20' or a features JSON file); '' = all."
    max_examples: int = cli(20, aliases=("--n-examples-train", "--n_examples_train"))
    "Activation examples shown per latent, drawn as --train-type says (engine.core.examples)."
    train_type: str = cli("mix", choices=TRAIN_TYPES, aliases=("--train_type",))
    "top (strongest) | random (uniform over firings) | quantiles (spread over the strata) | mix (--ratio-top of top)."
    ratio_top: float = cli(0.5, aliases=("--ratio_top",))
    "mix: share of the shown examples taken from the top list; the rest are spread over the strata."
    n_quantiles: int = cli(5, aliases=("--n_quantiles",))
    "Equal-count activation strata of the uniform sample (q1 weakest .. qN), besides the top list."
    n_examples_test: int = cli(40, aliases=("--n_examples_test",))
    "Held-out activating examples scoring will ask for; a one-line warning when the harvested sample cannot fill them."
    max_tokens: int = 1024
    "Output ceiling per explanation."
    temperature: float = 0.0
    "Sampling temperature of the explainer."
    dry_run: bool = False
    "Print one prompt and the token and cost estimate for the whole run; send nothing."
    overwrite: tuple[str, ...] = cli((), choices=("explanations",), metavar="STAGE")
    "Start afresh: move RUN's explanations (and the scores of them) aside into RUN/replaced-<time>/ first (never deleted)."
    min_examples: int = cli(0, aliases=("--min_examples",))
    "Latents that fired fewer times than this are not explained (they stay in the harvest); the run says how many."
    shard: str = ""
    "'k/N': explain only latent range k of N, into its own log (merge with python -m engine.merge); '' = all."
    progress: bool = True
    "Show a progress bar."

    @property
    def explainer_name(self) -> str:
        return "search" if not self.uses_llm else self.explainer

    def __post_init__(self):
        self.split_config(0)  # a bad sampler setting is a one-line UserError before any work

    def split_config(self, seed: int) -> SplitConfig:
        """The sampler settings of this run (seed: the run's, from harvest/config.json)."""
        return SplitConfig(n_examples_train=self.max_examples, train_type=self.train_type, ratio_top=self.ratio_top,
                           n_quantiles=self.n_quantiles, n_examples_test=self.n_examples_test,
                           n_non_activating=self.n_non_activating, seed=seed)
