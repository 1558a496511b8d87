"""Issue 22: what a real grammar-constrained server (llama_cpp.server) showed our judge and explain requests get wrong.

* Judge schemas had no minItems/maxItems, so the grammar let a small model answer `{"answers": []}`:
  a judge that follows the schema's bounds the way a grammar does must now score perfectly.
* Unbounded strings (`reasoning`) ran to the token limit: every string of every schema sent has a maxLength.
* Simulation's logprob path assumed "10" is one token; SmolLM2 splits digits: a server that sends one token per
  digit gets expected values equal to the brute-force expectation over its whole-number distribution.
* Raw newlines inside JSON strings (a grammar lets them in) are read as `json.loads(strict=False)` reads them.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading

import msgspec
import pytest
from aiohttp import web

from clients.testing import FakeLLMServer
from engine.interpret.config import InterpretConfig
from engine.interpret.run import run_interpret
from engine.score.config import ScoreRunConfig
from engine.score.run import run_score
from engine.score.scorers.base import ScoreConfig
from engine.score.scorers.judge import decode_json
from engine.score.scorers.simulation import expected_values
from tests.helpers.run_files import details_by_latent as details
from tests.helpers.run_files import scores_by_latent as scored
from tests.helpers.scripted_llm import Judge, explainer
from tests.helpers.trigger_run import pool_source, write_run


@pytest.fixture()
def labelled(tmp_path):
    run = write_run(tmp_path / "run", n_sequences=100)
    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))
    return run


def sent_schema(body: dict) -> dict:
    fmt = body["response_format"]
    return fmt["json_schema"]["schema"] if fmt["type"] == "json_schema" else fmt["schema"]


def array_field(schema: dict) -> tuple[str, dict] | None:
    return next(((k, v) for k, v in schema["properties"].items() if v.get("type") == "array"), None)


class GrammarJudge:
    """The scripted judge behind a grammar: a list the schema leaves unbounded comes back empty (what the
    135M model did under llama.cpp's grammar), a bounded one as the judge answers it."""

    def __init__(self, judge: Judge):
        self.judge, self.lengths = judge, []

    def __call__(self, body: dict) -> dict:
        answer = self.judge(body)
        field = array_field(sent_schema(body))
        if field is None:
            return answer
        name, prop = field
        if "minItems" not in prop:
            return {name: []}
        self.lengths.append((len(answer[name]), prop["minItems"], prop["maxItems"]))
        return answer


def score(run, responder, scorers, **kw):
    server = FakeLLMServer(responder=responder).start_in_thread()
    try:
        cfg = ScoreRunConfig(scorers=tuple(scorers), provider="openai-compatible", model="judge",
                             base_url=server.base_url, progress=False, **kw)
        return run_score(run.dir, cfg, negatives=pool_source(run)), server
    finally:
        server.stop()


def test_judge_lists_are_fixed_to_the_number_of_excerpts(labelled):
    run = labelled
    judge = GrammarJudge(Judge(run.vocab))
    _, server = score(run, judge, ["detection", "fuzz", "simulation", "intruder"])
    for name in ("detection", "fuzz", "simulation", "intruder"):
        results = scored(run.dir, name)
        assert sorted(results) == list(range(run.n_latents)), name
        assert all(r.error is None and r.balanced_accuracy == 1.0 for r in results.values()), name
    assert judge.lengths and all(n == lo == hi for n, lo, hi in judge.lengths)  # the scripted judge counted them
    intruder = [sent_schema(b) for b in server.requests_seen if "intruder" in sent_schema(b)["properties"]]
    group = list(range(1, ScoreConfig().per_prompt + 1))  # one intruder among per_prompt excerpts
    assert intruder and all(s["properties"]["intruder"]["enum"] == group for s in intruder)
    assert_bounded([sent_schema(b) for b in server.requests_seen])


def walk(schema: dict, name: str = ""):
    yield name, schema
    for k, v in schema.get("properties", {}).items():
        yield from walk(v, k)
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], name)


def assert_bounded(schemas: list[dict]) -> None:
    """Every string has a maxLength, every array exactly as many items as the request needs."""
    kinds = set()
    for schema in schemas:
        for name, node in walk(schema):
            kinds.add(node.get("type"))
            if node.get("type") == "string":
                assert 0 < node["maxLength"] <= 800, (name, node)
            if node.get("type") == "array":
                assert 0 < node["minItems"] == node["maxItems"], (name, node)
    assert schemas and kinds & {"string", "array"}


def test_explain_strings_are_bounded(tmp_path):
    run = write_run(tmp_path / "explained", n_sequences=60)
    server = FakeLLMServer(responder=explainer).start_in_thread()
    try:
        run_interpret(run.dir, InterpretConfig(provider="openai-compatible", model="explainer", base_url=server.base_url,
                                               progress=False))
    finally:
        server.stop()
    explain = [sent_schema(b) for b in server.requests_seen]
    assert len(explain) == run.n_latents
    assert_bounded(explain)
    assert {s["properties"]["reasoning"]["maxLength"] for s in explain} == {800}
    assert {s["properties"]["label"]["maxLength"] for s in explain} == {160}


# ----------------------------------------------------------------------------- simulation, one token per digit


def whole_number_distribution(level: int) -> dict[int, float]:
    """What the digit-level server below believes about one token: mostly the judge's level, some mass beside it,
    and for level 1 some on 10 (the "1" branch then splits between 1 and 10)."""
    if level == 1:
        return {1: 0.6, 10: 0.1, 0: 0.3}
    if level == 10:
        return {10: 0.7, 9: 0.3}
    return {level: 0.7, (level + 1 if level < 9 else level - 1): 0.3}


def digit_steps(values: list[int]) -> list[dict]:
    """OpenAI logprobs content for `{"activations": [v, ...]}` with every digit its own token (SmolLM2's split):
    the first digit's alternatives are the first-digit marginals; after a generated "1" the next token's
    alternatives are "0" (-> 10) and the delimiter (-> 1), conditioned on that "1"."""
    def entry(token, alts):
        top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in alts]
        return {"token": token, "logprob": top[0]["logprob"], "bytes": list(token.encode()), "top_logprobs": top}

    steps = [entry('{"', [('{"', 1.0)]), entry("activations", [("activations", 1.0)]), entry('":', [('":', 1.0)]),
             entry(" [", [(" [", 1.0)])]
    for i, v in enumerate(values):
        dist = whole_number_distribution(v)
        first: dict[str, float] = {}
        for value, p in dist.items():
            first[str(value)[0]] = first.get(str(value)[0], 0.0) + p
        generated = str(v)[0]
        steps.append(entry(generated, sorted(first.items(), key=lambda kv: -kv[1])))
        delim = "]}" if i == len(values) - 1 else ","
        if generated == "1":
            p1, p10 = dist.get(1, 0.0), dist.get(10, 0.0)
            alts = sorted([("0", p10 / (p1 + p10)), (delim, p1 / (p1 + p10))], key=lambda kv: -kv[1])
            alts = [a for a in alts if a[1] > 0]
            if v == 10:
                steps.append(entry("0", alts))
                steps.append(entry(delim, [(delim, 1.0)]))
            else:
                steps.append(entry(delim, alts))
        else:
            steps.append(entry(delim, [(delim, 1.0)]))
    return steps


class DigitServer:
    """A local OpenAI-compatible server answering the scripted judge's simulation with per-digit logprobs."""

    def __init__(self, judge: Judge):
        self.judge, self.expected = judge, []
        self.loop = asyncio.new_event_loop()

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        values = self.judge(body)["activations"]
        steps = digit_steps(values)
        if body.get("logprobs"):  # the brute-force expectation over each number's whole distribution
            self.expected += [sum(k * p for k, p in whole_number_distribution(v).items()) for v in values]
        text = "".join(s["token"] for s in steps)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": steps}
        return web.json_response({"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": len(steps), "total_tokens": 99}})

    def __enter__(self):
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def test_simulation_reads_numbers_split_into_digit_tokens(labelled):
    run = labelled
    with DigitServer(Judge(run.vocab)) as server:
        cfg = ScoreRunConfig(scorers=("simulation",), provider="openai-compatible", model="digits",
                             base_url=server.base_url, progress=False, score=ScoreConfig(logprobs=5))
        run_score(run.dir, cfg, negatives=pool_source(run))
    windows = [w for d in details(run.dir, "simulation").values() for w in d.windows]
    predicted = sorted(v for w in windows for v in w.predicted)
    assert len(predicted) == len(server.expected) > 0
    assert predicted == pytest.approx(sorted(server.expected), abs=1e-9)
    assert any(abs(v - round(v)) > 0.05 for v in predicted)  # expected values, not the JSON integers
    assert all(r.error is None for r in scored(run.dir, "simulation").values())


def test_expected_values_split_ten_against_brute_force():
    """Direct: "1" "0" is one number (10), "1" "," is 1 with P(10) from the token after it."""
    for level in (1, 10, 0, 9, 5):
        steps = digit_steps([level, 3])
        lp = [[(t["token"], t["logprob"]) for t in s["top_logprobs"]] for s in steps]
        brute = [sum(k * p for k, p in whole_number_distribution(v).items()) for v in (level, 3)]
        assert expected_values(lp) == pytest.approx(brute, abs=1e-12), level
    assert expected_values([[("10", 0.0)], [(",", 0.0)]]) == [10.0]  # one-token tokenizers are unchanged


class Says(msgspec.Struct):
    reasoning: str
    answers: list[int]


def test_raw_control_characters_in_judge_strings_are_read():
    text = '{"reasoning": "line one\nline\ttwo", "answers": [1, 0]}'
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)  # strict JSON refuses it
    got = decode_json("Sure: " + text, None, Says)
    assert got == Says(reasoning="line one\nline\ttwo", answers=[1, 0])
    assert decode_json('{"reasoning": "x", "answers": [1, "no"]}', None, Says) is None  # still typed
