"""One-shot labeling of chosen latents: harvest them, label them, write the seed's two files.

    python -m engine.label [FEATURES] [DICTIONARY] [HOOKPOINT] [--model ...] [--dataset ...] [--provider search|anthropic|...]

FEATURES is "11,313,251", a range, or a JSON file {"feature_indices": [...], "scores": [...]}
(what `engine.select` writes). Every argument has a default (the embedded default
model, SAE, corpus; offline search labels), so `python -m engine.label` works
offline. Output in OUTPUT_DIR (default results/):

* feature_examples.jsonl: {"feature_id", "score", "examples": [{"activation",
  "sequence_index", "token_position", "text"}]} per feature;
* feature_labels.json: {"num_features", "features": [{"feature_index", "score",
  "label_llm", "label_search", "label", "num_examples"}]}.

The same as a function:

    from engine.interpret.label import run_labeling
    run_labeling([11, 313, 251], model_path=..., sae_path=..., dataset_path=..., sae_id=...)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.core.cli import cli, parse_config
from engine.core.rundir import RunDir
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
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

    n_samples: dataset documents' worth of tokens to process (n_samples * context_length tokens).
    label_provider: search (offline) | anthropic | openrouter | openai-compatible.
    """
    from engine.harvest import run as harvest
    from engine.interpret import run as interpret

    spec = feature_indices if isinstance(feature_indices, str) else ",".join(map(str, feature_indices))
    out = Path(output_dir)
    run = RunDir(out / "run")
    args = [model_path, sae_path, "--dataset", dataset_path, "--dataset-column", column_name, "--latents", spec,
            "--n-tokens", str(n_samples * context_length), "--context-length", str(context_length),
            "--batch-size", str(minibatch_size_tokens), "--top-k", str(max_examples_per_feature),
            "--n-random", str(max(max_examples_per_feature, 2 * max_examples_for_labeling)), "--device", device,
            "--out", str(run.root)]
    if sae_id:
        args += ["--hookpoints", sae_id]
    harvest.main(args)
    iargs = [str(run.root), "--provider", label_provider, "--max-examples", str(max_examples_for_labeling)]
    if label_model:
        iargs += ["--model", label_model]
    if label_base_url:
        iargs += ["--base-url", label_base_url]
    interpret.main(iargs)
    (out / "feature_labels.json").write_bytes(run.feature_labels.read_bytes())
    with open(run.feature_examples) as src, open(out / "feature_examples.jsonl", "w") as dst:
        for line in src:  # the seed keeps the max_examples_per_feature highest activations
            rec = json.loads(line)
            rec["examples"] = sorted(rec["examples"], key=lambda e: -e["activation"])[:max_examples_per_feature]
            dst.write(json.dumps(rec) + "\n")
    labels = json.loads((out / "feature_labels.json").read_text())
    print(f"label: {labels['num_features']} features -> {out / 'feature_labels.json'}, {out / 'feature_examples.jsonl'}")
    return out


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
                        a.max_examples, a.device, a.column, a.context_length, 16, a.provider, a.label_model, a.base_url,
                        a.max_examples_for_labeling)
