r"""Train a small SAE with a plain torch loop and watch it with a `Harvester` as it trains.

    python examples/train_and_watch.py [--steps 40] [--every 5] [--latents 256] [--k 8] [--out runs/watch]

The embedded model's block-2 residual stream (`blocks.2.hook_resid_post`) on the embedded corpus feeds a
TopK SAE trained on reconstruction MSE with Adam. Every `--every` steps the step's activations, detached,
go into a Harvester whose dictionary is a view of the SAE's live parameters (`Dictionary.from_weights` on
`param.detach()`: the optimizer updates them in place, so each watched step is encoded with the weights of
that step, with no copy). Watching never touches the graph or the optimizer: training with and without it
ends at the same weights (tests/harvest/test_train_and_watch.py).

What the harvest of a changing dictionary means: every statistic sums over the watched steps, each step
encoded with the weights it had (counts and densities are averages over the trajectory; top examples are
the largest activations at any watched step, early or late). To describe the final dictionary, harvest after
training, or start a fresh Harvester for the last steps only. The per-step cost of watching, as a ratio to
the training step, is printed by `python -m bench.watch`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from engine.harvest.data import batches, counted_positions, iter_texts, pack
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL
from engine.harvest.dictionaries import Dictionary
from engine.harvest.harvester import Harvester
from engine.harvest.model import load_model
from engine.harvest.sources import HookedModel
from engine.harvest.state import StateConfig

HOOK = "blocks.2.hook_resid_post"


class TopKSAE(nn.Module):
    """A plain TopK SAE: encode (x - b_dec) W_enc + b_enc, keep the k largest (ReLU), decode with W_dec."""

    def __init__(self, d_in: int, n_latents: int, k: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(d_in, n_latents, generator=g) / d_in**0.5
        self.k = k
        self.W_enc = nn.Parameter(W.clone())  # [d_in, L]
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(W.T.clone())  # [L, d_in]
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        val, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, val.relu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x) @ self.W_dec + self.b_dec

    def watched(self) -> Dictionary:
        """The engine's view of the live weights (shared storage, no copy)."""
        return Dictionary.from_weights(self.W_enc.detach(), self.b_enc.detach(), activation="topk", k=self.k,
                                       b_dec=self.b_dec.detach(), W_dec=self.W_dec.detach(), name="training", hookpoint=HOOK)


def train(steps: int = 40, every: int = 5, n_latents: int = 256, k: int = 8, batch_size: int = 4, context_length: int = 64,
          lr: float = 1e-3, seed: int = 0, watch: bool = True, device: str = "cpu",
          on_watch: Callable[[int, torch.Tensor, torch.Tensor, TopKSAE], None] | None = None) -> dict:
    """Train for `steps` steps; with `watch`, fold every `every`-th step's activations into a Harvester.
    `on_watch(step, ids, acts, sae)` is called right before each watched update. Returns the SAE, the harvester
    (None without watch), the losses and per-step seconds of the model forward, the training step and the watch."""
    torch.manual_seed(seed)
    model, tok, _ = load_model(DEFAULT_MODEL, device, "float32")
    hooked = HookedModel(model, [HOOK])
    sae = TopKSAE(model.config.hidden_size, n_latents, k, seed).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    h = None
    if watch:
        cfg = StateConfig(n_latents=n_latents, vocab_size=max(len(tok), model.config.vocab_size), seq_len=context_length,
                          top_k=10, n_random=10, window=8, output_stats=False, seed=seed)
        h = Harvester([sae.watched()], cfg, [HOOK], device)
    out = {"sae": sae, "harvester": h, "losses": [], "forward_s": [], "train_s": [], "watch_s": []}
    data = batches(pack(iter_texts(DEFAULT_DATASET), tok, context_length), batch_size, steps * batch_size)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)  # timing only
    for step, (first, ids) in enumerate(data):
        ids = ids.to(device)
        t0 = time.perf_counter()
        x = hooked.run(ids, need_logits=False)[0][HOOK]  # [B, S, d], no grad
        sync()
        t1 = time.perf_counter()
        flat = x.reshape(-1, x.shape[-1])
        loss = (sae(flat) - flat).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        t2 = time.perf_counter()
        if h is not None and step % every == 0:
            if on_watch is not None:
                on_watch(step, ids, x, sae)
            h.update(x.detach(), ids, seq_ids=torch.arange(first, first + len(ids), device=device), valid=counted_positions(ids, tok))
            sync()
            out["watch_s"].append(time.perf_counter() - t2)
        out["losses"].append(float(loss.detach()))
        out["forward_s"].append(t1 - t0)
        out["train_s"].append(t2 - t1)
    hooked.close()
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=5, help="watch every N-th step (1: every step)")
    p.add_argument("--latents", type=int, default=256)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--out", default="", help="save the harvest state (safetensors + JSON) here")
    a = p.parse_args(argv)
    r = train(a.steps, a.every, a.latents, a.k)
    st = r["harvester"].state
    count = st.count.cpu()
    print(f"loss {r['losses'][0]:.2f} -> {r['losses'][-1]:.2f} over {a.steps} steps; watched {len(r['watch_s'])} steps, "
          f"{int(st.n_tokens):,} tokens; {int((count > 0).sum())}/{a.latents} latents fired; densest: "
          + ", ".join(f"{int(i)} ({int(count[i])})" for i in count.argsort(descending=True)[:5]))
    if a.out:
        st.save(Path(a.out), meta={"steps": a.steps, "every": a.every})
    return r


if __name__ == "__main__":
    main()
