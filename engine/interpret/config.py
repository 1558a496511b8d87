"""`engine.interpret`'s settings: the shared LLM flags (ClientArgs) plus the explainer's own."""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.cli import cli
from engine.interpret.llm import ClientArgs

EXPLAINERS = ("default", "contrastive", "cot")
NON_ACTIVATING = ("random", "neighbours", "faiss")


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
    n_non_activating: int = cli(8, aliases=("--n_non_activating",))
    "Non-activating examples shown to the contrastive explainer."
    latents: str = ""
    "Dictionary indices to explain ('1,5,9-20' or a features JSON file); '' = all."
    max_examples: int = cli(20, aliases=("--n_examples_train",))
    "Activation examples shown per latent (see SplitConfig.with_budget)."
    max_tokens: int = 1024
    "Output ceiling per explanation."
    temperature: float = 0.0
    "Sampling temperature of the explainer."
    dry_run: bool = False
    "Print one prompt and the token and cost estimate for the whole run; send nothing."
    shard: str = ""
    "'k/N': explain only latent range k of N, into its own log (merge with python -m engine.merge); '' = all."
    progress: bool = True
    "Show a progress bar."

    @property
    def explainer_name(self) -> str:
        return "search" if not self.uses_llm else self.explainer
