"""Token ids -> text, byte-exact: windows decode as whole byte sequences, single tokens show their bytes.

Byte-level tokenizers (GPT-2, Llama 3, SmolLM2, the embedded default) and SentencePiece
byte fallback (`<0xE2>` tokens: Llama 2, Gemma) split one character over several tokens.
Decoding each token alone turns every such piece into U+FFFD. Here every token is its
raw bytes (`RUN/harvest/token_bytes.json`, written by the harvest), and

* `pieces(ids)` decodes the window's bytes as one UTF-8 string and cuts it back into one
  piece per token: a character belongs to the token holding its first byte, so a token
  that only continues a character is "" and `"".join(pieces)` is the window's text. Each
  token's character span is the running sum of the piece lengths; per-token activations
  stay aligned with the pieces.
* `readable(id)` shows a token alone: its text when its bytes are valid UTF-8, else the
  valid part with each stray byte as `<0xE2>` (logit-lens and token-statistic lists).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np


class TokenBytes(msgspec.Struct):
    """token_bytes.json: the raw bytes of every token id, hex-encoded."""

    hex: list[str]


class TokenText:
    def __init__(self, token_bytes: list[bytes]):
        self.bytes = token_bytes
        self._readable = [readable(b) for b in token_bytes]
        self._whole = [_valid(b) for b in token_bytes]  # decodes alone: no character spans into a neighbour
        self._whole_np = np.array(self._whole + [False], dtype=bool)  # the extra entry: ids out of range
        self._readable_np = np.array(self._readable + [""], dtype=object)

    def __len__(self) -> int:
        return len(self.bytes)

    def _raw(self, i: int) -> bytes:
        return self.bytes[i] if 0 <= i < len(self.bytes) else f"<{i}>".encode()

    def readable(self, i: int) -> str:
        return self._readable[i] if 0 <= i < len(self._readable) else f"<{i}>"

    def whole_ids(self, ids: np.ndarray) -> np.ndarray:
        """Whether each token id (any shape) is whole characters on its own (valid UTF-8, in range)."""
        n = len(self.bytes)
        return self._whole_np[np.where((ids >= 0) & (ids < n), ids, n)]

    def readable_ids(self, ids: np.ndarray) -> np.ndarray:
        """`readable` of each token id (any shape; ids out of range give "")."""
        n = len(self.bytes)
        return self._readable_np[np.where((ids >= 0) & (ids < n), ids, n)]

    def pieces(self, ids: list[int], whole: bool | None = None) -> list[str]:
        """One string per token; their concatenation is the window's bytes decoded as UTF-8.
        whole: whether every id is whole characters on its own (`whole_ids`), when the caller knows."""
        n = len(self.bytes)
        if whole is None:
            whole = all(0 <= i < n and self._whole[i] for i in ids)
        if whole:  # the common case: the window's decode is the tokens' decodes side by side
            return [self._readable[i] for i in ids]
        raw = [self._raw(i) for i in ids]
        owner = [j for j, b in enumerate(raw) for _ in range(len(b))]  # byte -> token
        data = b"".join(raw)
        out = [[] for _ in raw]
        pos = 0
        while pos < len(data):
            n = _char_len(data, pos)
            ch = data[pos : pos + n].decode("utf-8", errors="replace") if n else "\ufffd"
            out[owner[pos]].append(ch)
            pos += max(n, 1)
        return ["".join(p) for p in out]

    def text(self, ids: list[int]) -> str:
        return "".join(self.pieces(ids))

    def save(self, path: Path) -> None:
        from engine.core.rundir import write_atomic

        write_atomic(path, msgspec.json.encode(TokenBytes(hex=[b.hex() for b in self.bytes])))

    @classmethod
    def load(cls, path: Path) -> TokenText | None:
        """The run's token bytes, or None for runs harvested before they were written."""
        try:
            return cls([bytes.fromhex(h) for h in msgspec.json.decode(Path(path).read_bytes(), type=TokenBytes).hex])
        except (FileNotFoundError, msgspec.DecodeError, ValueError):
            return None


def _char_len(data: bytes, pos: int) -> int:
    """Bytes of the valid UTF-8 character starting at data[pos]; 0 if none starts there."""
    b = data[pos]
    n = 1 if b < 0x80 else 2 if 0xC2 <= b < 0xE0 else 3 if 0xE0 <= b < 0xF0 else 4 if 0xF0 <= b < 0xF5 else 0
    if n == 0 or pos + n > len(data):
        return 0
    try:
        data[pos : pos + n].decode("utf-8")
    except UnicodeDecodeError:
        return 0
    return n


def readable(b: bytes) -> str:
    """A token's bytes as text: valid UTF-8 as is, every byte that is not part of a character as <0xNN>."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out, pos = [], 0
    while pos < len(b):
        n = _char_len(b, pos)
        if n:
            out.append(b[pos : pos + n].decode("utf-8"))
            pos += n
        else:
            out.append(f"<0x{b[pos]:02X}>")
            pos += 1
    return "".join(out)


def _valid(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
