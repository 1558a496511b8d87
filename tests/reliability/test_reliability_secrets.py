"""The API key never reaches a file of the run, stdout or stderr, whole or in part.

`python -m engine.interpret` and `python -m engine.score` run against the fake
server with a distinctive key in the environment, through both wire formats:
clean runs, runs whose 401 and 500 replies echo the key back (as some proxies
do), a failing batch create under --debug (traceback shown). The server checks
the key, so it was really sent. Then every file under the run directory and
every captured stream is searched for any 8-character piece of the key. Some
replies echo only a 20-character prefix of the key, which exact-match redaction
would have let through.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clients.anthropic import AnthropicWire
from clients.base import CompletionRequest
from clients.config import Prices
from clients.keys import Secret, redact
from clients.openai_compat import OpenAIWire
from clients.testing import FakeLLMServer, Fault
from engine.interpret.config import InterpretConfig
from engine.interpret.run import run_interpret
from tests.helpers.scripted_llm import Judge, explainer, prompt_text
from tests.helpers.trigger_run import make_cli_scorable, write_run

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-ant-api03-Zq7RELIABILITY4c1e9b82f0d6a53-xK"
PIECES = [KEY[i : i + 8] for i in range(len(KEY) - 7)]
"Every 8-character piece: a key cut anywhere (e.g. its first 20 characters) still counts as a leak."
ECHO = f"invalid x-api-key: {KEY}"
ECHO_PREFIX = f"invalid x-api-key: {KEY[:20]}... (truncated)"
"What a server that echoes a prefix of the key sends."


def leaks(data: bytes | str) -> list[str]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return [p for p in PIECES if p in text]


def responder(vocab):
    judge = Judge(vocab)

    def reply(body: dict) -> dict:
        text = prompt_text(body)
        return explainer(body) if '"label"' in text and "Latent " in text else judge(body)

    return reply


def run_cli(module: str, run_dir: Path, server: FakeLLMServer, provider: str, *args: str):
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "OPENAI_API_KEY": KEY}
    model = "claude-haiku-4-5" if provider == "anthropic" else "local"
    cmd = [sys.executable, "-m", module, str(run_dir), "--provider", provider, "--model", model,
           "--base-url", server.base_url, "--max-concurrent", "4", "--no-progress", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def serve(vocab, wire: str, faults=()) -> FakeLLMServer:
    return FakeLLMServer(responder=responder(vocab), faults=list(faults), api_key=KEY, wire=wire).start_in_thread()


def test_key_appears_in_no_file_and_no_output(tmp_path):
    run = write_run(tmp_path / "run", n_latents=6, n_sequences=60)
    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))
    make_cli_scorable(run)
    score_args = ("--scorers", "detection", "simulation", "--n-activating", "5", "--n-negatives", "5",
                  "--n-simulated", "1")
    echo_500 = dict(retry_after=0.01, message=ECHO)
    runs: list[tuple[str, subprocess.CompletedProcess]] = []
    servers: list[FakeLLMServer] = []

    def step(name, faults, wire, module, provider, *args):
        server = serve(run.vocab, wire, faults)
        servers.append(server)
        try:
            runs.append((name, run_cli(module, run.dir, server, provider, *args)))
        finally:
            server.stop()
        return runs[-1][1]

    # interpret, Anthropic wire: 500s echoing the key (retried away), 400s echoing it (prompts naming latent 3
    # fail for good), then a 401 for those on the rerun
    p = step("interpret 500/400", [Fault.http(400, match="hook_resid_post/3 (", times=0, message=ECHO),
                                   Fault.http(500, times=2, **echo_500)], "anthropic", "engine.interpret", "anthropic")
    assert p.returncode == 0 and "***" in p.stderr, p.stderr  # the echoed key was logged, redacted
    p = step("interpret 401 --debug", [Fault.http(401, message=ECHO_PREFIX, times=0)], "anthropic",
             "engine.interpret", "anthropic", "--debug")
    assert p.returncode != 0 and "ClientStopped" in p.stderr and "not sent" in p.stderr, p.stderr
    p = step("interpret 401", [Fault.http(401, message=ECHO_PREFIX, times=0)], "anthropic", "engine.interpret",
             "anthropic")
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and last.startswith("error: explain: the client stopped") and "***" in last, p.stderr
    # a batch create refused with the key in the message: a UserError, shown with its traceback under --debug
    p = step("interpret --batch 401 --debug", [Fault.http(401, message=ECHO, times=0)], "anthropic",
             "engine.interpret", "anthropic", "--batch", "--debug")
    assert p.returncode != 0 and "Traceback" in p.stderr and "http_401" in p.stderr, p.stderr
    # interpret over the OpenAI wire (OPENAI_API_KEY is read when set), then score over both wires
    p = step("interpret openai", [Fault.http(500, times=2, **echo_500),
                                  Fault.http(500, times=2, retry_after=0.01, message=ECHO_PREFIX)], "openai",
             "engine.interpret", "openai-compatible")
    assert p.returncode == 0, p.stderr
    p = step("score 500/401 --debug", [Fault.http(500, times=3, **echo_500),
                                       Fault.http(401, match="the word echo", message=ECHO_PREFIX)],
             "anthropic", "engine.score", "anthropic", *score_args, "--debug")
    assert p.returncode != 0 and "ClientStopped" in p.stderr and "not sent" in p.stderr, p.stderr
    p = step("score openai", [Fault.http(500, times=2, **echo_500)], "openai", "engine.score", "openai-compatible",
             *score_args)
    assert p.returncode == 0, p.stderr

    for server in servers:  # the key was sent (the server checks it) and the echoing faults were served
        assert server.headers_seen and all(KEY in (h.get("x-api-key", "") + h.get("Authorization", ""))
                                           for h in server.headers_seen)
        assert server.stats()["faults_served"] > 0
    assert (run.dir / "scores" / "detection.jsonl").exists() and (run.dir / "interpretations" / "batches.json").exists()
    found = {f"{name} {stream}": leaks(text) for name, p in runs for stream, text in (("stdout", p.stdout),
                                                                                       ("stderr", p.stderr))}
    files = [f for f in run.dir.rglob("*") if f.is_file()]
    found |= {str(f.relative_to(run.dir)): leaks(f.read_bytes()) for f in files}
    assert len(files) > 10
    assert not any(found.values()), {k: v for k, v in found.items() if v}


@pytest.mark.parametrize("wire", ["anthropic", "openai"])
def test_error_body_cut_for_the_log_keeps_no_piece_of_the_key(wire):
    """A non-JSON error page echoing the request headers, the key straddling where the detail is cut."""
    Secret(KEY)  # what read_key registers for redaction
    raw = b"<html><pre>" + b"x" * 147 + b"Authorization: Bearer " + KEY.encode() + b"</pre></html>"
    assert raw.index(KEY.encode()) == 180  # error details keep the first 200 bytes of a body they cannot parse
    w = (AnthropicWire("claude-haiku-4-5", "http://127.0.0.1:9", None, Prices()) if wire == "anthropic"
         else OpenAIWire("local", "http://127.0.0.1:9/v1", None, Prices()))
    v = w.interpret(CompletionRequest(custom_id="x", prompt="p"), 502, {}, raw)
    assert v.kind == "retry" and not leaks(redact(v.detail)), v.detail


def test_redact_removes_every_piece_of_8_or_more_and_nothing_else():
    """Against brute force: after redaction no 8-character window of the text is a substring of the key, and
    text sharing no such window with the key comes back unchanged."""
    import random

    Secret(KEY)
    rng = random.Random(0)
    filler = "abcdefghij klmnop-_0123456789"
    for _ in range(300):
        lo = rng.randrange(len(KEY) - 8)
        piece = KEY[lo : rng.randrange(lo + 8, len(KEY) + 1)]
        head = "".join(rng.choice(filler) for _ in range(rng.randrange(30)))
        text = head + piece + "".join(rng.choice(filler) for _ in range(rng.randrange(30)))
        out = redact(text)
        assert not leaks(out) and "***" in out, (text, out)
        assert out.startswith(redact(head)[: max(0, len(head) - 8)])  # what precedes the piece is kept
    clean = f"{KEY[:7]} alone is 7 characters of the key, and so is {KEY[-7:]}: both are kept"
    assert redact(clean) == clean and redact(KEY[:7] + " " + KEY[7:14]) == KEY[:7] + " " + KEY[7:14]
