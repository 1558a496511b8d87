"""engine.interpret end to end on a synthetic run: offline labels, a scripted LLM server, resume, kill -9.

The synthetic run (tests/helpers/trigger_run.py) has latents that fire on one known
word each, so the right label is known and a scripted explainer can give it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from clients.testing import FakeLLMServer, Fault
from engine.core.errors import UserError
from engine.core.examples import exclude_shown, strata
from engine.core.rundir import RunDir
from engine.interpret.config import InterpretConfig
from engine.interpret.run import run_interpret
from tests.helpers.run_files import logged_explanations as results
from tests.helpers.scripted_llm import explainer, prompt_text
from tests.helpers.trigger_run import TRIGGERS, pool_source, write_run

ROOT = Path(__file__).resolve().parents[2]


def llm_cfg(server, **kw) -> InterpretConfig:
    return InterpretConfig(provider="openai-compatible", model="m", base_url=server.base_url, progress=False, **kw)


@pytest.fixture()
def run(tmp_path):
    return write_run(tmp_path / "run")


def test_search_labels_offline_and_seed_exports(run):
    counts = run_interpret(run.dir, InterpretConfig(provider="search", progress=False))
    recs = results(run.dir)
    assert counts["written"] == run.n_latents == len(recs)
    assert sorted(r.latent for r in recs) == list(range(run.n_latents))
    for r in recs:
        assert r.source == "search" and r.explainer == "search" and r.error is None
        assert r.label == r.search_label == TRIGGERS[r.latent].strip()  # the one word each latent fires on
    labels = json.loads((run.dir / "interpretations" / "feature_labels.json").read_text())
    assert labels["num_features"] == run.n_latents
    f0 = labels["features"][0]
    assert list(f0)[:6] == ["feature_index", "score", "label_llm", "label_search", "label", "num_examples"]
    assert f0["label_llm"] == "" and f0["label"] == "alpha"
    lines = (run.dir / "interpretations" / "feature_examples.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"feature_id", "score", "examples"}
    assert list(first["examples"][0])[:4] == ["activation", "sequence_index", "token_position", "text"]  # seed's first
    assert " alpha" in first["examples"][0]["text"]
    # a rerun finds everything done and appends nothing
    assert run_interpret(run.dir, InterpretConfig(provider="search", progress=False))["written"] == 0
    assert len(results(run.dir)) == run.n_latents


def test_scripted_llm_every_latent_exactly_one_result(run):
    with_server = FakeLLMServer(responder=explainer).start_in_thread()
    try:
        counts = run_interpret(run.dir, llm_cfg(with_server))
        bodies = list(with_server.requests_seen)
    finally:
        with_server.stop()
    recs = results(run.dir)
    assert counts == {"written": run.n_latents, "skipped": 0, "failed": 0, "not_sent": 0}
    assert Counter(r.latent for r in recs) == Counter(range(run.n_latents))
    for r in recs:
        assert r.source == "llm" and r.error is None and r.model == "m" and r.explainer == "default"
        assert r.label == f"the word {TRIGGERS[r.latent].strip()}"
        assert r.search_label == TRIGGERS[r.latent].strip()
        assert len(r.prompt_hash) == 16 and r.example_ids
    # the instructions and run context are byte-identical in every request (cacheable), the item differs
    systems = {json.dumps(b["messages"][0]) for b in bodies}
    assert len(systems) == 1 and len(bodies) == run.n_latents
    assert all(b["response_format"]["type"] == "json_schema" for b in bodies)
    labels = json.loads((run.dir / "interpretations" / "feature_labels.json").read_text())["features"]
    assert all(f["label_llm"] == f["label"] == f"the word {TRIGGERS[f['feature_index']].strip()}" for f in labels)


def test_explainer_examples_are_the_stored_ids_and_disjoint_from_held_out(run):
    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))
    by_latent = {r.latent: r for r in results(run.dir)}
    for c in RunDir(run.dir).iter_components():
        shown = set(by_latent[c.latent].example_ids)
        windows = strata(c, 5)
        held = exclude_shown(windows, sorted(shown), run.window)
        assert shown and held
        assert not shown & {w.id for w in held}
        shown_windows = [w for w in windows if w.id in shown]
        assert len(shown_windows) == len(shown)
        for h in held:
            assert not any(h.overlaps(s.sequence, s.start, s.end) for s in shown_windows)


def test_failures_fall_back_to_search_label_and_are_retried(run):
    bad = "Latent blocks.1.hook_resid_post/3 "  # only the item text of latent 3 contains this
    server = FakeLLMServer(responder=explainer, faults=[Fault.of("bad_json", match=bad)]).start_in_thread()
    try:
        counts = run_interpret(run.dir, llm_cfg(server))
        assert counts["failed"] == 1
        failed = [r for r in results(run.dir) if r.error]
        assert [(r.latent, r.error, r.label) for r in failed] == [(3, "invalid_json", TRIGGERS[3].strip())]
        again = run_interpret(run.dir, llm_cfg(server))  # only the failed latent is sent again
        assert again["written"] == 1 and again["failed"] == 0
    finally:
        server.stop()
    recs = results(run.dir)
    assert len(recs) == run.n_latents + 1
    final = RunDir(run.dir).read_explanations()[3]
    assert final[-1].error is None and final[-1].label == "the word delta"


def test_budget_refusals_write_nothing(run):
    server = FakeLLMServer(responder=explainer).start_in_thread()
    try:
        counts = run_interpret(run.dir, llm_cfg(server, max_cost=0.0))
    finally:
        server.stop()
    assert counts["written"] == 0 and counts["not_sent"] == run.n_latents
    assert results(run.dir) == []


def test_dry_run_prints_one_prompt_and_sends_nothing(run, capsys):
    server = FakeLLMServer(responder=explainer).start_in_thread()
    try:
        run_interpret(run.dir, InterpretConfig(provider="openai-compatible", model="claude-haiku-4-5",
                                               base_url=server.base_url, dry_run=True, progress=False))
        assert server.stats()["requests_seen"] == 0
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert out.count("=== system ===") == 1 and "Latent blocks.1.hook_resid_post/0" in out
    assert f"dry run: {run.n_latents} latents" in out and "estimated cost: $" in out
    assert not (run.dir / "interpretations" / "results.jsonl").exists()


def test_contrastive_shows_verified_negatives_and_records_their_ids(run):
    seen = []

    def responder(body):
        seen.append(prompt_text(body))
        return explainer(body)

    server = FakeLLMServer(responder=responder).start_in_thread()
    try:
        run_interpret(run.dir, llm_cfg(server, explainer="contrastive", n_non_activating=4), negatives=pool_source(run))
    finally:
        server.stop()
    assert all("Counter-example 4:" in t and "Non-activating examples" in t for t in seen)
    for r in results(run.dir):
        assert r.explainer == "contrastive" and r.error is None
        negative_ids = r.example_ids[-4:]
        for i in negative_ids:  # the rule says the latent is zero on the whole window
            seq, pos = map(int, i.split(":"))
            window = run.tokens[seq, pos - run.window : pos + run.window + 1]
            assert run.trigger_id(r.latent) not in window.tolist()


def test_missing_key_is_one_line_and_bad_inputs_are_user_errors(run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    p = subprocess.run([sys.executable, "-m", "engine.interpret", str(run.dir), "--provider", "anthropic",
                        "--model", "claude-haiku-4-5", "--no-progress"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == ("error: API key missing: set the environment variable "
                                                 "ANTHROPIC_API_KEY (e.g. `export ANTHROPIC_API_KEY=...`)")
    assert "Traceback" not in p.stderr
    with pytest.raises(UserError, match="config.json not found"):
        run_interpret(tmp_path / "nope", InterpretConfig())
    with pytest.raises(UserError, match="needs --model"):
        run_interpret(run.dir, InterpretConfig(provider="anthropic"))


def test_sigkill_mid_run_then_rerun_no_duplicates_no_gaps(tmp_path):
    run = write_run(tmp_path / "run", n_latents=16, n_sequences=80, p_trigger=0.01)
    server = FakeLLMServer(responder=explainer, latency_s=0.15).start_in_thread()
    log = run.dir / "interpretations" / "results.jsonl"
    cmd = [sys.executable, "-m", "engine.interpret", str(run.dir), "--provider", "openai-compatible", "--model", "m",
           "--base-url", server.base_url, "--max-concurrent", "2", "--no-progress"]
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (not log.exists() or log.read_bytes().count(b"\n") < 4):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        done_before = log.read_bytes().count(b"\n")
        assert 4 <= done_before < run.n_latents, "the kill should land mid-run"
        with open(log, "ab") as f:  # what a kill inside a write leaves: a torn last line
            f.write(b'{"component_key": "blocks.1.hook_resid_post/99", "lat')
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
    finally:
        server.stop()
    recs = results(run.dir)
    assert Counter(r.latent for r in recs) == Counter(range(run.n_latents))  # each exactly once
    assert all(r.error is None for r in recs)
    assert log.read_bytes().endswith(b"\n") and b"/99" not in log.read_bytes()
    sent = Counter(json.dumps(b["messages"][-1]) for b in server.requests_seen)
    assert len(sent) == run.n_latents  # every latent was asked; a latent asked twice was killed in flight


def test_anthropic_batch_mode(run, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-0123456789")
    server = FakeLLMServer(responder=explainer, batch_polls=1).start_in_thread()
    try:
        cfg = InterpretConfig(provider="anthropic", model="claude-haiku-4-5", base_url=server.base_url, batch=True,
                              batch_poll_s=0.01, progress=False)
        counts = run_interpret(run.dir, cfg)
        assert server.stats()["batches"] == 1
        assert run_interpret(run.dir, cfg)["written"] == 0  # resumed: nothing left, no second batch
        assert server.stats()["batches"] == 1
    finally:
        server.stop()
    assert counts["written"] == run.n_latents
    recs = results(run.dir)
    assert sorted(r.latent for r in recs) == list(range(run.n_latents))
    assert all(r.label == f"the word {TRIGGERS[r.latent].strip()}" and r.model == "claude-haiku-4-5" for r in recs)
    assert "test-key-0123456789" not in (run.dir / "interpretations" / "results.jsonl").read_text()


def test_a_stopped_client_leaves_the_remaining_prompts_unbuilt(tmp_path, monkeypatch):
    """A refused key stops the client at its first reply: the prompts (and windows) of the latents after the
    requests already pulled are never built, the message counts all but the one refused request as not sent,
    and nothing is written, so a rerun sends them all."""
    import engine.interpret.run as interpret_run
    from clients.errors import ClientStopped

    big = write_run(tmp_path / "big", n_latents=16)
    built = []
    real = interpret_run.explain_prompt
    monkeypatch.setattr(interpret_run, "explain_prompt", lambda *a, **k: built.append(1) or real(*a, **k))
    server = FakeLLMServer(responder=explainer, faults=[Fault.http(401, times=0)]).start_in_thread()
    try:
        with pytest.raises(ClientStopped) as stop:
            run_interpret(big.dir, llm_cfg(server, max_concurrent=1))
    finally:
        server.stop()
    assert 1 <= len(built) <= 4 * 1 + 1 < big.n_latents  # the runner's window (4 x concurrency), not every latent
    assert f"{big.n_latents - 1} of {big.n_latents} requests not sent" in str(stop.value)  # one went, refused
    assert results(big.dir) == []
