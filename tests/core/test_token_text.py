"""Windows decode as whole byte sequences (no U+FFFD for characters split over tokens); lone tokens readably."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from engine.core.token_text import TokenText, readable
from engine.harvest.defaults import DEFAULT_MODEL
from engine.harvest.token_bytes import token_bytes

TEXTS = ["héllo 世界 🙂 naïve café", "数据 = {'键': '值'}  # 注释 ✓", "plain ascii only", "emoji 👩‍💻 joiner"]


def _sentencepiece_byte_fallback() -> PreTrainedTokenizerFast:
    """A Llama-2-style tokenizer: U+2581 for spaces, <0xNN> byte tokens for what the vocabulary lacks."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["\u2581", "h", "e", "l", "o", "c", "\u2581h", "ll", "\u2581c", "a", "f", "é", "p", "i", "n", "s"]:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("\u2581", "h"), ("l", "l"), ("\u2581", "c")], byte_fallback=True,
                               unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module", params=["byte-level", "sentencepiece"])
def tokenizer(request):
    return AutoTokenizer.from_pretrained(DEFAULT_MODEL) if request.param == "byte-level" else _sentencepiece_byte_fallback()


def test_windows_decode_whole_and_stay_aligned(tokenizer):
    tt = TokenText(token_bytes(tokenizer, len(tokenizer)))
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = tt.pieces(ids)
        assert len(pieces) == len(ids)  # one piece per token: per-token activations stay aligned
        assert "".join(pieces).strip() == tokenizer.decode(ids).strip() == text
        assert "\ufffd" not in "".join(pieces)
        for start in range(len(ids)):  # any window cut: every character whose bytes are all inside decodes
            w = tt.pieces(ids[start:])
            assert len(w) == len(ids) - start
            whole = "".join(w)
            assert whole.count("\ufffd") <= 3  # only the bytes of a character cut at the window's start


def test_lone_tokens_show_their_bytes(tokenizer):
    tt = TokenText(token_bytes(tokenizer, len(tokenizer) + 2))
    ids = tokenizer("世界", add_special_tokens=False)["input_ids"]
    shown = [tt.readable(i) for i in ids]
    assert all("\ufffd" not in s for s in shown)
    assert any(s.startswith("<0x") for s in shown)  # a byte of a split character, readable
    assert tt.readable(len(tokenizer)) == f"<{len(tokenizer)}>"  # ids past the tokenizer (padded vocabularies)


def test_readable_and_round_trip(tmp_path):
    assert readable("é".encode()) == "é"
    assert readable(b"\xe4\xb8") == "<0xE4><0xB8>"
    assert readable(b"a\xff\xc3\xa9") == "a<0xFF>é"
    tt = TokenText([b"a", "世".encode()[:2], "世".encode()[2:], b"b"])
    assert tt.pieces([0, 1, 2, 3]) == ["a", "世", "", "b"]
    tt.save(tmp_path / "tb.json")
    assert TokenText.load(tmp_path / "tb.json").bytes == tt.bytes
    assert TokenText.load(tmp_path / "missing.json") is None


def _char_by_char(tt: TokenText, ids: list[int]) -> list[str]:
    """The rule spelled out: decode the window's bytes whole, each character to the token of its first byte."""
    data, owner = b"", []
    for j, i in enumerate(ids):
        data += tt.bytes[i]
        owner += [j] * len(tt.bytes[i])
    out, pos = [""] * len(ids), 0
    while pos < len(data):
        for n in (4, 3, 2, 1):  # the longest valid character starting here, else one stray byte
            try:
                ch = data[pos : pos + n].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if len(ch) == 1:
                break
        else:
            ch, n = "\ufffd", 1
        out[owner[pos]] += ch
        pos += n
    return out


def test_windows_of_whole_and_split_tokens_follow_the_byte_rule():
    """pieces() takes a shortcut when every token is whole UTF-8 alone; it must give what the rule gives."""
    import random

    vocab = [b"a", b" b", "é".encode(), "世".encode(), b"\xe4", b"\xb8", b"\x96", b"\xf0\x9f", b"\x99\x82", b"\xff", b""]
    tt = TokenText(vocab)
    rng = random.Random(0)
    whole = split = 0
    for _ in range(3000):
        ids = [rng.randrange(len(vocab)) for _ in range(rng.randint(1, 8))]
        assert tt.pieces(ids) == _char_by_char(tt, ids), ids
        whole += all(i < 4 or i == 10 for i in ids)
        split += any(4 <= i < 10 for i in ids)
    assert whole > 100 and split > 1000  # both paths were taken
