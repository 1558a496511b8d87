"""engine.resultsio: append-only JSONL that survives a writer killed at any byte."""

from __future__ import annotations

import msgspec
import pytest

from engine.core.errors import UserError
from engine.core.jsonl import JsonlAppender, JsonlIndex, read_records, repair_tail


class Rec(msgspec.Struct):
    i: int
    s: str = ""


def write(path, recs):
    with JsonlAppender(path, Rec) as log:
        for r in recs:
            log.append(r)


def test_every_torn_prefix_of_the_last_line_is_ignored_then_repaired(tmp_path):
    path = tmp_path / "log.jsonl"
    write(path, [Rec(0, "a"), Rec(1, "b\nwith newline"), Rec(2)])
    full = path.read_bytes()
    last_start = full[:-1].rfind(b"\n") + 1
    for cut in range(last_start, len(full) + 1):  # a kill after every possible byte of the last record
        path.write_bytes(full[:cut])
        got = read_records(path, Rec)
        complete = cut >= len(full) - 1  # the record itself is whole (only the newline may be missing)
        assert [r.i for r in got] == ([0, 1, 2] if complete else [0, 1])
        write(path, [Rec(3)])  # the next appender repairs the tail and appends on a fresh line
        assert [r.i for r in read_records(path, Rec)] == ([0, 1, 2, 3] if complete else [0, 1, 3])
        assert path.read_bytes().endswith(b"\n")


def test_corrupt_middle_line_is_a_user_error_naming_the_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"i": 0}\n{"i": oops}\n{"i": 2}\n')
    with pytest.raises(UserError, match=r"log.jsonl:2: undecodable record"):
        read_records(path, Rec)


def test_missing_file_blank_lines_and_second_writer(tmp_path):
    path = tmp_path / "sub" / "log.jsonl"
    assert read_records(path, Rec) == []
    write(path, [Rec(1)])
    with open(path, "ab") as f:
        f.write(b"\n\n")
    assert [r.i for r in read_records(path, Rec)] == [1]
    with JsonlAppender(path, Rec):
        with pytest.raises(UserError, match="being written by another process"):
            JsonlAppender(path, Rec).open()
    assert repair_tail(tmp_path / "absent", Rec) == 0


def test_index_random_access(tmp_path):
    path = tmp_path / "log.jsonl"
    write(path, [Rec(i, "x" * i) for i in range(20)])
    with open(path, "ab") as f:
        f.write(b'{"i": 99')  # torn tail is not indexed
    idx = JsonlIndex(path, Rec, key=lambda line: msgspec.json.decode(line, type=Rec).i)
    assert 99 not in idx and 7 in idx
    assert idx[13] == Rec(13, "x" * 13)
    idx.close()


def test_a_log_path_that_is_a_folder_is_a_user_error(tmp_path):
    (tmp_path / "results.jsonl").mkdir()
    with pytest.raises(UserError, match="cannot be read .* append-only .jsonl log file"):
        read_records(tmp_path / "results.jsonl", dict)


def test_damaged_embedding_cache_is_recomputed(tmp_path):
    import numpy as np

    from engine.interpret.negatives import pool_embeddings

    class Pool:  # three windows of text
        def __len__(self):
            return 3

        def window(self, i):
            return type("W", (), {"text": f"window {i}"})()

    (tmp_path / "negatives").mkdir()
    (tmp_path / "negatives" / "minilm.npz").write_bytes(b"PK garbage")
    calls = []

    def embed(texts):
        calls.append(texts)
        return np.eye(3, 4, dtype=np.float32)

    assert pool_embeddings(tmp_path, Pool(), embed).shape == (3, 4) and len(calls) == 1
    assert pool_embeddings(tmp_path, Pool(), embed).shape == (3, 4) and len(calls) == 1  # rewritten, then reused
