"""Example windows built for many latents at once (results.example_lists) against each example spelled out:
its window in the token store, centred or in its fixed chunk, clipped to the sequence, its bytes decoded whole."""

import numpy as np
import pytest
import torch

from engine.core.token_text import TokenText
from engine.harvest.data import TokenStore
from engine.harvest.results import example_lists

# byte tokens: 0-2 ASCII, 3 = "世" whole, 4-6 = the three bytes of "界" one by one, 7 = a stray byte
TOKEN_BYTES = [b"a", b" b", b"\n", "世".encode(), *("界".encode()[i : i + 1] for i in range(3)), b"\xff"]


def _one(store: np.ndarray, loc: int, val: float, win: np.ndarray, W: int, tt: TokenText, centred: bool, source):
    """The example at `loc`, from the definitions: window bounds, stored rows, token text."""
    S = store.shape[1]
    seq, pos = divmod(loc, S)
    if centred:
        a, b, mid = max(0, pos - W), min(S, pos + W + 1), pos
    else:  # delphi's chunks of 2W + 1; the stored window is centred on the chunk's middle (or the last token)
        c = 2 * W + 1
        a = pos // c * c
        b, mid = min(S, a + c), min(a + W, S - 1)
    ids = store[seq, a:b].tolist()
    first = a - (mid - W)  # the stored window's row of the first shown token
    return dict(sequence=seq, position=pos, activation=round(val, 6), token_ids=ids, tokens=tt.pieces(ids),
                activations=win.round(5)[first : first + len(ids)].tolist(), firing_index=pos - a, source=source)


@pytest.mark.parametrize("centred", [True, False], ids=["centred", "fixed chunks"])
def test_example_lists_equal_each_example_spelled_out(tmp_path, centred):
    g = torch.Generator().manual_seed(0)
    n_seq, S, W, R, K = 5, 23, 3, 7, 6  # S is no multiple of 2W + 1: a short last chunk
    ids = torch.randint(0, len(TOKEN_BYTES), (n_seq, S), generator=g)
    ids[0] = torch.tensor([0, 1, 2] * 7 + [0, 1])  # a sequence of whole tokens only (the fast path)
    store = TokenStore(tmp_path / "tokens.bin", n_seq, S, mode="w+")
    store.write(0, ids)
    locs = torch.randint(0, n_seq * S, (R, K), generator=g)
    locs[:, -2:] = -1  # empty slots
    locs[0, :4] = torch.tensor([0, S - 1, 1, 2 * S - 2])  # sequence edges: clipped windows
    locs[2] = -1  # a latent without examples
    vals = torch.rand(R, K, generator=g) * 3
    wins = torch.rand(R, K, 2 * W + 1, generator=g)
    tt = TokenText(TOKEN_BYTES)
    got = example_lists(locs, vals, wins, store, W, tt, "random", centred)
    arr = ids.numpy()
    assert len(got) == R
    n_whole = n_split = 0
    for r in range(R):
        want = [_one(arr, int(loc), float(vals[r, k]), wins[r, k].numpy(), W, tt, centred, "random")
                for k, loc in enumerate(locs[r].tolist()) if loc >= 0]
        assert [{f: getattr(e, f) for f in want[0]} for e in got[r]] == want if want else got[r] == []
        n_whole += sum(all(t < 3 for t in e["token_ids"]) for e in want)
        n_split += sum(any(3 < t for t in e["token_ids"]) for e in want)
    assert n_whole and n_split  # both decoding paths were taken


def test_components_do_not_depend_on_how_many_latents_share_a_block(tmp_path, monkeypatch):
    """components.jsonl is the same byte for byte whether example windows are built for 3 latents at a time
    (blocks end inside the writer's rows) or for all of them at once."""
    import engine.harvest.results as results
    from engine.harvest.run import main as harvest_main

    flags = ["--n-batches", "2", "--batch-size", "4", "--context-length", "48", "--top-k", "4", "--n-random", "3",
             "--window", "3", "--no-output-stats"]
    harvest_main(["--out", str(tmp_path / "one"), *flags])
    monkeypatch.setattr(results, "EXAMPLE_CELLS", 3 * (4 + 3) * 7 + 1)  # 3 latents per block
    harvest_main(["--out", str(tmp_path / "threes"), *flags])
    one = (tmp_path / "one" / "harvest" / "components.jsonl").read_bytes()
    assert one.count(b"\n") > 100 and (tmp_path / "threes" / "harvest" / "components.jsonl").read_bytes() == one
