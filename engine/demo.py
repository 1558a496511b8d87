"""The whole product on the embedded default, offline, on a CPU: harvest -> offline labels -> report.

    python -m engine.demo [--out runs/demo] [--n-tokens 40000]

Prints the demo model's held-out loss next to the uniform baseline, then where
every output is.
"""

from __future__ import annotations

import gzip
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.core.cli import parse_config
from engine.core.errors import run_cli
from engine.core.rundir import RunDir
from engine.harvest.defaults import ASSETS, DEFAULT_DATASET, DEFAULT_MODEL


@torch.no_grad()
def heldout_loss(model_path: str = DEFAULT_MODEL, n_windows: int = 32, length: int = 128) -> tuple[float, float]:
    """Mean next-token loss on held-out corpus documents (every 10th, never trained on) and log(vocab)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    with gzip.open(ASSETS / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        held = [json.loads(line)["text"] for i, line in enumerate(f) if i % 10 == 0]
    ids = tok("\n".join(held), add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(ids) - length, (n_windows,), generator=g).tolist()
    x = torch.tensor([ids[s : s + length] for s in starts])
    return float(model(input_ids=x, labels=x).loss), math.log(len(tok))


@dataclass(frozen=True)
class DemoConfig:
    """`engine.demo`: harvest -> offline labels -> report on the embedded default."""

    out: str = "runs/demo"
    "Run directory."
    n_tokens: int = 40_000
    "Tokens to harvest."


def main(argv: list[str] | None = None) -> None:
    _, a = parse_config(DemoConfig, argv, prog="python -m engine.demo", doc=__doc__)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()

    loss, uniform = heldout_loss()
    print(f"demo model: held-out loss {loss:.3f} nats/token vs {uniform:.3f} for a uniform guess (perplexity {math.exp(loss):.1f} vs {math.exp(uniform):.0f})")

    from engine.harvest import run as harvest
    from engine.interpret import run as interpret
    from engine.report import site as report

    again = ["--overwrite", "harvest"] if RunDir(a.out).config.exists() else []  # a rerun sets the last one aside
    harvest.main([DEFAULT_MODEL, "--dataset", DEFAULT_DATASET, "--n-tokens", str(a.n_tokens), "--out", a.out,
                  "--n-random", "100", "--batch-size", "16", *again])  # enough random firings to fill the default test set
    interpret.main([a.out, "--provider", "search"])
    index = report.build_report(Path(a.out))
    run = RunDir(a.out)
    print(f"\ndemo finished in {time.time() - t0:.0f}s. Outputs:")
    print(f"  harvest   {run.components}  (+ config.json, stats.safetensors, tokens.bin)")
    print(f"  labels    {run.explanations()}  (offline search labels; add an LLM with python -m engine.interpret)")
    print(f"  report    {index}")


if __name__ == "__main__":
    run_cli(main)
