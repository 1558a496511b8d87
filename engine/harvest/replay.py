"""Recompute latent activations for chosen tokens after a harvest.

Scorers and contrastive explainers need the true activation of a latent on
windows that were not kept as examples (non-activating windows, held-out
checks). `Replayer` reloads the run's model and dictionaries from
RUN/harvest/config.json and runs only what is asked:

    r = Replayer.from_run("runs/demo")
    a = r.sequence_activations(torch.tensor([3, 17]), torch.tensor([5, 9]))  # [2, S, 2], in context
    b = r.activations(token_ids, torch.tensor([5]))                           # [n, T, 1], windows as given

`sequence_activations` replays whole stored sequences, so values equal the
harvest's exactly; `activations` runs arbitrary token windows (no left context).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from engine.core.rundir import RunDir
from engine.core.schemas import RunConfig
from engine.harvest.data import TokenStore
from engine.harvest.sources import HookedModel


class Replayer:
    def __init__(self, rc: RunConfig, run_dir: Path, device="cpu", batch_size: int = 16):
        from engine.harvest.model import load_model
        from engine.harvest.prepare import run_dictionaries

        self.rc, self.device, self.batch_size = rc, torch.device(device), batch_size
        # the harvest's model (at its recorded commit) and dictionaries, as it ran them
        self.model, self.tokenizer, _ = load_model(rc.model, self.device, rc.dtype, rc.model_revision)
        self.dicts = [d.to(self.device) for d in run_dictionaries(rc)]
        self.hooked = HookedModel(self.model, [h.name for h in rc.hookpoints], read_input=[d.transcoder for d in self.dicts])
        self.store = TokenStore(RunDir(run_dir).tokens, rc.n_sequences, rc.context_length, mode="r")

    @classmethod
    def from_run(cls, run_dir: str | Path, device="cpu") -> Replayer:
        return cls(RunDir(run_dir).load_config(), Path(run_dir), device)

    @torch.no_grad()
    def activations(self, token_ids: Tensor, latents: Tensor) -> Tensor:
        """token_ids [n, T] -> activations [n, T, m] of the given global latents."""
        out = []
        for i in range(0, len(token_ids), self.batch_size):
            ids = token_ids[i : i + self.batch_size].to(self.device)
            acts, _ = self.hooked.run(ids, need_logits=False)
            out.append(self._encode(acts, latents.to(self.device)))
        if not out:
            return torch.zeros(0, token_ids.shape[1], len(latents))
        return torch.cat(out).cpu()

    def sequence_activations(self, seq_ids: Tensor, latents: Tensor) -> Tensor:
        """Stored sequences seq_ids [n] -> [n, S, m], equal to what the harvest saw."""
        ids = torch.from_numpy(np.asarray(self.store.arr[seq_ids.numpy()], dtype=np.int64))
        return self.activations(ids, latents)

    def _encode(self, acts: dict[str, Tensor], latents: Tensor) -> Tensor:
        B, T = next(iter(acts.values())).shape[:2]
        out = torch.zeros(B * T, len(latents), device=self.device)
        for h, d in zip(self.rc.hookpoints, self.dicts):
            mask = (latents >= h.offset) & (latents < h.offset + h.n_latents)
            if mask.any():
                x = acts[h.name].reshape(B * T, -1)
                dense = d.encode_dense(x)  # [B*T, L_h]
                out[:, mask] = dense[:, latents[mask] - h.offset]
        return out.reshape(B, T, len(latents))
