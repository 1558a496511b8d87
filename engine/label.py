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

    from engine.label import run_labeling
    run_labeling([11, 313, 251], model_path=..., sae_path=..., dataset_path=..., sae_id=...)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.errors import run_cli
from engine.harvest import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE

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
    from engine import harvest, interpret

    spec = feature_indices if isinstance(feature_indices, str) else ",".join(map(str, feature_indices))
    out = Path(output_dir)
    run = out / "run"
    args = [model_path, sae_path, "--dataset", dataset_path, "--dataset-column", column_name, "--latents", spec,
            "--n-tokens", str(n_samples * context_length), "--context-length", str(context_length),
            "--batch-size", str(minibatch_size_tokens), "--top-k", str(max_examples_per_feature),
            "--n-random", str(max(max_examples_per_feature, 2 * max_examples_for_labeling)), "--device", device,
            "--out", str(run)]
    if sae_id:
        args += ["--hookpoints", sae_id]
    harvest.main(args)
    iargs = [str(run), "--provider", label_provider, "--max-examples", str(max_examples_for_labeling)]
    if label_model:
        iargs += ["--model", label_model]
    if label_base_url:
        iargs += ["--base-url", label_base_url]
    interpret.main(iargs)
    (out / "feature_labels.json").write_bytes((run / "interpretations" / "feature_labels.json").read_bytes())
    with open(run / "interpretations" / "feature_examples.jsonl") as src, open(out / "feature_examples.jsonl", "w") as dst:
        for line in src:  # the seed keeps the max_examples_per_feature highest activations
            rec = json.loads(line)
            rec["examples"] = sorted(rec["examples"], key=lambda e: -e["activation"])[:max_examples_per_feature]
            dst.write(json.dumps(rec) + "\n")
    labels = json.loads((out / "feature_labels.json").read_text())
    print(f"label: {labels['num_features']} features -> {out / 'feature_labels.json'}, {out / 'feature_examples.jsonl'}")
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m engine.label", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features", nargs="?", default=DEFAULT_FEATURES, help="indices, ranges or a features JSON file")
    p.add_argument("dictionary", nargs="?", default=DEFAULT_SAE, help="SAE path (sae-lens/sparsify folder, params.npz)")
    p.add_argument("hookpoint", nargs="?", default=None, help="hookpoint (default: from the SAE config)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--column", default="text")
    p.add_argument("--output-dir", default="results")
    p.add_argument("--n-samples", type=int, default=1000)
    p.add_argument("--max-examples", type=int, default=20, help="examples kept per feature")
    p.add_argument("--max-examples-for-labeling", type=int, default=10)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--provider", default="search", help="search (offline) | anthropic | openrouter | openai-compatible")
    p.add_argument("--label-model", default="")
    p.add_argument("--base-url", default=None)
    a = p.parse_args(argv)
    return run_labeling(a.features, a.model, a.dictionary, a.dataset, a.hookpoint, a.output_dir, a.n_samples,
                        a.max_examples, a.device, a.column, a.context_length, 16, a.provider, a.label_model, a.base_url,
                        a.max_examples_for_labeling)


if __name__ == "__main__":
    run_cli(main)
