"""Append-only JSON Lines logs of msgspec records, safe to kill at any moment.

    records = read_records(path, Explanation)          # every complete record, in file order
    log = JsonlLog(path, Explanation); log.read_new()   # what was appended since the last call
    with JsonlAppender(path, Explanation) as log:      # repairs a torn tail, then appends
        log.append(record)                             # one write + flush per record

A writer killed mid-append leaves at most one unterminated last line. Readers
skip it when it does not decode (a file that only lacks its final newline is
read as usual); `JsonlAppender` truncates such a tail before its first append
(or adds the missing newline when the tail decodes), so no record is lost and
no line is glued to the next. Any other undecodable line is a UserError naming
the file and line. One process appends at a time: the appender holds an
exclusive advisory lock (`flock`) on the file while it is open.

`JsonlIndex` maps a key of each line to its byte offset for random access into
a large file (e.g. harvest/components.jsonl) without holding it in memory.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

import msgspec

from engine.core.errors import UserError

T = TypeVar("T")
UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
"""What decoding a line can raise: bad JSON or fields (ValidationError is a DecodeError), a string that is
not UTF-8, or nesting past the decoder's depth limit."""


class JsonlLog(Generic[T]):
    """An append-only JSON Lines file of `T`, read incrementally from where the last read stopped.

    The one reader of every log: `iter_records` is one full pass of it, and the live viewer
    keeps one per file and calls `read_new` as writers append."""

    def __init__(self, path: str | Path, type_: type[T]):
        self.path = Path(path)
        self.offset = 0
        "Byte offset just past the last record read."
        self.line_no = 0
        "Lines consumed so far (for error messages)."
        self.torn = 0
        "Bytes of an unterminated last line that the last read skipped."
        self._dec = msgspec.json.Decoder(type_)

    def iter_new(self) -> Iterator[T]:
        """Stream the records appended since the last read. An unterminated last line is taken when
        it decodes (a file that only lacks its final newline); otherwise it is left unread, counted
        in `torn` (a writer may be in the middle of it, or a killed one left it: the next
        JsonlAppender truncates it)."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        except OSError as e:  # a directory, no permission
            raise UserError(f"{self.path} cannot be read ({e.strerror}) -- it should be an append-only .jsonl "
                            "log file") from None
        with f:
            f.seek(self.offset)
            self.torn = 0
            for line in f:
                if not line.endswith(b"\n"):  # the unterminated last line
                    try:
                        record = self._dec.decode(line) if line.strip() else None
                    except UNDECODABLE:
                        self.torn = len(line)
                        return
                    self.offset += len(line)
                    self.line_no += 1
                    if record is not None:
                        yield record
                    return
                self.offset += len(line)
                self.line_no += 1
                if line.strip():
                    yield self._decode(line)

    def read_new(self) -> list[T]:
        return list(self.iter_new())

    def _decode(self, line: bytes) -> T:
        try:
            return self._dec.decode(line)
        except UNDECODABLE as e:
            raise UserError(f"{self.path}:{self.line_no}: undecodable record ({e}) -- fix or delete that line; "
                            "only the last line of an append-only log may be torn") from None


def iter_records(path: str | Path, type_: type[T]) -> Iterator[T]:
    """Stream the records of `path` (missing file: nothing); a torn last line is skipped."""
    return JsonlLog(path, type_).iter_new()


def read_records(path: str | Path, type_: type[T]) -> list[T]:
    return list(iter_records(path, type_))


def repair_tail(path: Path, type_: type) -> int:
    """Make `path` end at a record boundary: drop an undecodable unterminated tail, or terminate a
    decodable one. Returns the bytes removed."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        back = min(size, 1 << 20)
        while True:  # find the last newline, reading backwards in growing chunks
            f.seek(size - back)
            chunk = f.read(back)
            cut = chunk.rfind(b"\n")
            if cut >= 0 or back == size:
                break
            back = min(size, back * 4)
        start = size - back + cut + 1  # first byte after the last newline (0 if none)
        tail = chunk[cut + 1 :]
        if not tail:
            return 0
        try:
            if tail.strip():
                msgspec.json.Decoder(type_).decode(tail)
                f.seek(size)
                f.write(b"\n")
                return 0
        except UNDECODABLE:
            pass
        f.truncate(start)
        return size - start


class JsonlAppender(Generic[T]):
    """Exclusive appender of `type_` records to `path` (created with its folder if needed)."""

    def __init__(self, path: str | Path, type_: type[T], fsync: bool = False):
        self.path = Path(path)
        self.type_ = type_
        self.fsync = fsync
        "fsync after every record (survives power loss, not just a killed process)."
        self.repaired = 0
        "Bytes of a torn last line removed on open."
        self._enc = msgspec.json.Encoder()
        self._fd: int | None = None

    def __enter__(self) -> JsonlAppender[T]:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self.path} is being written by another process -- wait for it to finish "
                            "(two writers would interleave records)") from None
        self._fd = fd
        self.repaired = repair_tail(self.path, self.type_)

    def append(self, record: T) -> None:
        """Write one record as one line with a single write call."""
        assert self._fd is not None, "JsonlAppender used outside `with` / open()"
        data = self._enc.encode(record) + b"\n"
        view = memoryview(data)
        while view:  # os.write may write less than asked (signals, huge lines)
            view = view[os.write(self._fd, view) :]
        if self.fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class JsonlIndex(Generic[T]):
    """Byte offset of every line of a JSONL file by a key, for random access to single records."""

    def __init__(self, path: str | Path, type_: type[T], key: Callable[[bytes], object]):
        """key(line) -> the line's key; decode only the fields you need (e.g. a small Struct)."""
        self.path = Path(path)
        self._dec = msgspec.json.Decoder(type_)
        self.offsets: dict[object, int] = {}
        pos = 0
        with open(self.path, "rb") as f:
            for line in f:
                if line.strip() and line.endswith(b"\n"):
                    self.offsets[key(line)] = pos
                pos += len(line)
        self._f = open(self.path, "rb")

    def __contains__(self, k: object) -> bool:
        return k in self.offsets

    def __getitem__(self, k: object) -> T:
        self._f.seek(self.offsets[k])
        return self._dec.decode(self._f.readline())

    def close(self) -> None:
        self._f.close()
