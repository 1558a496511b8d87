"""`python -m engine.score` killed with SIGKILL at several moments, rerun to completion, equals an uninterrupted run.

The judge is the scripted Judge of tests/helpers/scripted_llm.py (deterministic: perfect answers
from the fixture's rule) behind the fake server, so the scorer makes real HTTP
requests and every kill lands between real requests and appends. The kill
points are seeded random: one just after the first request went out, then each
a few result lines after the last. One kill is followed by torn last lines in a
result and a details log, as a kill inside a write leaves them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from clients.testing import FakeLLMServer
from engine.core.jsonl import read_records
from engine.core.schemas import ScoreResult
from engine.interpret.config import InterpretConfig
from engine.interpret.run import run_interpret
from engine.score.run import main as score_main
from engine.score.scorers.base import Details
from tests.helpers.scripted_llm import Judge
from tests.helpers.trigger_run import make_cli_scorable, write_run

ROOT = Path(__file__).resolve().parents[2]
SCORERS = ("detection", "simulation")
N_KILLS = 3
TORN = b'{"component_key": "blocks.1.hook_resid_post/99", "lat'


def score_args(run_dir: Path, base_url: str) -> list[str]:
    return [str(run_dir), "--scorers", *SCORERS, "--provider", "openai-compatible", "--model", "judge",
            "--base-url", base_url, "--max-concurrent", "2", "--n-activating", "10", "--n-negatives", "10",
            "--n-simulated", "2", "--no-progress"]


def result_lines(run_dir: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (run_dir / "scores").glob("*.jsonl"))


def outputs(run_dir: Path) -> dict:
    """Per scorer: latent -> result and latent -> last details record (as builtins), checking there is one
    result per latent and at most a stray details line per kill."""
    out = {}
    for name in SCORERS:
        results = read_records(run_dir / "scores" / f"{name}.jsonl", ScoreResult)
        details = read_records(run_dir / "scores" / "details" / f"{name}.jsonl", Details)
        dup = {k: n for k, n in Counter(r.latent for r in results).items() if n > 1}
        assert not dup, f"{name}: latents with more than one result: {dup}"
        # details are written just before their result: a kill between the two writes leaves one
        # details line whose latent is scored again (readers take the last), so at most one per kill
        assert len(results) <= len(details) <= len(results) + N_KILLS, (name, len(results), len(details))
        out[name] = ({r.latent: msgspec.to_builtins(r) for r in results},
                     {d.latent: msgspec.to_builtins(d) for d in details})
    return out


def close(a, b, path="$"):
    """Equal JSON values, floats to 1e-9 relative (pooled sums run over rows in completion order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_sigkill_at_random_points_then_rerun_equals_uninterrupted(tmp_path):
    run = write_run(tmp_path / "run", n_latents=12, n_sequences=80, p_trigger=0.01)
    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))  # labels: the trigger words
    make_cli_scorable(run)
    reference = tmp_path / "reference"
    shutil.copytree(run.dir, reference)
    total = run.n_latents * len(SCORERS)
    rng = random.Random(20260511)
    server = FakeLLMServer(responder=Judge(run.vocab), latency_s=0.03).start_in_thread()
    cmd = [sys.executable, "-m", "engine.score", *score_args(run.dir, server.base_url)]
    stderr = tmp_path / "stderr.txt"
    try:
        asked = len(server.requests_seen)
        score_main(score_args(reference, server.base_url))  # uninterrupted, same arguments, in this process
        asked_uninterrupted = len(server.requests_seen) - asked

        kills = []  # result lines present at each kill
        for k in range(N_KILLS):
            asked, before = len(server.requests_seen), result_lines(run.dir)
            target = before + rng.randint(1, 4)
            with open(stderr, "wb") as err:
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                if k == 0 and len(server.requests_seen) > asked:  # the first request is out
                    time.sleep(rng.uniform(0.0, 0.03))
                    break
                if k and result_lines(run.dir) >= target:
                    break
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL, f"kill {k} came after the run ended: {stderr.read_text()}"
            kills.append(result_lines(run.dir))
            if k == 1:  # a kill inside a write: torn last lines
                for log in (run.dir / "scores" / "detection.jsonl", run.dir / "scores" / "details" / "detection.jsonl"):
                    with open(log, "ab") as f:
                        f.write(TORN)
        assert kills[0] < kills[1] < kills[2] < total, f"kills should land mid-run at distinct points: {kills}"

        asked = len(server.requests_seen)
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        asked_rerun = len(server.requests_seen) - asked
    finally:
        server.stop()
    assert asked_rerun < asked_uninterrupted, "the rerun should only ask about latents left unscored"
    got, want = outputs(run.dir), outputs(reference)
    for name in SCORERS:
        assert sorted(got[name][0]) == list(range(run.n_latents)), name
        assert got[name][0] == want[name][0], f"{name}: results differ from the uninterrupted run"
        assert got[name][1] == want[name][1], f"{name}: details differ from the uninterrupted run"
    for log in (run.dir / "scores").rglob("*.jsonl"):
        data = log.read_bytes()
        assert data.endswith(b"\n") and b"/99" not in data, log
    close(json.loads((run.dir / "scores" / "summary.json").read_text()),
          json.loads((reference / "scores" / "summary.json").read_text()))
    labels = "interpretations/feature_labels.json"
    assert (run.dir / labels).read_text() == (reference / labels).read_text()
