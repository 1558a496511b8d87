"""Try your own text: the run's model and dictionaries on text a user types (engine.serve, POST /api/live).

The text is tokenized as the harvest tokenizes a document (no special tokens),
after the BOS the harvest puts first in every sequence; at most MAX_TOKENS
tokens (and the run's context length), MAX_CHARS characters. The model and the
dictionaries are loaded on the first request by `loader(run_dir, device)`:
`python -m engine.serve` (engine/serve.py) passes the harvest's own
`engine.harvest.replay.Replayer.from_run` (the report itself reads the core only).
Without a loader the viewer says the feature needs `python -m engine.serve`.
One text is computed at a time: a second request while one runs is answered 429.

Answer (JSON): tokens (strings, BOS excluded), token_ids, then
  activations  that latent's activation on every token (when `latent` is given)
  top          [[latent, component key, max activation, token index], ...]: the
               TOP_LATENTS latents with the largest activation anywhere in the text
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

from engine.core.errors import UserError
from engine.core.rundir import RunDir
from engine.core.schemas import RunConfig
from engine.core.token_text import TokenText

MAX_CHARS = 2000
MAX_TOKENS = 256
TOP_LATENTS = 20


class LiveText:
    """The run's model and dictionaries, loaded on first use, computing one text at a time."""

    def __init__(self, run_dir: Path, cfg: RunConfig, keys: list[str], loader: Callable | None = None, device: str = "cpu"):
        """loader(run_dir, device) -> an object with `.tokenizer` and `.activations(token_ids [n, T], latents [m])
        -> [n, T, m]` (engine.harvest.replay.Replayer)."""
        self.run_dir, self.cfg, self.keys, self.device, self.loader = Path(run_dir), cfg, keys, device, loader
        self.max_tokens = min(MAX_TOKENS, cfg.context_length - 1)
        self._replayer = None
        self._text: TokenText | None = None
        self._load_lock = threading.Lock()
        self.busy = asyncio.Lock()
        "Held while a text is computed (one at a time)."

    def info(self) -> dict:
        return dict(live=self.loader is not None, max_chars=MAX_CHARS, max_tokens=self.max_tokens, n_latents=self.cfg.n_latents)

    def replayer(self):
        with self._load_lock:
            if self._replayer is None:
                if self.loader is None:
                    raise UserError("try-your-own-text needs the model: start the viewer with python -m engine.serve RUN_DIR")
                try:
                    self._replayer = self.loader(self.run_dir, self.device)
                except UserError:
                    raise
                except Exception as e:  # noqa: BLE001 - any load failure: one line naming what is needed
                    raise UserError(f"cannot load the run's model and dictionaries ({type(e).__name__}) -- make the "
                                    "paths in harvest/config.json available to engine.serve") from None
            return self._replayer

    def _pieces(self, tok, ids: list[int]) -> list[str]:
        """One string per token, as the harvest writes windows (engine.core.token_text)."""
        if self._text is None:
            self._text = TokenText.load(RunDir(self.run_dir).token_bytes)  # None for runs harvested before
        if self._text is None:
            return [tok.decode([i]) for i in ids]
        return self._text.pieces(ids)

    def check(self, text: object, latent: object) -> tuple[str, int | None]:
        """Validate a request body's fields; UserError (answered 400) names the field and the fix."""
        if not isinstance(text, str) or not text.strip():
            raise UserError("text: give a non-empty string")
        if len(text) > MAX_CHARS:
            raise UserError(f"text: {len(text)} characters -- at most {MAX_CHARS}")
        if latent is not None and (not isinstance(latent, int) or isinstance(latent, bool)
                                   or not 0 <= latent < self.cfg.n_latents):
            raise UserError(f"latent: {latent!r} -- give an integer in 0..{self.cfg.n_latents - 1} or leave it out")
        return text, latent

    def compute(self, text: str, latent: int | None) -> dict:
        """Activations of every latent on `text`; runs in a worker thread."""
        import torch

        r = self.replayer()
        tok = r.tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"][: self.max_tokens]
        if not ids:
            raise UserError("text: it has no tokens -- type some text")
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id  # the harvest's start token
        head = [] if start is None else [start]  # (engine.harvest.data.start_token): BOS, else EOS, else none
        acts = r.activations(torch.tensor([[*head, *ids]]), torch.arange(self.cfg.n_latents))[0, len(head):]  # [T, L]
        peak, where = acts.max(dim=0)
        k = min(TOP_LATENTS, int((peak > 0).sum()))
        vals, lats = peak.topk(k)
        out = dict(tokens=self._pieces(tok, ids), token_ids=ids,  # the bytes decoded whole, a piece per token
                   top=[[lat, self.keys[lat], round(v, 5), int(where[lat])] for lat, v in zip(lats.tolist(), vals.tolist())])
        if latent is not None:
            out["activations"] = [round(v, 5) for v in acts[:, latent].tolist()]
        return out
