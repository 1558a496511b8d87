"""The harvest command's own work around the loop: checkpoints only when asked, Ctrl-C and bad data
mid-run still saving a resumable state (never part of a batch), the prefetching tokenizer thread, and
--resume with another --n-batches keeping the token store."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.core.errors import UserError
from engine.harvest.data import iter_texts
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.harvester import Harvester
from engine.harvest.run import main as harvest_main

SMALL = ["--batch-size", "4", "--context-length", "64", "--top-k", "5", "--n-random", "4", "--window", "3", "--device", "cpu"]


def run(out: Path, *extra, dataset: str = DEFAULT_DATASET, n_batches: int = 3) -> Path:
    return harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", dataset, "--out", str(out), "--n-batches", str(n_batches),
                         *SMALL, *extra])


def ckpt_done(out: Path) -> int | None:
    """sequences_done of RUN/harvest/checkpoint, None when there is none."""
    f = out / "harvest" / "checkpoint" / "state.json"
    return json.loads(f.read_text())["meta"]["sequences_done"] if f.exists() else None


def same_results(a: Path, b: Path) -> None:
    sa, sb = load_file(str(a / "harvest" / "stats.safetensors")), load_file(str(b / "harvest" / "stats.safetensors"))
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for name in ("components.jsonl", "tokens.bin"):
        assert (a / "harvest" / name).read_bytes() == (b / "harvest" / name).read_bytes(), name


def no_prefetch_thread(timeout: float = 3.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(t.name == "harvest-prefetch" and t.is_alive() for t in threading.enumerate()):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    run(out)
    return out


def test_final_checkpoint_only_when_asked(tmp_path, reference):
    assert ckpt_done(reference) is None and not (reference / "harvest" / "checkpoint").exists()  # the default: none
    asked = tmp_path / "asked"
    run(asked, "--final-checkpoint")
    assert ckpt_done(asked) == 12
    periodic = tmp_path / "periodic"
    run(periodic, "--checkpoint-every", "2")  # periodic checkpoints keep the final one (so --resume reloads it)
    assert ckpt_done(periodic) == 12
    for out in (asked, periodic):
        same_results(out, reference)
    run(asked, "--resume")  # a finished run's checkpoint is reloaded, nothing recomputed, and it stays
    assert ckpt_done(asked) == 12
    same_results(asked, reference)
    run(periodic, "--checkpoint-every", "2", "--no-final-checkpoint")  # periodic ones are removed once results are written
    assert not (periodic / "harvest" / "checkpoint").exists()
    same_results(periodic, reference)
    assert no_prefetch_thread()


@pytest.fixture()
def terminal_sigint():
    """Python's own SIGINT handler, as under a terminal: a runner that starts the tests in the background
    (`cmd &` in a script) hands the process SIGINT ignored, and then no Ctrl-C reaches the harvest at all."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_mid_batch_saves_whole_batches_and_resumes_exactly(tmp_path, reference, monkeypatch, terminal_sigint):
    """SIGINT between a batch's state update and its bookkeeping: the run stops after that batch and the
    checkpoint says so (before, the checkpoint held batch 2 but claimed 1, and --resume folded it in twice)."""
    out = tmp_path / "interrupted"
    orig, calls = Harvester.update, []

    def update(self, *args, **kw):
        orig(self, *args, **kw)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Harvester, "update", update)
    with pytest.raises(KeyboardInterrupt):
        run(out)
    assert len(calls) == 2 and ckpt_done(out) == 8  # two whole batches of 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert no_prefetch_thread()
    monkeypatch.setattr(Harvester, "update", orig)
    run(out, "--resume")
    same_results(out, reference)
    assert ckpt_done(out) is None  # the interrupted checkpoint is behind the finished results: removed


def _dataset_with_bad_line(path: Path, tokenizer_tokens_before: int) -> list[str]:
    """Short documents (corpus pieces), an invalid JSON line after about `tokenizer_tokens_before` tokens, more documents."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    text = next(iter_texts(DEFAULT_DATASET))
    pieces = [text[i : i + 300] for i in range(0, len(text), 300)]
    lines, n = [], 0
    for p in pieces:
        if n >= tokenizer_tokens_before and "BAD" not in lines:
            lines.append("BAD")
        lines.append(json.dumps({"text": p}))
        n += len(tok(p, add_special_tokens=False)["input_ids"]) + 1
    path.write_text("\n".join(lines) + "\n")
    return lines


def test_bad_data_midway_saves_and_resumes(tmp_path):
    """A data error found by the prefetch thread surfaces in order: the batches before it are folded in and
    checkpointed, the error is the one-line UserError, and after the fix --resume equals a clean run."""
    data = tmp_path / "data.jsonl"
    lines = _dataset_with_bad_line(data, 2 * 4 * 63 + 20)  # two whole batches of 4 x (64 - BOS) before the bad line
    out = tmp_path / "bad"
    with pytest.raises(UserError, match=r"data.jsonl:\d+ is not valid JSON"):
        run(out, dataset=str(data), n_batches=5)
    assert ckpt_done(out) == 8
    assert no_prefetch_thread()
    data.write_text("\n".join(x for x in lines if x != "BAD") + "\n")
    run(out, "--resume", dataset=str(data), n_batches=5)
    clean = tmp_path / "clean"
    run(clean, dataset=str(data), n_batches=5)
    same_results(out, clean)


def test_resume_with_more_batches_keeps_the_token_store(tmp_path, reference):
    out = tmp_path / "grow"
    run(out, "--checkpoint-every", "1", n_batches=2)
    run(out, "--resume", "--checkpoint-every", "1")  # 3 batches now: tokens.bin grows, the first rows stay
    same_results(out, reference)
    with pytest.raises(UserError, match="more than the 4 this run asks for"):
        run(out, "--resume", n_batches=1)
