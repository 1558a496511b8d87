"""Data formats shared by harvest, interpret, score and report.

Every record on disk is one of these msgspec Structs, written as JSON Lines
(one record per line) or JSON. Readers decode them with `msgspec.json.Decoder(T)`,
so a file written by an older or newer version fails loudly on a type mismatch
instead of silently producing wrong numbers.

Naming: a *component* (or latent) is one unit of a dictionary: an SAE/transcoder
latent, an SPD component or a raw neuron. `latent` is its global index over all
harvested hookpoints; `component_idx` its index inside its own hookpoint's
dictionary; `component_key` is "<hookpoint>/<component_idx>".

`Usage` (tokens and price of one LLM request) belongs to the clients and is
re-exported here; `clients.structured.provider_schema(T)` turns a Struct such as
`ExplanationOutput` into the JSON Schema providers accept for structured output.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from clients.usage import Usage

__all__ = ["Usage"]  # the rest are the Structs below
# --------------------------------------------------------------------------- harvest


class Scored(msgspec.Struct, array_like=True, frozen=True):
    """One entry of a ranked list, written compactly as `[key, index, value, count]`."""

    key: str
    "Display string: a decoded token or a component key."
    index: int
    "Token id or global latent index."
    value: float
    "The score this list is ranked by (precision, recall, PMI, ...)."
    count: float
    "Joint count (or probability mass) behind the score, to judge its noise."


class TokenStats(msgspec.Struct):
    """Associations between a component and tokens (input: the token at the firing
    position; output: the model's predicted next-token probability mass)."""

    top_precision: list[Scored]
    "P(component fires | token): share of the token's mass that falls on firings."
    top_recall: list[Scored]
    "P(token | component fires): share of the component's firings on the token."
    top_pmi: list[Scored]
    "log P(token, fires) / (P(token) P(fires)); lists only tokens with count >= min_count."
    exact: bool
    "False when counts come from the bounded heavy-hitter sketch (see error_bound)."
    error_bound: float
    "Upper bound on how much any listed count may be under-estimated (0 when exact)."
    measure: str = ""
    "What is counted, the same on both sides of precision and PMI: 'input token' (occurrences) or 'top-T next-token mass' (the model's T most likely next tokens' probabilities, at firing positions for the joint and at every counted position for the marginal)."


class ComponentCorrelations(msgspec.Struct):
    """Co-firing neighbours of a component (same token position)."""

    precision: list[Scored]
    "P(j fires | i fires)."
    recall: list[Scored]
    "P(i fires | j fires)."
    pmi: list[Scored]
    "log co_ij N / (n_i n_j)."
    jaccard: list[Scored]
    "co_ij / (n_i + n_j - co_ij)."
    exact: bool
    "False when the sparse-pair sketch was used."
    error_bound: float
    "Upper bound on the under-estimate of any listed joint count (by the sketch; on top of sampling error)."
    sample_rate: float = 1.0
    "Share of token positions whose co-firings were counted (a deterministic uniform sample; 1: all). Below 1, counts are estimates: sampled count / rate."
    count_se: dict[int, float] = {}
    "Below sample_rate 1: the standard error of each listed latent's co-firing count estimate, sqrt(c rate (1 - rate)) / rate."


class ActivationExample(msgspec.Struct):
    """A token window around one firing, with this component's activation on every token."""

    sequence: int
    "Row of the run's token store (harvest/tokens.bin)."
    position: int
    "Position of the firing token inside that sequence."
    activation: float
    "Activation at the firing position."
    token_ids: list[int]
    "Token ids of the window, left to right."
    tokens: list[str]
    "The same tokens decoded one by one."
    activations: list[float]
    "This component's activation on each token of the window (0 where it does not fire)."
    firing_index: int
    "Index of the firing token inside the window."
    source: Literal["top", "random"]
    "top: among the K largest activations; random: uniform sample of all firings."


class LogitLens(msgspec.Struct):
    """Tokens the decoder direction promotes and suppresses through the unembedding."""

    top: list[Scored]
    bottom: list[Scored]


class ComponentData(msgspec.Struct):
    """Everything harvested about one component; one line of harvest/components.jsonl."""

    component_key: str
    hookpoint: str
    component_idx: int
    latent: int
    firing_count: int
    "Token positions where the component fired (activation > 0 after the dictionary's activation)."
    firing_density: float
    "firing_count / tokens seen."
    mean_activation: float
    "Mean activation over firings."
    max_activation: float
    histogram: list[int]
    "Firing counts per log-spaced activation bin; edges in harvest/config.json."
    top_examples: list[ActivationExample]
    "Max-activating examples, highest first."
    random_examples: list[ActivationExample]
    "Uniform random sample of firings (bottom-k of i.i.d. keys), in key order."
    input_token_stats: TokenStats
    output_token_stats: TokenStats | None
    "None when the harvest stopped the forward pass early (no logits)."
    logit_lens: LogitLens | None
    "None for dictionaries without a decoder into the residual stream."
    correlations: ComponentCorrelations


DIRECTIONS_FILE = "directions.safetensors"
"RUN/harvest/ file of decoder-cosine neighbours and logit-effect histograms (layout: engine/harvest/neighbours.py)."


class HookpointInfo(msgspec.Struct):
    """One hooked site and the dictionary attached to it."""

    name: str
    "Hookpoint as the user gave it."
    module: str
    "Resolved HF module path."
    dictionary: str
    "Path of the dictionary."
    kind: str
    "Dictionary format/activation (e.g. sae_lens:topk)."
    d_in: int
    n_latents: int
    offset: int
    "Global index of this hookpoint's first latent."
    latent_ids: list[int] | None = None
    "Original dictionary indices when only a subset was harvested (--latents); else None."
    revision: str | None = None
    "Hub commit the dictionary's files were read at, when it was given by name (sae-lens:, gemma-scope:, OWNER/REPO)."


class RunConfig(msgspec.Struct, kw_only=True):
    """What a harvest ran with and what it produced; harvest/config.json."""

    model: str
    model_class: str
    n_layers: int
    dataset: str
    dataset_column: str
    context_length: int
    batch_size: int
    n_sequences: int
    n_tokens: int
    "Token positions that counted (BOS and padding excluded)."
    hookpoints: list[HookpointInfo]
    n_latents: int
    top_k: int
    n_random: int
    window: int
    "Tokens kept each side of a firing."
    center_examples: bool = True
    "Example windows centred on the firing (True), or delphi's fixed chunks of 2 window + 1 tokens holding it (False)."
    top_chunk: int = 0
    "Top-K rule: at most one top example per latent in each chunk [j c, (j+1) c) of a sequence (c = top_chunk, 2 window + 1 by default); 0: no limit (older runs)."
    histogram_edges: list[float]
    filter_bos: bool
    output_stats: bool
    seed: int
    engine_version: str
    backend: str
    "torch reference path or triton kernels."
    dataset_name: str | None = None
    "HF dataset config (--dataset-name), if any."
    dataset_split: str | None = None
    "Split (spec) read through `datasets`, e.g. train or train[:1%]; None for jsonl/txt files, which have none."
    random_dictionary: bool = False
    "The dictionaries' weights were replaced by random ones (--random-dictionary): a control run."
    dtype: str = "float32"
    "The model's dtype during the harvest (--dtype; runs before it was recorded read as float32)."
    spd_ci_threshold: float = 0.0
    "SPD runs: the causal importance a component had to exceed to fire (--spd-ci-threshold)."
    model_revision: str | None = None
    "A model read from the hub: the commit it was read at, which replays, merges and scorers load (None: a local folder)."
    extra: dict[str, Any] = {}


# --------------------------------------------------------------------------- interpret / score


TRAIN_TYPES = ("top", "random", "quantiles", "mix")
"How the explainer's examples are drawn (engine.core.examples)."


class Sampler(msgspec.Struct, kw_only=True, frozen=True):
    """Which examples the explainer sees and which are scored (delphi's sampler controls), as recorded with
    every Explanation and ScoreResult. The draw itself is engine.core.examples.split_examples."""

    n_examples_train: int = 20
    "Activation examples shown to the explainer."
    train_type: Literal["top", "random", "quantiles", "mix"] = "mix"
    "top: the strongest | random: uniform over firings | quantiles: spread over activation strata | mix: both."
    ratio_top: float = 0.5
    "mix: share of the shown examples taken from the top list (the rest spread over the strata)."
    n_quantiles: int = 5
    "Equal-count activation strata q1 (weakest) .. qN of the uniform sample (the top list is stratum 'top')."
    n_examples_test: int = 40
    "Held-out activating examples per scored latent, spread over top, q1..qN."
    n_non_activating: int = 40
    "Non-activating examples per scored latent (contrastive explainer: shown to it)."
    seed: int = 0
    "Mixed with the component key to seed each latent's draw."


class ExplanationOutput(msgspec.Struct, forbid_unknown_fields=True):
    """What the explainer LLM must return (sent as a JSON schema)."""

    reasoning: str
    "Two to four sentences on the evidence."
    label: str
    "The explanation: a short phrase, under ten words."
    confidence: Literal["low", "medium", "high"]


class Explanation(msgspec.Struct, kw_only=True):
    """One explanation for one component; one line of interpretations/results.jsonl."""

    component_key: str
    latent: int
    label: str
    "The explanation used downstream (LLM label, or the search label when no LLM ran)."
    confidence: str
    reasoning: str
    search_label: str
    "Offline keyword label (no LLM), always present."
    source: Literal["llm", "search"]
    model: str
    explainer: str
    "default | contrastive | cot | search"
    prompt_hash: str
    raw_response: str
    example_ids: list[str]
    "`sequence:position` of the examples shown (the held-out set excludes them)."
    usage: Usage = msgspec.field(default_factory=Usage)
    error: str | None = None
    "Classified failure (e.g. refusal, truncated, invalid_json); label falls back to search_label."
    sampler: Sampler | None = None
    "The sampler settings its examples were drawn with (None in files written before they were recorded)."


class Metrics(msgspec.Struct, kw_only=True):
    """Classification metrics of one set of judged examples, with bootstrap 95% intervals."""

    n_examples: int
    accuracy: float
    balanced_accuracy: float
    precision: float
    recall: float
    f1: float
    auc: float | None
    "Area under ROC where the scorer yields probabilities."
    ci: dict[str, list[float]]
    "Bootstrap 95% interval per metric: name -> [low, high]."
    per_quantile_recall: dict[str, float]
    "Recall of the activating examples per activation stratum (top, q1..qN)."
    per_stratum_n: dict[str, int] = {}
    "Judged examples per stratum (top, q1..qN; neg and fuzzed for the non-activating ones)."


SCORE_METRICS = ("f1", "precision", "recall", "balanced_accuracy", "auc")
"The per-latent headline metrics (exports, report columns)."


class ScoreResult(Metrics, kw_only=True):
    """One scorer's verdict on one explanation; one line of scores/<scorer>.jsonl."""

    component_key: str
    latent: int
    scorer: str
    label: str
    model: str
    usage: Usage = msgspec.field(default_factory=Usage)
    error: str | None = None
    """'incomplete' when fewer than the required share of n_planned excerpts were judged (not final: retried by the
    next engine.score run, left out of summaries); else a classified failure, or None."""
    n_planned: int = 0
    "Excerpts the scorer set out to judge; n_examples of them were judged (0 in files written before this field)."
    sampler: Sampler | None = None
    "The explanation's sampler settings with this scoring's n_quantiles, n_examples_test and n_non_activating."
