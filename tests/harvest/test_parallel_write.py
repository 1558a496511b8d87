"""Forked writers of one JSONL file: byte-identical to one process, and a failed child costs no line."""

import os
import sys

import pytest

from engine.core.errors import UserError
from engine.harvest.parallel_write import choose_workers, write_parts

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked writers run on Linux only"),
              # JAX (imported by earlier tests of this process) warns at every fork; these children write toy lines
              pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")]


def _lines(items, f, advance):
    for i in items:
        f.write(f'{{"item": {i}, "pid_free": "{"x" * (i % 7)}"}}\n'.encode())
        if advance is not None:
            advance(1)


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_parts_join_to_the_serial_file(tmp_path, workers):
    items = list(range(103))
    write_parts(tmp_path / "serial", items, _lines, 1)
    done = []
    write_parts(tmp_path / "forked", items, _lines, workers, done.append)
    assert (tmp_path / "forked").read_bytes() == (tmp_path / "serial").read_bytes()
    assert sum(done) == len(items)  # progress counts every item once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forked", "serial"]  # no part file left


def test_a_child_that_fails_has_its_chunk_written_by_the_parent(tmp_path):
    parent = os.getpid()

    def flaky(items, f, advance):
        if os.getpid() != parent and 50 in items:
            raise RuntimeError("a child dies")
        _lines(items, f, advance)

    items = list(range(100))
    write_parts(tmp_path / "serial", items, _lines, 1)
    write_parts(tmp_path / "forked", items, flaky, 4)
    assert (tmp_path / "forked").read_bytes() == (tmp_path / "serial").read_bytes()


def test_worker_count(monkeypatch):
    monkeypatch.setenv("AUTOINTERP_RESULT_WORKERS", "3")
    assert choose_workers(10) == 3
    monkeypatch.setenv("AUTOINTERP_RESULT_WORKERS", "zero")
    with pytest.raises(UserError, match="AUTOINTERP_RESULT_WORKERS"):
        choose_workers(10)
    monkeypatch.delenv("AUTOINTERP_RESULT_WORKERS")
    assert choose_workers(100) == 1  # below PER_WORKER items a fork costs more than it saves
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    assert choose_workers(10**6) == min(8, len(os.sched_getaffinity(0)))
    monkeypatch.setitem(sys.modules, "jax", object())  # a JAX process (the JAX backend) never forks
    assert choose_workers(10**6) == 1
