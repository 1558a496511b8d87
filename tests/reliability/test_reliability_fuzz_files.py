"""Fuzzing every reader of result files: nothing raises but a one-line UserError naming the file.

Append-only logs, score logs and their summaries, exports, harvest/components.jsonl,
config.json, the batch state and the cached negative pool are either read or
refused. Inputs are valid files with lines torn, fields replaced or left out,
strings that are not UTF-8, nesting past the decoder's limit, junk bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.anthropic_batches import BatchRecord, BatchState, load_state
from clients.base import CompletionResponse
from clients.errors import ClientConfigError
from clients.usage import Usage
from engine.core.errors import UserError
from engine.core.jsonl import JsonlAppender, read_records, repair_tail
from engine.core.rundir import RunDir
from engine.core.schemas import Explanation, ScoreResult
from engine.interpret.config import InterpretConfig
from engine.interpret.exports import write_exports
from engine.interpret.negatives import NegativePool
from engine.interpret.run import run_interpret
from engine.report.data import Annotations, RunData
from engine.score.items import to_result
from engine.score.scorers import registry
from engine.score.scorers.base import Details, ScoreConfig
from engine.score.summary import summarize
from tests.helpers.fuzz_inputs import DEEP, FUZZ, json_value, labelled_item, not_utf8, reply_sizes
from tests.helpers.trigger_run import write_run

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")  # DEEP in a failing example


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small search-labelled run, its negatives (a replayed pool) and one latent's ScoreItem."""
    return labelled_item(tmp_path_factory.mktemp("fuzz") / "run")


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, synthetic):
    """A synthetic run with explanations and detection/simulation scores, and valid lines of every log."""
    item = synthetic[2]
    run = write_run(tmp_path_factory.mktemp("files") / "run", n_latents=3, n_sequences=40)
    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))
    scorers = registry(ScoreConfig(n_boot=20))
    answers = {"detection": lambda n: {"answers": [1] * n}, "simulation": lambda n: {"activations": [5] * n}}
    lines: dict[str, list[bytes]] = {"Explanation": [], "ScoreResult": [], "Details": [], "ComponentData": []}
    enc = msgspec.json.Encoder()
    for name, answer in answers.items():
        s = scorers[name]
        replies = [CompletionResponse(custom_id="x", text=json.dumps(answer(n)), parsed=None, stop_reason="end",
                                      usage=Usage(), model="m") for n in reply_sizes(s, item)]
        d = s.outcome(item, replies)
        with JsonlAppender(run.dir / "scores" / "details" / f"{name}.jsonl", Details) as det, \
                JsonlAppender(run.dir / "scores" / f"{name}.jsonl", ScoreResult) as res:
            for latent in range(run.n_latents):
                d_l = msgspec.structs.replace(d, latent=latent, component_key=f"h/{latent}")
                det.append(d_l)
                res.append(to_result(d_l, "m", Usage(), n_boot=20))
        lines["Details"].append(enc.encode(d) + b"\n")
        lines["ScoreResult"].append(enc.encode(to_result(d, "m", Usage(), n_boot=20)) + b"\n")
    for key, path in (("Explanation", "interpretations/results.jsonl"), ("ComponentData", "harvest/components.jsonl")):
        lines[key] = (run.dir / path).read_bytes().splitlines(keepends=True)
    return run, lines


@st.composite
def log_bytes(draw, valid: list[bytes]):
    """A log file: valid lines, torn lines, lines with a field replaced or removed, a string that is not
    UTF-8, nesting past the decoder's limit, junk bytes, blank lines."""
    pieces = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 11))
        line = draw(st.sampled_from(valid))
        if kind <= 3:
            pieces.append(line)
        elif kind == 4:
            pieces.append(line[: draw(st.integers(0, len(line)))])
        elif kind in (5, 6):
            obj = json.loads(line)
            key = draw(st.sampled_from(sorted(obj))) if isinstance(obj, dict) and obj else None
            if key is not None and draw(st.booleans()):
                obj.pop(key)
            elif key is not None:
                obj[key] = draw(json_value)
            pieces.append(json.dumps(obj).encode() + b"\n")
        elif kind == 7:
            pieces.append(draw(st.binary(max_size=24)))
        elif kind == 8:
            pieces.append(not_utf8(line))
        elif kind == 9:
            pieces.append(b'{"latent": 1, "x": ' + DEEP.encode() + b"}\n")
        else:
            pieces.append(draw(st.sampled_from([b"\n", b"  \n", b"\r\n", b"{}\n", b"null\n", b"\xff\xfe\n", b"[]"])))
    return b"".join(pieces)


def read_or_refuse(fn, path):
    """fn()'s value, or the one-line error it raised (the engine's UserError, the clients' ClientConfigError
    for a batch state file), which must name `path`."""
    try:
        return fn()
    except (UserError, ClientConfigError) as e:
        msg = str(e)
        assert str(path) in msg and "\n" not in msg, msg
        return UserError


@FUZZ
@given(data=st.data(), type_name=st.sampled_from(["Explanation", "ScoreResult", "Details"]))
def test_append_only_logs_read_repair_and_append(scored_run, tmp_path_factory, data, type_name):
    _, lines = scored_run
    type_ = {"Explanation": Explanation, "ScoreResult": ScoreResult, "Details": Details}[type_name]
    content = data.draw(log_bytes(lines[type_name]))
    path = tmp_path_factory.mktemp("log") / "log.jsonl"
    path.write_bytes(content)
    before = read_or_refuse(lambda: read_records(path, type_), path)
    repair_tail(path, type_)
    after = path.read_bytes()
    assert after == b"" or after.endswith(b"\n")
    assert read_or_refuse(lambda: read_records(path, type_), path) == before  # repair drops only what no reader used
    new = msgspec.json.decode(lines[type_name][0], type=type_)
    path.write_bytes(content)

    def append():
        with JsonlAppender(path, type_) as log:
            log.append(new)
        return read_records(path, type_)

    got = read_or_refuse(append, path)
    assert got is UserError if before is UserError else got == [*before, new]


def copy_of(run_dir: Path, tmp_path_factory, name: str) -> Path:
    """A fresh copy of the run, to damage."""
    d = tmp_path_factory.mktemp(name) / "run"
    shutil.copytree(run_dir, d)
    return d


@FUZZ
@given(data=st.data())
def test_score_logs_summaries_exports_and_report_read_or_refuse(scored_run, tmp_path_factory, data):
    run, lines = scored_run
    d = copy_of(run.dir, tmp_path_factory, "scores")
    for name in ("detection", "simulation"):
        if data.draw(st.booleans()):
            (d / "scores" / f"{name}.jsonl").write_bytes(data.draw(log_bytes(lines["ScoreResult"])))
        if data.draw(st.booleans()):
            (d / "scores" / "details" / f"{name}.jsonl").write_bytes(data.draw(log_bytes(lines["Details"])))
    if data.draw(st.booleans()):
        (d / "interpretations" / "results.jsonl").write_bytes(data.draw(log_bytes(lines["Explanation"])))
    for fn in (lambda: summarize(d, ["detection", "simulation"], None, n_boot=10), lambda: RunDir(d).latest_scores(),
               lambda: write_exports(d), lambda: Annotations(d).refresh()):
        read_or_refuse(fn, d)


@FUZZ
@given(data=st.data())
def test_components_and_config_read_or_refuse(scored_run, tmp_path_factory, data):
    run, lines = scored_run
    d = copy_of(run.dir, tmp_path_factory, "components")
    components = data.draw(log_bytes(lines["ComponentData"]))
    (d / "harvest" / "components.jsonl").write_bytes(components)
    if data.draw(st.integers(0, 3)) == 0:
        config = (d / "harvest" / "config.json").read_bytes()
        (d / "harvest" / "config.json").write_bytes(data.draw(log_bytes([config + b"\n"])))
    read_or_refuse(lambda: RunDir(d).load_config(), d)
    read_or_refuse(lambda: list(RunDir(d).iter_components()), d)

    def report():
        r = RunData(d)
        return [r.decode_component(line, off) for off, line in r.scan()]

    read_or_refuse(report, d)
    state = msgspec.json.encode(BatchState(batches=[BatchRecord(id="msgbatch_1", custom_ids=["a-1"], created_at=1.0)]))
    (d / "interpretations" / "batches.json").write_bytes(data.draw(log_bytes([state])))
    read_or_refuse(lambda: load_state(d / "interpretations" / "batches.json"), d)


@FUZZ
@given(data=st.data())
def test_damaged_negative_pool_cache_is_rebuilt_not_raised(synthetic, tmp_path_factory, data):
    pool, meta = synthetic[1].pool, {"settings": 1}
    path = tmp_path_factory.mktemp("pool") / "pool.npz"
    pool.save(path, meta)
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["cut", "byte", "insert"]))
        if op == "cut":
            raw = raw[:at]
        elif op == "byte":
            raw[at] = data.draw(st.integers(0, 255))
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        if not raw:
            break
    path.write_bytes(bytes(raw))
    got = NegativePool.load(path, meta, pool.vocab, pool.seed)  # None: score builds the pool again
    if got is not None:  # zip CRCs: what loads is the pool that was saved
        assert (got.token_ids == pool.token_ids).all() and (got.fires == pool.fires).all()
