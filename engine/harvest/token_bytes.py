"""The raw bytes of every token of a HF tokenizer (for engine.core.token_text).

Three tokenizer families, told apart by the fast tokenizer's decoder:

* byte-level (GPT-2 style `ByteLevel` decoder): each symbol of a token maps back to one
  byte through GPT-2's printable-byte alphabet;
* SentencePiece style (`ByteFallback` / `Metaspace` / a `Replace` of U+2581): `<0xNN>` is
  that byte, U+2581 is a space, the rest is UTF-8;
* anything else: `decode([id])` as UTF-8 (what the harvest did before).

Special tokens are their own text (e.g. `<|endoftext|>`).
"""

from __future__ import annotations

import json
import re

BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: printable symbol -> byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def _decoder_kinds(tokenizer) -> set[str]:
    try:
        decoder = tokenizer.backend_tokenizer.decoder  # its own JSON: the whole tokenizer's (to_str) is megabytes
        spec = json.loads(decoder.__getstate__()) if decoder is not None else {}
    except Exception:  # noqa: BLE001 -- a slow tokenizer has no backend: use decode()
        return set()
    parts = spec.get("decoders", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = {p.get("type", "") for p in parts}
    if any(p.get("type") == "Replace" and "\u2581" in json.dumps(p) for p in parts):
        kinds.add("Metaspace")
    return kinds


def token_bytes(tokenizer, vocab: int) -> list[bytes]:
    """[vocab] raw bytes per token id (ids past the tokenizer: `<id>`)."""
    n = len(tokenizer)
    kinds = _decoder_kinds(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    out = []
    if "ByteLevel" in kinds:
        alphabet = _byte_alphabet()
        for i, p in enumerate(pieces):
            if p is None:
                out.append(tokenizer.decode([i]).encode())
            elif i in special or any(ch not in alphabet for ch in p):
                out.append(p.encode())  # special / added tokens are stored as text
            else:
                out.append(bytes(alphabet[ch] for ch in p))
    elif kinds & {"ByteFallback", "Metaspace"}:
        for i, p in enumerate(pieces):
            m = BYTE_TOKEN.fullmatch(p or "")
            out.append(bytes([int(m.group(1), 16)]) if m else (p or "").replace("\u2581", " ").encode())
    else:
        out = [tokenizer.decode([i]).encode() for i in range(n)]
    return out + [f"<{i}>".encode() for i in range(n, vocab)]
