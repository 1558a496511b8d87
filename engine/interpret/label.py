"""One-shot labeling of chosen latents: harvest them, label them, write the seed's two files.

    python -m engine.label [FEATURES] [DICTIONARY] [HOOKPOINT] [--model ...] [--dataset ...] [--provider search|anthropic|...]

FEATURES is "11,313,251", a range, or a JSON file {"feature_indices": [...], "scores": [...]}
(what `engine.select` writes). Every argument has a default (the embedded default
model, SAE, corpus; offline search labels), so `python -m engine.label` works
offline. Output in OUTPUT_DIR (default results/):

* feature_examples.jsonl: {"feature_id", "score", "examples": [{"activation",
  "sequence_index", "token_position", "text", "char_start", "char_end"}]} per feature:
  the max_examples highest distinct firings, text[char_start:char_end] the firing token;
* feature_labels.json: {"num_features", "features": [{"feature_index", "score",
  "label_llm", "label_search", "label", "num_examples"}]}, num_examples = examples listed.

The LLM settings (provider, --label-model, API key, base URL) are checked before
anything is harvested. The same call again resumes (labels already written are kept);
a call into a folder whose run harvested other features or text removes that run's
labels, negatives and scores first (they belong to other latents).

The same as a function:

    from engine.interpret.label import run_labeling
    run_labeling([11, 313, 251], model_path=..., sae_path=..., dataset_path=..., sae_id=...)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from engine.core.cli import cli, parse_config
from engine.core.errors import UserError
from engine.core.latents import parse_latents
from engine.core.rundir import RunDir
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.interpret.config import InterpretConfig
from engine.interpret.exports import write_exports
from engine.interpret.llm import PROVIDERS

DEFAULT_FEATURES = "0-19"


def run_labeling(
    feature_indices: list[int] | str = DEFAULT_FEATURES,
    model_path: str = DEFAULT_MODEL,
    sae_path: str = DEFAULT_SAE,
    dataset_path: str = DEFAULT_DATASET,
    sae_id: str | None = None,
    output_dir: str = "results",
    n_samples: int = 1000,
    max_examples_per_feature: int = 20,
    device: str = "auto",
    column_name: str = "text",
    context_length: int = 128,
    minibatch_size_tokens: int = 16,
    label_provider: str = "search",
    label_model: str = "",
    label_base_url: str | None = None,
    max_examples_for_labeling: int = 10,
) -> Path:
    """Harvest the features, label them (LLM when a provider is given, search labels always), export.

    n_samples: sequences' worth of tokens to process (n_samples * context_length tokens).
    minibatch_size_tokens: sequences per forward pass.
    label_provider: search (offline) | anthropic | openrouter | openai-compatible.
    """
    from engine.harvest import run as harvest
    from engine.interpret.run import run_interpret

    cfg = label_config(label_provider, label_model, label_base_url, max_examples_for_labeling)
    spec = feature_indices if isinstance(feature_indices, str) else ",".join(map(str, feature_indices))
    requested, _ = parse_latents(spec)
    out = Path(output_dir)
    run = RunDir(out / "run")
    args = [model_path, sae_path, "--dataset", dataset_path, "--dataset-column", column_name, "--latents", spec,
            "--n-tokens", str(n_samples * context_length), "--context-length", str(context_length),
            "--batch-size", str(minibatch_size_tokens), "--top-k", str(max_examples_per_feature),
            "--n-random", str(max(max_examples_per_feature, 2 * max_examples_for_labeling)), "--device", device,
            "--out", str(run.root)]
    if sae_id:
        args += ["--hookpoints", sae_id]
    before = _harvested(run)
    with _parked(run):  # this flow judges its own later stages (kept if the harvest is the same, else dropped),
        harvest.main(args)  # so the harvest's refusal of a folder with later stages does not apply to it
    if before is not None and before != _harvested(run):
        _drop_labels(run)
    run_interpret(run.root, cfg)
    write_exports(run.root, out, max_examples=max_examples_per_feature)
    labels = json.loads((out / "feature_labels.json").read_text())
    print(f"label: {labels['num_features']} features -> {out / 'feature_labels.json'}, {out / 'feature_examples.jsonl'}")
    silent = sorted(set(requested) - {f["feature_index"] for f in labels["features"]})
    if silent:
        print(f"label: features {', '.join(map(str, silent))} never fired in {run.load_config().n_tokens:,} tokens, "
              "so they have no examples or labels -- raise --n-samples or use text where they fire", file=sys.stderr)
    return out


@contextlib.contextmanager
def _parked(run: RunDir):
    """The run's later stages (labels, negatives, scores) moved to RUN/.label-parked/ while the block runs, and
    back after it, whether it succeeded or not."""
    park = run.root / ".label-parked"
    moved = [d.name for d in (run.interpretations, run.negatives, run.scores) if d.exists()]
    if moved:
        park.mkdir(parents=True, exist_ok=True)
    for name in moved:
        os.rename(run.root / name, park / name)
    try:
        yield
    finally:
        for name in moved:
            os.rename(park / name, run.root / name)
        if moved:
            park.rmdir()


def _harvested(run: RunDir):
    """What the labels of a run depend on: its harvest config without `extra` (given scores); None if none yet."""
    if not run.config.exists():
        return None
    try:
        return msgspec.structs.replace(run.load_config(), extra={})
    except (msgspec.DecodeError, UserError):  # written by another version: equal to nothing
        return object()


def _drop_labels(run: RunDir) -> None:
    """An earlier call harvested other latents or text into this folder: its labels and scores describe
    that harvest (latent 0 was another feature), so they go, and this call labels afresh."""
    stale = [d for d in (run.interpretations, run.negatives, run.scores) if d.exists()]
    for d in stale:
        shutil.rmtree(d)
    if stale:
        print(f"label: removed {', '.join(d.name for d in stale)} of an earlier, different harvest in {run.root}",
              file=sys.stderr)


def label_config(provider: str, model: str, base_url: str | None, max_examples: int) -> InterpretConfig:
    """The labelling settings, checked before any work: provider, --label-model, API key, base URL."""
    if provider not in PROVIDERS:
        raise UserError(f"--provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    cfg = InterpretConfig(provider=provider, model=model, base_url=base_url, max_examples=max_examples)
    if cfg.uses_llm:
        if not model:
            raise UserError(f"--provider {provider} needs --label-model, the LLM that writes the labels "
                            "(e.g. claude-haiku-4-5)")
        cfg.make_client()  # raises ClientConfigError (missing API key, no base URL); opens no connection
    return cfg


@dataclass(frozen=True)
class LabelConfig:
    """`engine.label`: the seed's flags (its --model is the subject model, --label-model the LLM)."""

    features: str = cli(DEFAULT_FEATURES, positional="?")
    "Indices ('11,313,251'), ranges ('0-19') or a features JSON file."
    dictionary: str = cli(DEFAULT_SAE, positional="?")
    "SAE path (sae-lens/sparsify folder, params.npz)."
    hookpoint: str | None = cli(None, positional="?")
    "Hookpoint (default: from the SAE config)."
    model: str = DEFAULT_MODEL
    "Subject model: local HF folder or hub name."
    dataset: str = DEFAULT_DATASET
    "Text to harvest: jsonl/json/txt(.gz), parquet, arrow, datasets folder or hub name."
    column: str = cli("text", aliases=("--dataset_column",))
    "Column holding the text."
    output_dir: str = "results"
    "Where feature_labels.json and feature_examples.jsonl go (the run itself goes to OUTPUT_DIR/run)."
    n_samples: int = 1000
    "Sequences' worth of tokens to harvest (n_samples * context_length tokens)."
    max_examples: int = 20
    "Examples kept per feature."
    max_examples_for_labeling: int = 10
    "Examples shown to the labeller per feature."
    batch_size: int = cli(16, aliases=("--minibatch_size_tokens",))
    "Sequences per forward pass."
    context_length: int = cli(128, aliases=("--cache_ctx_len",))
    "Tokens per sequence."
    device: str = "auto"
    "cpu, cuda, cuda:1 or auto."
    provider: str = cli("search", choices=PROVIDERS)
    "search (offline) | anthropic | openrouter | openai-compatible."
    label_model: str = ""
    "LLM id for the labels (not needed for search)."
    base_url: str | None = None
    "API root for openai-compatible servers, e.g. http://127.0.0.1:8000/v1."


def main(argv: list[str] | None = None) -> Path:
    _, a = parse_config(LabelConfig, argv, prog="python -m engine.label", doc=__doc__)
    return run_labeling(a.features, a.model, a.dictionary, a.dataset, a.hookpoint, a.output_dir, a.n_samples,
                        a.max_examples, a.device, a.column, a.context_length, a.batch_size, a.provider, a.label_model, a.base_url,
                        a.max_examples_for_labeling)
