"""Non-activating examples: token windows on which a latent is exactly zero.

A latent's harvest record holds only windows where it fires. Windows where it
does not are taken from a `NegativePool`, built once per run and cached in
RUN/negatives/pool.npz: `n_sequences` stored sequences (seeded sample of the
token store) are cut into non-overlapping windows of the example length, and
the whole sequences are replayed through the model and dictionaries
(`engine.harvest.replay`), so `fires[w, latent]` says exactly whether the latent fires
anywhere in window w, in the same context the harvest saw. The cache holds for one
harvest only: its key has the pool settings and a digest of config.json (model,
dictionaries and their revisions, random control, dtype, SPD threshold, sizes) and of
tokens.bin's size and modification time, so a new harvest into the same folder, or a
replay rule changed since (`REPLAY_VERSION`), rebuilds it.

Sources (`NegativeSource.negatives(c, n, queries, exclude_ids)`), all drawn
without replacement and deterministic per latent:
* random: uniform over the pool windows where the latent is zero;
* neighbours: windows where its co-occurring latents (Jaccard order) fire and it
  does not, closest neighbour first; random windows fill the rest;
* faiss: the zero windows most similar (MiniLM cosine, max over the query
  windows, i.e. the explainer's examples) to what the latent fires on: hard
  negatives. Pool embeddings are computed once per pool (RUN/negatives/minilm.npz, keyed
  by the pool's windows); faiss-cpu does the search when installed, numpy otherwise (same result).
Windows overlapping `exclude_ids` (examples already shown to the explainer) are
never returned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec
import numpy as np
import torch
from tqdm import tqdm

from engine.core.errors import UserError
from engine.core.examples import Window, latent_rng, overlap_reach, parse_id
from engine.core.rundir import RunDir, replacing
from engine.core.schemas import DIRECTIONS_FILE, ComponentData, RunConfig
from engine.core.token_text import TokenText
from engine.interpret.config import NEIGHBOURS

SequenceActivations = Callable[[torch.Tensor], torch.Tensor]
"seq_ids [n] -> activations of every latent on those whole stored sequences [n, S, n_latents]."


@dataclass(frozen=True)
class PoolConfig:
    """The sample of windows negatives are drawn from."""

    n_sequences: int = 256
    "Stored sequences sampled (each cut into context_length // window_len windows)."
    seed: int = 0
    "Sampling seed (mixed with the component key for each latent's draw)."
    chunk: int = 8
    "Sequences replayed per forward pass."


class NegativePool:
    def __init__(self, sequences: np.ndarray, starts: np.ndarray, token_ids: np.ndarray, fires: np.ndarray,
                 vocab: list[str] | TokenText, half_width: int, seed: int = 0):
        self.sequences = sequences  # [P] int64
        self.starts = starts  # [P] int64
        self.token_ids = token_ids  # [P, L] int32
        self.fires = fires  # [P, n_latents] bool
        self.vocab = vocab
        self.half_width = half_width
        self.reach: int | None = None  # how far an excluded example's window reaches (set by open_pool)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.sequences)

    @classmethod
    def build(cls, tokens: np.ndarray, window_len: int, n_latents: int, activations: SequenceActivations,
              vocab: list[str], cfg: PoolConfig = PoolConfig(), first_pos: int = 0, progress: bool = True) -> NegativePool:
        """tokens: the token store [N, S]; first_pos: first usable position (1 when BOS is filtered)."""
        N, S = tokens.shape
        rng = np.random.default_rng(cfg.seed)
        seqs = np.sort(rng.choice(N, size=min(cfg.n_sequences, N), replace=False)).astype(np.int64)  # [n]
        starts_in_seq = np.arange(first_pos, S - window_len + 1, window_len, dtype=np.int64)  # [k]
        if len(starts_in_seq) == 0:
            raise UserError(f"context length {S} is shorter than one example window ({window_len} tokens)")
        k = len(starts_in_seq)
        fires = np.zeros((len(seqs) * k, n_latents), dtype=bool)
        for i in tqdm(range(0, len(seqs), cfg.chunk), desc="negative pool", unit="chunk", disable=not progress):
            chunk = seqs[i : i + cfg.chunk]
            acts = activations(torch.from_numpy(chunk)) > 0  # [c, S, n_latents]
            for j, s in enumerate(starts_in_seq.tolist()):
                rows = (i + np.arange(len(chunk))) * k + j
                fires[rows] = acts[:, s : s + window_len, :].any(dim=1).numpy()
        sequences = np.repeat(seqs, k)
        starts = np.tile(starts_in_seq, len(seqs))
        token_ids = np.stack([np.asarray(tokens[q, s : s + window_len]) for q, s in zip(sequences, starts)]).astype(np.int32)
        return cls(sequences, starts, token_ids, fires, vocab, window_len // 2, cfg.seed)

    # ------------------------------------------------------------------ cache

    def save(self, path: Path, meta: dict) -> None:
        with replacing(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds no suffix
            np.savez_compressed(f, sequences=self.sequences, starts=self.starts, token_ids=self.token_ids,
                                fires=np.packbits(self.fires, axis=1), n_latents=self.fires.shape[1],
                                meta=json.dumps(meta, sort_keys=True))

    @classmethod
    def load(cls, path: Path, meta: dict, vocab: list[str], seed: int) -> NegativePool | None:
        """The cached pool, or None when absent, unreadable or built with other settings."""
        try:
            with np.load(path) as z:
                if str(z["meta"]) != json.dumps(meta, sort_keys=True):
                    return None
                n_latents = int(z["n_latents"])
                fires = np.unpackbits(z["fires"], axis=1, count=n_latents).astype(bool)
                sequences, starts, token_ids = z["sequences"], z["starts"], z["token_ids"]
                half_width = token_ids.shape[1] // 2
        except Exception:  # noqa: BLE001 - absent, or damaged (BadZipFile, zlib.error, KeyError, ...): rebuilt
            return None
        return cls(sequences, starts, token_ids, fires, vocab, half_width, seed)

    # ------------------------------------------------------------------ windows

    def window(self, w: int) -> Window:
        ids = self.token_ids[w].tolist()
        L = len(ids)
        start = int(self.starts[w])
        tokens = self.vocab.pieces(ids) if isinstance(self.vocab, TokenText) else [self.vocab[i] for i in ids]
        return Window(sequence=int(self.sequences[w]), start=start, tokens=tokens, token_ids=ids,
                      activations=[0.0] * L, stratum="neg", position=start + L // 2)

    def candidates(self, latent: int, exclude_ids: list[str] = ()) -> np.ndarray:
        """Pool windows where `latent` is zero and that overlap no excluded example (±reach around it: the
        example windows' reach, core.examples.overlap_reach; the pool's own half width by default)."""
        ok = ~self.fires[:, latent]
        if exclude_ids:
            L = self.token_ids.shape[1]
            for i in exclude_ids:
                seq, pos = parse_id(i)
                reach = self.reach if self.reach is not None else self.half_width
                lo, hi = pos - reach, pos + reach + 1
                ok &= ~((self.sequences == seq) & (self.starts < hi) & (lo < self.starts + L))
        return np.flatnonzero(ok)


class NegativeSource(Protocol):
    def negatives(self, c: ComponentData, n: int, queries: list[Window] = (), exclude_ids: list[str] = ()) -> list[Window]:
        """Up to n windows on which `c` is zero (fewer when the pool has fewer)."""
        ...


class RandomNegatives:
    def __init__(self, pool: NegativePool):
        self.pool = pool

    def negatives(self, c, n, queries=(), exclude_ids=()):
        cand = self.pool.candidates(c.latent, exclude_ids)
        rng = latent_rng(c.component_key, self.pool.seed, "negatives")
        pick = rng.choice(cand, size=min(n, len(cand)), replace=False) if len(cand) else []
        return [self.pool.window(int(w)) for w in pick]


def cofiring_neighbours(c: ComponentData) -> list[int]:
    """The latent's co-firing neighbours, most similar (Jaccard) first."""
    return [s.index for s in c.correlations.jaccard]


def direction_neighbours(run_dir: Path, kind: str) -> Callable[[ComponentData], list[int]]:
    """The latent's nearest latents by `kind` (decoder | encoder) direction cosine, from the harvest's
    directions.safetensors (engine/harvest/neighbours.py)."""
    from safetensors.torch import load_file

    path = RunDir(run_dir).harvest / DIRECTIONS_FILE
    try:
        table = load_file(str(path))[f"{kind}_neighbours"]
    except (FileNotFoundError, KeyError):
        raise UserError(f"{path} has no {kind}-direction neighbours (harvested before they were written) -- re-run "
                        "the harvest, or use --neighbours cofiring") from None
    return lambda c: [j for j in table[c.latent].tolist() if j >= 0]


class NeighbourNegatives:
    def __init__(self, pool: NegativePool, neighbours: Callable[[ComponentData], list[int]] = cofiring_neighbours):
        self.pool = pool
        self.neighbours = neighbours

    def negatives(self, c, n, queries=(), exclude_ids=()):
        """Windows where a similar latent fires and this one does not, most similar first; the rest at random."""
        cand = self.pool.candidates(c.latent, exclude_ids)
        rng = latent_rng(c.component_key, self.pool.seed, "negatives")
        chosen: list[int] = []
        taken = np.zeros(len(self.pool), dtype=bool)
        for j in self.neighbours(c):
            if len(chosen) >= n or not 0 <= j < self.pool.fires.shape[1]:
                continue
            hits = cand[self.pool.fires[cand, j] & ~taken[cand]]
            for w in rng.permutation(hits)[: n - len(chosen)].tolist():
                chosen.append(w)
                taken[w] = True
        rest = cand[~taken[cand]]
        chosen += rng.choice(rest, size=min(n - len(chosen), len(rest)), replace=False).tolist() if len(rest) else []
        return [self.pool.window(int(w)) for w in chosen]


class FaissNegatives:
    def __init__(self, pool: NegativePool, embeddings: np.ndarray, embed: Callable[[list[str]], np.ndarray]):
        self.pool, self.embeddings, self.embed = pool, embeddings, embed  # embeddings [P, d], unit norm
        try:
            import faiss

            self.index = faiss.IndexFlatIP(embeddings.shape[1])
            self.index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        except ImportError:
            self.index = None

    def similarity(self, queries: list[Window]) -> np.ndarray:
        """[P] max cosine similarity of every pool window to any query window."""
        q = self.embed([w.text for w in queries])  # [q, d]
        if self.index is None:
            return (q @ self.embeddings.T).max(axis=0)
        sims, idx = self.index.search(np.ascontiguousarray(q, dtype=np.float32), len(self.pool))
        out = np.full(len(self.pool), -np.inf, dtype=np.float32)
        np.maximum.at(out, idx.ravel(), sims.ravel())
        return out

    def negatives(self, c, n, queries=(), exclude_ids=()):
        cand = self.pool.candidates(c.latent, exclude_ids)
        if not queries:
            return RandomNegatives(self.pool).negatives(c, n, queries, exclude_ids)
        sim = self.similarity(list(queries))[cand]
        order = np.lexsort((cand, -sim))  # most similar first, ties by window index
        return [self.pool.window(int(cand[i])) for i in order[:n]]


# --------------------------------------------------------------------------- from a run directory


def _token_store(run_dir: Path, rc: RunConfig) -> np.ndarray:
    path = RunDir(run_dir).tokens
    if not path.exists():
        raise UserError(f"{path} not found -- negatives need the harvest's token store; rerun the harvest")
    return np.memmap(path, dtype=np.int32, mode="r", shape=(rc.n_sequences, rc.context_length))


REPLAY_VERSION = 2
"Bumped when what a replay computes changes (2: dictionaries rebuilt as the harvest ran them); older pools are rebuilt."


def harvest_key(run_dir: Path, rc: RunConfig) -> dict:
    """What a cached pool was replayed from: a digest of the run's config and its token store's size and time."""
    st = RunDir(run_dir).tokens.stat()
    return {"config": hashlib.sha256(msgspec.json.encode(rc)).hexdigest()[:20], "tokens": [st.st_size, st.st_mtime_ns],
            "replay": REPLAY_VERSION}


def open_pool(run_dir: Path, rc: RunConfig, cfg: PoolConfig = PoolConfig(), activations: SequenceActivations | None = None,
              vocab: list[str] | None = None, progress: bool = True) -> NegativePool:
    """The run's pool, from its cache or built (replaying with the run's model unless `activations` is given)."""
    window_len = 2 * rc.window + 1
    store = _token_store(run_dir, rc)
    meta = dict(n_sequences=cfg.n_sequences, seed=cfg.seed, window_len=window_len, n_latents=rc.n_latents,
                store=[rc.n_sequences, rc.context_length], first_pos=int(rc.filter_bos), harvest=harvest_key(run_dir, rc))
    path = RunDir(run_dir).negatives / "pool.npz"
    if vocab is None:  # the harvest's token bytes: windows decode whole, as the examples do
        vocab = TokenText.load(RunDir(run_dir).token_bytes) or _vocab(rc, store)
    pool = NegativePool.load(path, meta, vocab, cfg.seed)
    if pool is None:
        if activations is None:
            replayer = _replayer(run_dir)
            latents = torch.arange(rc.n_latents)
            activations = lambda seqs: replayer.sequence_activations(seqs, latents)  # noqa: E731
        pool = NegativePool.build(store, window_len, rc.n_latents, activations, vocab, cfg,
                                  first_pos=int(rc.filter_bos), progress=progress)
        pool.save(path, meta)
    pool.reach = overlap_reach(rc.window, rc.center_examples)
    return pool


def _vocab(rc: RunConfig, store: np.ndarray) -> list[str]:
    """Token strings one token at a time, for runs harvested before token_bytes.json was written."""
    from transformers import AutoTokenizer

    from engine.harvest.results import token_strings

    try:
        pin = {"revision": rc.model_revision} if rc.model_revision else {}
        tokenizer = AutoTokenizer.from_pretrained(rc.model, local_files_only=True, **pin)  # the harvest cached it
    except Exception as e:  # noqa: BLE001 - one line naming what is needed
        raise UserError(f"cannot load the tokenizer of {rc.model} ({type(e).__name__}) -- non-activating examples "
                        "need the run's model folder; make the path in harvest/config.json available") from None
    return token_strings(tokenizer, max(len(tokenizer), int(store.max()) + 1))


def _replayer(run_dir: Path):
    from engine.harvest.replay import Replayer

    try:
        return Replayer.from_run(run_dir)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any load failure: one line naming what is needed
        raise UserError(f"non-activating examples need the run's model and dictionaries to replay tokens, and loading "
                        f"them failed ({type(e).__name__}: {e}) -- make the paths in {RunDir(run_dir).config} "
                        "available") from None


def pool_embeddings(run_dir: Path, pool: NegativePool, embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """MiniLM embeddings of the pool windows, cached beside the pool and keyed by its windows (a rebuilt pool of
    other windows gets its own)."""
    path = RunDir(run_dir).negatives / "minilm.npz"
    key = _windows_key(pool)
    try:
        with np.load(path) as z:
            if str(z["key"]) == key and z["emb"].ndim == 2 and len(z["emb"]) == len(pool):
                return z["emb"]
    except Exception:  # noqa: BLE001 - absent or damaged (BadZipFile, KeyError, ...): recomputed
        pass
    emb = embed([pool.window(w).text for w in range(len(pool))])
    with replacing(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds no suffix
        np.savez(f, emb=emb, key=key)
    return emb


def _windows_key(pool) -> str:
    """A digest of the pool's window texts, in order: all its embeddings depend on."""
    h = hashlib.sha256()
    for w in range(len(pool)):
        h.update(pool.window(w).text.encode() + b"\0")
    return h.hexdigest()[:20]


def open_source(run_dir: Path, rc: RunConfig, kind: str, pool: NegativePool | None = None,
                cfg: PoolConfig = PoolConfig(), progress: bool = True, neighbours: str = "cofiring") -> NegativeSource:
    """random | neighbours | faiss, over the run's (cached) pool; `progress` shows the "negative pool" bar
    while the pool is built (pass the command's --progress/--no-progress)."""
    if kind not in ("random", "neighbours", "faiss"):
        raise UserError(f"--non-activating {kind!r}: choose random, neighbours or faiss")
    pool = pool or open_pool(run_dir, rc, cfg, progress=progress)
    if kind == "random":
        return RandomNegatives(pool)
    if kind == "neighbours":
        if neighbours not in NEIGHBOURS:
            raise UserError(f"--neighbours {neighbours!r}: choose {', '.join(NEIGHBOURS)}")
        return NeighbourNegatives(pool, cofiring_neighbours if neighbours == "cofiring"
                                  else direction_neighbours(run_dir, neighbours))
    from engine.interpret.minilm import MiniLM

    model = MiniLM()
    return FaissNegatives(pool, pool_embeddings(run_dir, pool, model.embed), model.embed)
