"""engine.negatives: the replayed pool is exact, and each source returns verified, distinct, allowed windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.core.errors import UserError
from engine.core.examples import parse_id, strata
from engine.core.rundir import RunDir
from engine.interpret.negatives import (
    FaissNegatives,
    NegativePool,
    NeighbourNegatives,
    PoolConfig,
    RandomNegatives,
    open_pool,
)
from engine.score.config import ScoreRunConfig
from engine.score.run import run_score
from tests.helpers.trigger_run import TRIGGERS, write_run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    run = write_run(tmp_path_factory.mktemp("neg") / "run", n_sequences=50)
    rc = RunDir(run.dir).load_config()
    pool = NegativePool.build(run.tokens, 2 * rc.window + 1, rc.n_latents, run.acts, run.vocab,
                              PoolConfig(n_sequences=30, chunk=7), first_pos=1, progress=False)
    return run, rc, pool, list(RunDir(run.dir).iter_components())


def test_pool_fires_matrix_equals_brute_force(setup):
    run, rc, pool, _ = setup
    L = 2 * rc.window + 1
    assert len(pool) == 30 * ((rc.context_length - 1) // L)
    for w in range(len(pool)):
        seq, start = int(pool.sequences[w]), int(pool.starts[w])
        assert start >= 1 and start + L <= rc.context_length
        toks = run.tokens[seq, start : start + L].tolist()
        assert pool.token_ids[w].tolist() == toks
        for i in range(run.n_latents):
            assert pool.fires[w, i] == (run.trigger_id(i) in toks)
    assert pool.window(0).text == "".join(run.vocab[t] for t in pool.token_ids[0])


def test_random_negatives_are_zero_distinct_deterministic_and_respect_exclusions(setup):
    run, rc, pool, comps = setup
    src = RandomNegatives(pool)
    for c in comps:
        ws = src.negatives(c, 12)
        assert len(ws) == 12 and len({w.id for w in ws}) == 12
        assert all(TRIGGERS[c.latent] not in w.tokens and w.stratum == "neg" and not any(w.activations) for w in ws)
        assert [w.id for w in src.negatives(c, 12)] == [w.id for w in ws]
        banned = [parse_id(w.id) for w in ws[:3]]
        again = src.negatives(c, 12, exclude_ids=[w.id for w in ws[:3]])
        for w in again:
            assert not any(w.overlaps(s, p - rc.window, p + rc.window + 1) for s, p in banned)
    assert len(src.negatives(comps[0], 10_000)) == int((~pool.fires[:, comps[0].latent]).sum())


def test_neighbour_negatives_come_first_from_co_firing_latents(setup):
    run, rc, pool, comps = setup
    src = NeighbourNegatives(pool)
    for c in comps:
        j = c.correlations.jaccard[0].index
        n_hits = int((pool.fires[:, j] & ~pool.fires[:, c.latent]).sum())
        ws = src.negatives(c, n_hits + 5)
        assert all(TRIGGERS[c.latent] not in w.tokens for w in ws)
        assert all(TRIGGERS[j] in w.tokens for w in ws[:n_hits])  # the neighbour fires there, c does not
        assert len({w.id for w in ws}) == len(ws) == n_hits + 5


def test_neighbours_by_decoder_direction_come_from_the_directions_file(setup, tmp_path):
    """--neighbours decoder: the windows of the latent whose decoder row is nearest come first."""
    import pytest
    from safetensors.torch import save_file

    from engine.core.errors import UserError
    from engine.core.schemas import DIRECTIONS_FILE
    from engine.interpret.negatives import direction_neighbours, open_source

    run, rc, pool, comps = setup
    L = rc.n_latents
    order = [(lat + 3) % L for lat in range(L)]  # a decoder neighbour unlike any co-firing one
    table = torch.tensor([[order[lat], -1] for lat in range(L)], dtype=torch.int64)
    (run.dir / "harvest").mkdir(exist_ok=True)
    save_file({"decoder_neighbours": table, "decoder_cosine": torch.ones(L, 2)}, str(run.dir / "harvest" / DIRECTIONS_FILE))
    src = open_source(run.dir, rc, "neighbours", pool=pool, neighbours="decoder")
    for c in comps:
        j = order[c.latent]
        n_hits = int((pool.fires[:, j] & ~pool.fires[:, c.latent]).sum())
        ws = src.negatives(c, n_hits + 2)
        assert all(TRIGGERS[j] in w.tokens for w in ws[:n_hits]) and n_hits > 0
        assert all(TRIGGERS[c.latent] not in w.tokens for w in ws)
    with pytest.raises(UserError, match="no encoder-direction neighbours"):
        direction_neighbours(run.dir, "encoder")


def test_faiss_negatives_are_the_most_similar_zero_windows(setup):
    run, rc, pool, comps = setup

    def embed(texts):  # bag of words over the vocabulary
        v = np.array([[t.count(w) for w in run.vocab[1:]] for t in texts], dtype=np.float32) + 1e-3
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    emb = embed([pool.window(w).text for w in range(len(pool))])
    src = FaissNegatives(pool, emb, embed)
    c = comps[2]
    queries = strata(c, 5)[:5]
    ws = src.negatives(c, 8, queries=queries)
    sim = (embed([q.text for q in queries]) @ emb.T).max(axis=0)
    zero = np.flatnonzero(~pool.fires[:, c.latent])
    want = zero[np.lexsort((zero, -sim[zero]))][:8]
    got = [next(i for i in range(len(pool)) if pool.window(i).id == w.id) for w in ws]
    assert got == want.tolist()
    src.index = None  # the numpy path gives the same answer as faiss (when faiss is installed)
    assert [w.id for w in src.negatives(c, 8, queries=queries)] == [w.id for w in ws]


def test_pool_cache_round_trip_and_unloadable_model(setup, tmp_path):
    run, rc, pool, _ = setup
    meta = {"a": 1}
    pool.save(tmp_path / "pool.npz", meta)
    back = NegativePool.load(tmp_path / "pool.npz", meta, run.vocab, 0)
    assert np.array_equal(back.fires, pool.fires) and np.array_equal(back.token_ids, pool.token_ids)
    assert NegativePool.load(tmp_path / "pool.npz", {"a": 2}, run.vocab, 0) is None
    assert NegativePool.load(tmp_path / "absent.npz", meta, run.vocab, 0) is None
    cached = open_pool(run.dir, rc, PoolConfig(n_sequences=20), activations=run.acts, vocab=run.vocab, progress=False)
    assert (run.dir / "negatives" / "pool.npz").exists()
    reloaded = open_pool(run.dir, rc, PoolConfig(n_sequences=20), activations=None, vocab=run.vocab)  # no replay needed
    assert np.array_equal(reloaded.fires, cached.fires)
    with pytest.raises(UserError, match="cannot load the tokenizer of synthetic-model"):
        open_pool(run.dir, rc, PoolConfig(n_sequences=21))
    from engine.interpret.config import InterpretConfig
    from engine.interpret.run import run_interpret

    run_interpret(run.dir, InterpretConfig(provider="search", progress=False))
    with pytest.raises(UserError, match="tokenizer"):  # the CLI path: one line, no traceback
        run_score(run.dir, ScoreRunConfig(scorers=("embedding",), progress=False))


def test_a_cached_pool_is_for_one_harvest_only(tmp_path):
    """The pool cache is reused while the run is the same harvest, and rebuilt after a harvest with other
    settings (here the random control) or over rewritten tokens; pool embeddings follow the pool's windows."""
    import os

    import msgspec

    from engine.interpret.negatives import pool_embeddings

    run = write_run(tmp_path / "run", n_sequences=40)
    rc = RunDir(run.dir).load_config()
    replays = []

    def acts(seqs):
        replays.append(len(seqs))
        return run.acts(seqs)

    cfg = PoolConfig(n_sequences=20)
    first = open_pool(run.dir, rc, cfg, activations=acts, vocab=run.vocab, progress=False)
    built = len(replays)
    open_pool(run.dir, rc, cfg, activations=acts, vocab=run.vocab, progress=False)
    assert built > 0 and len(replays) == built  # the same harvest: read from the cache
    other = msgspec.structs.replace(rc, random_dictionary=True)
    open_pool(run.dir, other, cfg, activations=acts, vocab=run.vocab, progress=False)
    assert len(replays) == 2 * built  # another harvest's settings: replayed again
    st = RunDir(run.dir).tokens.stat()
    os.utime(RunDir(run.dir).tokens, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # tokens.bin rewritten
    open_pool(run.dir, other, cfg, activations=acts, vocab=run.vocab, progress=False)
    assert len(replays) == 3 * built
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return np.ones((len(texts), 4), dtype=np.float32)

    pool_embeddings(run.dir, first, embed)
    pool_embeddings(run.dir, first, embed)
    assert calls == [len(first)]  # cached
    smaller = open_pool(run.dir, rc, PoolConfig(n_sequences=10), activations=acts, vocab=run.vocab, progress=False)
    pool_embeddings(run.dir, smaller, embed)
    assert calls == [len(first), len(smaller)]  # other windows: embedded again
