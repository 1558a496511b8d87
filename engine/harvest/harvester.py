"""`Harvester`: encode activations with the dictionaries and fold them into a HarvestState.

Library use inside any loop (no model needed):

    h = Harvester([dictionary], StateConfig(...))
    h.update({"blocks.2.hook_resid_post": acts}, tokens)   # acts [B, S, d], tokens [B, S]
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.core.errors import UserError
from engine.harvest.dictionaries import Dictionary
from engine.harvest.firings import Firings, concat
from engine.harvest.state import HarvestState, StateConfig


class Harvester:
    """Encodes activations with the dictionaries and folds them into a HarvestState."""

    def __init__(self, dictionaries: list[Dictionary], cfg: StateConfig, hookpoints: list[str] | None = None, device="cpu",
                 first_sequence: int = 0):
        """first_sequence: the id of the first sequence `update` numbers (when it is given no seq_ids). Harvesters
        over different data that will be merged need disjoint ids: give the second one the first's sequence count."""
        self.dictionaries = dictionaries
        self.hookpoints = hookpoints or [d.hookpoint or f"site{i}" for i, d in enumerate(dictionaries)]
        self.offsets = [0]
        for d in dictionaries:
            self.offsets.append(self.offsets[-1] + d.n_latents)
        if self.offsets[-1] != cfg.n_latents:
            raise ValueError(f"StateConfig.n_latents={cfg.n_latents} but the dictionaries have {self.offsets[-1]} latents")
        self.state = HarvestState(cfg, device)
        self.device = torch.device(device)
        self._next_seq = first_sequence

    def encode(self, acts: dict[str, Tensor] | Tensor) -> Firings:
        """{hookpoint: [B, S, d]} -> the batch's firings over the global latent axis, in fixed slots."""
        if isinstance(acts, Tensor):
            acts = {self.hookpoints[0]: acts}
        parts = []
        for name, d, off in zip(self.hookpoints, self.dictionaries, self.offsets):
            x = acts[name]
            if x.shape[-1] != d.d_in:
                raise UserError(f"hookpoint {name} has width {x.shape[-1]} but dictionary {d.path} expects d_in={d.d_in} -- pair each dictionary with the hookpoint it was trained on")
            f = d.encode(x.reshape(-1, x.shape[-1]).to(self.device))
            parts.append(f.with_offset(off))
        return concat(parts)

    def update(self, acts, tokens: Tensor, *, seq_ids: Tensor | None = None, valid: Tensor | None = None, logits: Tensor | None = None) -> None:
        """acts {hookpoint: [B, S, d]} (or one tensor), tokens [B, S]; logits [B, S, V] enable output stats."""
        tokens = tokens.to(self.device)
        B, S = tokens.shape
        if seq_ids is None:  # consecutive rows; no host sync either way
            seq_ids = torch.arange(self._next_seq, self._next_seq + B, device=self.device)
            self._next_seq += B
        firings = self.encode(acts)
        next_top = next_mass = None
        if logits is not None and self.state.cfg.output_stats:
            probs = torch.softmax(logits.float().reshape(B * S, -1), dim=-1)  # [B*S, V]
            v = valid.reshape(-1) if valid is not None else torch.ones(B * S, dtype=torch.bool, device=self.device)
            top_p, top_id = probs.topk(self.state.cfg.output_top, dim=-1)  # [B*S, T]
            next_top = (top_id, top_p)
            # The marginal is the same top-T mass, over every valid position: precision and PMI compare
            # like with like (a latent firing wherever t is predicted has precision 1).
            next_mass = torch.zeros(self.state.cfg.vocab_size, dtype=torch.float64, device=self.device).index_add_(
                0, top_id.reshape(-1), (top_p * v[:, None]).reshape(-1).double())  # [V]
        self.state.update(tokens, firings, seq_ids=seq_ids.to(self.device), valid=valid, next_top=next_top, next_mass=next_mass)
