"""Scorers: how well an explanation predicts where its latent fires, on held-out examples.

Every scorer gets a `ScoreItem` (the explanation, held-out activating windows
stratified over top/q1..qN, and verified non-activating windows) and returns
`Details`: one `Row` per judged example (truth, 0/1 prediction, probability when
one exists). `engine.score` turns rows into a ScoreResult with
`engine.score.metrics.classification_report`. LLM scorers first return the requests
they need (`calls`), then read the responses in the same order (`outcome`).

    detection   judge says which plain excerpts the latent fires on      (LLM)
    fuzz        judge says whether highlighted tokens fit the explanation (LLM)
    simulation  judge predicts 0-10 per token; Pearson with the truth     (LLM)
    embedding   MiniLM similarity of explanation and excerpt -> AUC       (offline)
    intruder    judge finds the non-activating excerpt, no explanation    (LLM)
    surprisal   a local LM's loss drop with the explanation in context -> AUC (offline)
"""

from __future__ import annotations

from engine.score.scorers.base import ScoreConfig
from engine.score.scorers.detection import Detection
from engine.score.scorers.embedding import Embedding
from engine.score.scorers.fuzz import Fuzz
from engine.score.scorers.intruder import Intruder
from engine.score.scorers.simulation import Simulation
from engine.score.scorers.surprisal import Surprisal

SCORERS = ("detection", "fuzz", "simulation", "embedding", "intruder", "surprisal")


def registry(cfg: ScoreConfig, embedder=None) -> dict[str, object]:
    """name -> a scorer configured by `cfg` (embedder: texts -> unit vectors, MiniLM when None)."""
    return {"detection": Detection(cfg), "fuzz": Fuzz(cfg), "simulation": Simulation(cfg),
            "embedding": Embedding(cfg, embedder), "intruder": Intruder(cfg), "surprisal": Surprisal(cfg)}
