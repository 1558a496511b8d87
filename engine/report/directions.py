"""What a latent page shows from RUN/harvest/directions.safetensors (written by engine/harvest/neighbours.py):
decoder-cosine neighbours as links and the histogram of logit effects over the vocabulary.

Runs harvested before that file existed have none; their pages leave both sections out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.core.errors import UserError
from engine.core.schemas import DIRECTIONS_FILE, RunConfig, Scored


def component_keys(cfg: RunConfig) -> list[str]:
    """Global latent -> component key, as the harvest names them."""
    return [f"{h.name}/{h.latent_ids[i] if h.latent_ids else i}" for h in cfg.hookpoints for i in range(h.n_latents)]


class Directions:
    """The directions file of a run (or nothing), read once."""

    def __init__(self, harvest_dir: Path, cfg: RunConfig):
        self.path = Path(harvest_dir) / DIRECTIONS_FILE
        self.arrays: dict[str, np.ndarray] = {}
        if self.path.is_file():
            from safetensors import SafetensorError
            from safetensors.numpy import load_file

            try:
                self.arrays = load_file(str(self.path))
            except (SafetensorError, OSError, ValueError) as e:
                raise UserError(f"{self.path}: unreadable ({e}) -- delete it or re-run the harvest") from None
            for name, arr in self.arrays.items():
                if arr.shape[0] != cfg.n_latents:
                    raise UserError(f"{self.path}: {name} has {arr.shape[0]} rows for {cfg.n_latents} latents "
                                    "-- it comes from another harvest; re-run the harvest")
        self._keys: list[str] | None = None
        self.cfg = cfg
        self._fired: np.ndarray | None = None
        self.stats_path = Path(harvest_dir) / "stats.safetensors"

    def has_page(self, latent: int) -> bool:
        """Whether the latent fired in the harvest (stats.safetensors `count` > 0), i.e. has a page."""
        if self._fired is None:
            self._fired = np.ones(self.cfg.n_latents, dtype=bool)
            if self.stats_path.is_file():
                from safetensors import SafetensorError, safe_open

                try:
                    with safe_open(str(self.stats_path), "np") as f:
                        self._fired = f.get_tensor("count") > 0
                except (SafetensorError, OSError, ValueError) as e:
                    raise UserError(f"{self.stats_path}: unreadable ({e}) -- re-run the harvest") from None
        return 0 <= latent < len(self._fired) and bool(self._fired[latent])

    def keys(self) -> list[str]:
        if self._keys is None:
            self._keys = component_keys(self.cfg)
        return self._keys

    def neighbours(self, latent: int, kind: str = "decoder") -> list[Scored] | None:
        """The latent's nearest latents by `kind` direction cosine (value = cosine), or None without the file."""
        idx, cos = self.arrays.get(f"{kind}_neighbours"), self.arrays.get(f"{kind}_cosine")
        if idx is None or cos is None:
            return None
        keys = self.keys()
        return [Scored(keys[j], j, round(float(v), 4), 0.0) for j, v in zip(idx[latent].tolist(), cos[latent].tolist())
                if 0 <= j < len(keys)]

    def logit_histogram(self, latent: int) -> tuple[list[int], list[float]] | None:
        """(counts, edges) of the latent's logit-lens values over the vocabulary, or None."""
        hist, rng = self.arrays.get("logit_hist"), self.arrays.get("logit_range")
        if hist is None or rng is None or int(hist[latent].sum()) == 0:
            return None
        lo, hi = (float(x) for x in rng[latent])
        n = hist.shape[1]
        return hist[latent].tolist(), [lo + (hi - lo) * i / n for i in range(n + 1)]
