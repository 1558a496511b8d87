"""What every scorer takes and returns: ScoreConfig, ScoreItem, LLMCall, Row, SimWindow, Details.

Scorers import this module, never the registry (engine.score.scorers).
"""


from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from engine.core.cli import cli
from engine.core.examples import Window, latent_rng
from engine.core.schemas import Sampler
from engine.interpret.prompts import Prompt

if TYPE_CHECKING:
    from clients.base import CompletionRequest


@dataclass(frozen=True)
class ScoreConfig:
    """Sizes and options shared by the scorers."""

    n_activating: int = cli(40, aliases=("--n-examples-test", "--n_examples_test"))
    "Held-out activating windows per latent (fewer when fewer are held out), spread over the strata."
    n_negatives: int = cli(40, aliases=("--n-non-activating", "--n_non_activating"))
    "Most non-activating windows per latent; scorers use as many as activating ones (balanced classes)."
    per_prompt: int = cli(5, aliases=("--num_examples_per_scorer_prompt",))
    "Excerpts per detection / fuzz / intruder prompt."
    n_simulated: int = 10
    "Windows of each class sent to the simulator (one request each)."
    logprobs: int = 0
    "Top logprobs per output token (openai-compatible only): gives detection/fuzz AUC and simulation expected values."
    max_tokens: int = 512
    "Output ceiling per judge request."
    n_boot: int = 1000
    "Bootstrap resamples for the 95% intervals."
    min_judged: float = 1.0
    ("Share of a latent's planned excerpts that must be judged for its score to be final; below it the record is "
     "'incomplete', retried by the next run and left out of summaries.")
    seed: int = 0
    "Mixed with the component key and scorer name for every random choice."
    surprisal_model: str = ""
    "Local HF causal LM for the surprisal scorer ('' = the run's own model)."
    surprisal_template: str = "Text containing {explanation}:\n"
    "Prefix placed before each excerpt by the surprisal scorer."
    surprisal_placeholder: str = "anything"
    "What the template holds in the baseline condition instead of the explanation."


@dataclass
class ScoreItem:
    """What one latent's explanation is scored on."""

    key: str
    latent: int
    label: str
    max_act: float
    activating: list[Window]
    negatives: list[Window]
    seed: int = 0
    sampler: Sampler | None = None
    "The sampler settings recorded with the results (engine.score.config.ScoreRunConfig.scoring_config)."

    def rng(self, salt: str) -> np.random.Generator:
        return latent_rng(self.key, self.seed, salt)


@dataclass(frozen=True)
class LLMCall:
    """One judge request of a scorer: a rendered prompt and how to ask for its answer."""

    prompt: Prompt
    schema: dict
    schema_name: str
    max_tokens: int
    logprobs: int = 0

    def request(self, custom_id: str) -> CompletionRequest:
        return self.prompt.request(custom_id, max_tokens=self.max_tokens, schema=self.schema,
                                   schema_name=self.schema_name, logprobs=self.logprobs)


class Row(msgspec.Struct, array_like=True):
    """One judged example: `[id, stratum, activating, prediction, probability]`."""

    id: str
    stratum: str
    activating: bool
    prediction: bool | None
    "None when the judge's reply for it could not be used (counted in n_failed)."
    probability: float | None = None
    "P(activating) or any ranking score (similarity, simulated max), when the scorer has one."


class SimWindow(msgspec.Struct, array_like=True):
    """Simulation of one window: `[id, stratum, true activations, predicted 0-10 values or null]`."""

    id: str
    stratum: str
    true: list[float]
    predicted: list[float] | None


class Details(msgspec.Struct, kw_only=True):
    """Everything a scorer saw and answered for one latent; one line of scores/details/<scorer>.jsonl."""

    component_key: str
    latent: int
    scorer: str
    label: str
    rows: list[Row]
    n_failed: int = 0
    "Examples whose judgement failed (error or unparsable reply)."
    errors: dict[str, int] = {}
    "Failed requests by error code."
    extra: dict[str, float] = {}
    "Scorer-specific numbers: simulation pearson, intruder group_accuracy."
    windows: list[SimWindow] = []
    "Simulation only."


def stratified(windows: list[Window], n: int, rng: np.random.Generator) -> list[Window]:
    """Up to n windows, round robin over the strata (in name order: q1, q2, ..., top), random within each:
    every stratum gets n // (number of strata) when it holds that many, and the strata that hold more fill
    the rest."""
    by: dict[str, list[Window]] = {}
    for w in windows:
        by.setdefault(w.stratum, []).append(w)
    queues = {k: [v[i] for i in rng.permutation(len(v))] for k, v in sorted(by.items())}
    out: list[Window] = []
    while len(out) < n and any(queues.values()):
        for k in list(queues):
            if queues[k] and len(out) < n:
                out.append(queues[k].pop())
    return out


def ranked(item: ScoreItem, name: str, cfg: ScoreConfig, score) -> tuple[Details, np.ndarray]:
    """Offline ranking scorers: up to cfg.n_activating stratified activating windows and as many
    non-activating ones, ranked by `score(windows) -> [n]` (higher: more like the explanation).
    The k highest are predicted activating, k = the number of activating windows (a threshold
    fixed by the design, not fit to the answers); ties are broken at random, not by list order
    (activating windows come first). Rows keep the score, which gives the AUC."""
    rng = item.rng(name)
    pos = stratified(item.activating, cfg.n_activating, rng)
    windows = pos + item.negatives[: min(cfg.n_negatives, len(pos))]  # balanced classes
    if not windows:
        return Details(component_key=item.key, latent=item.latent, scorer=name, label=item.label, rows=[]), np.zeros(0)
    s = np.asarray(score(windows), dtype=np.float64)
    predicted = np.zeros(len(windows), dtype=bool)
    predicted[np.lexsort((rng.random(len(windows)), -s))[: len(pos)]] = True
    rows = [Row(w.id, w.stratum, w.activating, bool(p), float(v)) for w, p, v in zip(windows, predicted, s)]
    return Details(component_key=item.key, latent=item.latent, scorer=name, label=item.label, rows=rows), s
