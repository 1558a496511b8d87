"""The client flags through `python -m engine.interpret`: a llama.cpp-like server works end to end (the shape it
takes is learned and kept in the run folder), and a server that keeps failing ends the run with exit status 2
and one line naming the server's own message."""

import json
import os
import subprocess
import sys
from pathlib import Path

from clients.testing import FakeLLMServer, Fault
from tests.helpers.scripted_llm import explainer
from tests.helpers.trigger_run import write_run

ROOT = Path(__file__).resolve().parents[2]


def interpret(run_dir: Path, server: FakeLLMServer, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "engine.interpret", str(run_dir), "--provider", "openai-compatible",
           "--model", "smollm2", "--base-url", server.base_url, "--no-progress", *args]
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_llama_cpp_like_server_end_to_end_and_an_outage_that_ends_the_run(tmp_path):
    run = write_run(tmp_path / "run", n_latents=6, n_sequences=40)
    server = FakeLLMServer(responder=explainer, llama_cpp=True, wire="openai").start_in_thread()
    try:
        p = interpret(run.dir, server, "--max-concurrent", "2")
    finally:
        server.stop()
    assert p.returncode == 0, p.stderr
    lines = (run.dir / "interpretations" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(x)["error"] is None for x in lines)
    assert json.loads((run.dir / "capabilities.json").read_text())["smollm2"]["response_format"] == "json_object"
    kinds = [b["response_format"]["type"] for b in server.requests_seen]
    assert kinds.count("json_schema") <= 2 and kinds.count("json_object") == 6  # refused once per slot at most

    other = write_run(tmp_path / "other", n_latents=6, n_sequences=40)
    down = FakeLLMServer(faults=[Fault.http(503, times=0, message="model is loading, try later")],
                         wire="openai").start_in_thread()
    try:
        p = interpret(other.dir, down, "--breaker-cooldown-s", "0.1", "--breaker-window-s", "1.5",
                      "--max-attempts", "100")
    finally:
        down.stop()
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert last.startswith("error: explain: the client stopped: the server kept failing"), last
    assert "model is loading, try later" in last and "of 6 requests not sent" in last, last
    assert "interpret: 0 explanations written" in p.stderr  # the run's summary still comes before the line
    assert len(down.requests_seen) < 40, "while the breaker was open only probes went out"
