"""`--latents`: which latents to work on.

Accepted forms: "11,313,251", ranges "0-99" (inclusive), mixtures "3,10-12",
or a JSON file `{"feature_indices": [...], "scores": [...]}` (the format
`engine.select` writes and the autointerp_advanced seed reads). Scores, when
given, travel with the run and are shown beside the engine's own.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.core.errors import UserError


def parse_latents(spec: str) -> tuple[list[int], dict[int, float]]:
    """-> (sorted unique indices, {index: score}) ; empty spec -> ([], {})."""
    if not spec:
        return [], {}
    p = Path(spec)
    if spec.endswith(".json") or p.is_file():
        try:
            data = json.loads(p.read_text())
            idx = [int(i) for i in data["feature_indices"]]
            scores = data.get("scores")
        except FileNotFoundError:
            raise UserError(f"--latents file {spec} does not exist") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"--latents file {spec} must be JSON with a 'feature_indices' list of integers ({type(e).__name__}) -- fix the file") from None
        if scores is not None and len(scores) != len(idx):
            raise UserError(f"--latents file {spec}: 'scores' has {len(scores)} entries for {len(idx)} feature_indices -- make them the same length")
        return sorted(set(idx)), dict(zip(idx, map(float, scores))) if scores is not None else {}
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise UserError(f"--latents {spec!r}: range {part!r} is empty (ends before it starts) -- write it as {hi}-{lo}")
                out.update(range(lo, hi + 1))
            elif part:
                out.add(int(part))
        except ValueError:
            raise UserError(f"--latents {spec!r}: {part!r} is not an index or a range like 10-20") from None
    if any(i < 0 for i in out):
        raise UserError(f"--latents {spec!r}: indices must be >= 0")
    return sorted(out), {}


def selection(spec: str) -> set[int] | None:
    """The dictionary indices `spec` names, or None (all latents) for an empty spec."""
    idx, _ = parse_latents(spec)
    return set(idx) if spec else None
