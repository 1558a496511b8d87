"""A run directory's files as the tests write and read them.

Writing: the harvest output both synthetic runs write the same way (tokens.bin,
config.json, components.jsonl), one activation example cut from a token store,
and the PMI both compute. Reading: a run's logs keyed by latent (the last record
of a latent wins, as the engine's readers take it).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgspec
import numpy as np

from engine.core.jsonl import read_records
from engine.core.schemas import ActivationExample, ComponentData, Explanation, RunConfig, ScoreResult


def write_jsonl(path: Path, records: Iterable) -> None:
    """One JSON line per record (a fresh file)."""
    enc = msgspec.json.Encoder()
    with open(path, "wb") as f:
        for r in records:
            f.write(enc.encode(r) + b"\n")


def write_harvest(run_dir: Path, tokens: np.ndarray, config: RunConfig, components: Iterable[ComponentData]) -> None:
    """RUN/harvest/: the token store [N, S] int32, config.json and components.jsonl (written as they come)."""
    harvest = run_dir / "harvest"
    harvest.mkdir(parents=True, exist_ok=True)
    tokens.tofile(harvest / "tokens.bin")
    (harvest / "config.json").write_bytes(msgspec.json.encode(config))
    write_jsonl(harvest / "components.jsonl", components)


def window_example(tokens: np.ndarray, acts: np.ndarray, vocab: list[str], seq: int, pos: int, window: int,
                   source: str) -> ActivationExample:
    """The example at (seq, pos): tokens [N, S] and one latent's activations [N, S] within pos +- window."""
    lo, hi = max(0, pos - window), min(tokens.shape[1], pos + window + 1)
    ids = tokens[seq, lo:hi].tolist()
    return ActivationExample(sequence=seq, position=pos, activation=float(acts[seq, pos]), token_ids=ids,
                             tokens=[vocab[t] for t in ids], activations=acts[seq, lo:hi].astype(float).tolist(),
                             firing_index=pos - lo, source=source)


def pmi(joint, n_i, marginal, n_tokens):
    """log P(both) / (P(latent) P(other)) from counts: joint, the latent's n_i, the other's marginal, of n_tokens."""
    return np.log(joint * n_tokens / (n_i * marginal))


def components_by_latent(run_dir: Path) -> dict[int, ComponentData]:
    """RUN/harvest/components.jsonl, latent -> component."""
    dec = msgspec.json.Decoder(ComponentData)
    lines = (Path(run_dir) / "harvest" / "components.jsonl").read_bytes().splitlines()
    return {c.latent: c for c in map(dec.decode, lines)}


def logged_explanations(run_dir: Path) -> list[Explanation]:
    """Every record of RUN/interpretations/results.jsonl, in order."""
    return read_records(run_dir / "interpretations" / "results.jsonl", Explanation)


def scores_by_latent(run_dir: Path, scorer: str) -> dict[int, ScoreResult]:
    """RUN/scores/SCORER.jsonl, latent -> its last result."""
    return {r.latent: r for r in read_records(run_dir / "scores" / f"{scorer}.jsonl", ScoreResult)}


def details_by_latent(run_dir: Path, scorer: str):
    """RUN/scores/details/SCORER.jsonl, latent -> its last Details."""
    from engine.score.scorers.base import Details

    return {d.latent: d for d in read_records(run_dir / "scores" / "details" / f"{scorer}.jsonl", Details)}
