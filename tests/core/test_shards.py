"""Latent-range shards of interpret and score: separate logs, merged without duplicates (engine/shards.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.testing import FakeLLMServer
from engine.core.errors import UserError
from engine.core.jsonl import read_records
from engine.core.rundir import RunDir
from engine.core.schemas import Explanation, ScoreResult
from engine.core.shards import Shard, family
from engine.interpret.config import InterpretConfig
from engine.interpret.run import run_interpret
from engine.score.config import ScoreRunConfig
from engine.score.merge import merge_run
from engine.score.run import run_score
from engine.score.scorers.base import Details
from tests.helpers.run_files import logged_explanations
from tests.helpers.scripted_llm import Judge
from tests.helpers.trigger_run import pool_source, write_run

ROOT = Path(__file__).resolve().parents[2]
N = 12  # fixture latents


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_shards_partition_the_latents(n_latents, n_shards):
    owner = [[k for k in range(n_shards) if Shard(k, n_shards).owns(i, n_latents)] for i in range(min(n_latents, 300))]
    assert all(len(o) == 1 for o in owner)  # every latent in exactly one shard
    spans = [Shard(k, n_shards).bounds(n_latents) for k in range(n_shards)]
    assert spans[0][0] == 0 and spans[-1][1] == n_latents and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_bad_shard_spec():
    for spec in ("3/3", "-1/2", "a/b", "1", "0/0"):
        with pytest.raises(UserError, match="--shard"):
            Shard.parse(spec)
    assert Shard.parse("") is None and Shard.parse("2/5") == Shard(2, 5)


def test_parallel_interpret_shards_merge_to_the_unsharded_run(tmp_path):
    run = write_run(tmp_path / "run", n_latents=N, n_sequences=80)
    whole = tmp_path / "whole"
    shutil.copytree(run.dir, whole)
    run_interpret(whole, InterpretConfig(provider="search", progress=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "engine.interpret", str(run.dir), "--shard", f"{k}/3", "--no-progress"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in range(3)]
    for p in procs:  # three processes at once, each on its own log
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()[-2000:]
    logs = family(run.dir / "interpretations" / "results.jsonl")
    assert [p.name for p in logs] == [f"results.shard-000{k}-of-0003.jsonl" for k in range(3)]
    assert [sorted(e.latent for e in read_records(p, Explanation)) for p in logs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    # readers see every shard before any merge; a rerun of any shard or of the whole run has nothing left to do
    assert sorted(RunDir(run.dir).read_explanations()) == list(range(N))
    assert run_interpret(run.dir, InterpretConfig(provider="search", shard="1/2", progress=False))["written"] == 0
    counts = merge_run(run.dir)
    assert counts["interpretations/results.jsonl"] == {"added": N, "duplicates": 0}
    assert family(run.dir / "interpretations" / "results.jsonl") == [run.dir / "interpretations" / "results.jsonl"]
    merged = {e.latent: e for e in logged_explanations(run.dir)}
    assert len(logged_explanations(run.dir)) == N
    assert {k: (e.label, e.example_ids) for k, e in merged.items()} == {e.latent: (e.label, e.example_ids) for e in logged_explanations(whole)}
    assert merge_run(run.dir)["interpretations/results.jsonl"] == {"added": 0, "duplicates": 0}
    labels = msgspec.json.decode((run.dir / "interpretations" / "feature_labels.json").read_bytes())
    assert labels["num_features"] == N


def test_overlapping_shards_and_an_interrupted_merge_leave_one_record_each(tmp_path):
    run = write_run(tmp_path / "run", n_latents=N, n_sequences=80)
    for spec in ("0/2", "0/3", "1/3"):  # 0/2 covers 0-5; 0/3 and 1/3 cover 0-7: latents 0-5 explained twice
        run_interpret(run.dir, InterpretConfig(provider="search", shard=spec, progress=False))
    # 0/3 and 1/3 found 0/2's records and skipped them: overlap is resolved at write time too
    assert sum(len(read_records(p, Explanation)) for p in family(run.dir / "interpretations" / "results.jsonl")) == 8
    # force true duplicates: a copy of 0/2's log under another shard name, as if two machines did the same range
    src = run.dir / "interpretations" / "results.shard-0000-of-0002.jsonl"
    shutil.copy(src, run.dir / "interpretations" / "results.shard-0001-of-0004.jsonl")
    # and a merge killed after appending part of a shard: its first 3 records are already in the main log
    (run.dir / "interpretations" / "results.jsonl").write_bytes(b"".join(src.read_bytes().splitlines(keepends=True)[:3]))
    counts = merge_run(run.dir)["interpretations/results.jsonl"]
    recs = logged_explanations(run.dir)
    assert sorted(e.latent for e in recs) == list(range(8))
    assert counts == {"added": 5, "duplicates": 3 + 6}


def test_sharded_scores_equal_unsharded_and_merge_with_details(tmp_path):
    run = write_run(tmp_path / "run", n_latents=N, n_sequences=80)
    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))
    whole = tmp_path / "whole"
    shutil.copytree(run.dir, whole)
    server = FakeLLMServer(responder=Judge(run.vocab, "random", seed=5)).start_in_thread()
    try:
        def cfg(**kw):
            return ScoreRunConfig(scorers=("detection",), provider="openai-compatible", model="judge",
                                  base_url=server.base_url, progress=False, **kw)
        run_score(whole, cfg(), negatives=pool_source(run))
        for k in range(3):
            summary = run_score(run.dir, cfg(shard=f"{k}/3"), negatives=pool_source(run))
            assert summary["detection"]["latents"] == 4  # each shard summarises its own range
            assert (run.dir / "scores" / f"summary.shard-000{k}-of-0003.json").exists()
        sent = server.responses_sent
        run_score(run.dir, cfg(), negatives=pool_source(run))  # the unsharded rerun finds everything done
        assert server.responses_sent == sent
    finally:
        server.stop()
    merge_run(run.dir)
    assert sorted(p.name for p in (run.dir / "scores").iterdir()) == ["details", "detection.jsonl", "summary.json"]
    got = read_records(run.dir / "scores" / "detection.jsonl", ScoreResult)
    want = read_records(whole / "scores" / "detection.jsonl", ScoreResult)
    key = lambda r: (r.latent, r.balanced_accuracy, r.precision, r.recall, r.n_examples)  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, want))
    assert len({r.latent for r in got}) == len(got) == N
    dets = read_records(run.dir / "scores" / "details" / "detection.jsonl", Details)
    assert sorted(d.latent for d in dets) == list(range(N))
    whole_summary = msgspec.json.decode((whole / "scores" / "summary.json").read_bytes())
    merged_summary = msgspec.json.decode((run.dir / "scores" / "summary.json").read_bytes())
    assert merged_summary["detection"]["pooled"]["balanced_accuracy"] == whole_summary["detection"]["pooled"]["balanced_accuracy"]


def test_merge_cli_errors_on_a_non_run(tmp_path, capsys):
    from engine.core.errors import run_cli
    from engine.score.merge import main

    with pytest.raises(SystemExit):
        run_cli(main, [str(tmp_path)])
    assert "has no harvest/config.json" in capsys.readouterr().err


def test_live_report_reads_shards_then_the_merge_without_duplicates(tmp_path):
    from engine.report.data import Annotations

    run = write_run(tmp_path / "run", n_latents=N, n_sequences=80)
    for k in range(2):
        run_interpret(run.dir, InterpretConfig(provider="search", shard=f"{k}/2", progress=False))
    ann = Annotations(run.dir)
    assert ann.refresh() and sorted(ann.explanations) == list(range(N))
    merge_run(run.dir)  # shard records move into results.jsonl, which the viewer then reads again
    ann.refresh()
    assert all(len(v) == 1 for v in ann.explanations.values())
