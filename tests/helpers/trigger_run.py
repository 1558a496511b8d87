"""A synthetic run directory whose latents follow a known rule, for interpret/score tests.

Latent i fires exactly on the token TRIGGERS[i] (" alpha", " bravo", ...), with
activation 1 + (id of the previous token) % 9, and nowhere else. Every statistic
in components.jsonl is computed by brute force from the token store, and
`acts(seq_ids)` replays the rule, so negatives are verified exactly and a
scripted judge that knows the rule can be perfect (tests/helpers/scripted_llm.py).

    run = write_run(tmp_path / "run", n_latents=8)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import torch

from engine.core.schemas import ComponentCorrelations, ComponentData, HookpointInfo, RunConfig, Scored, TokenStats
from tests.helpers.run_files import pmi, window_example, write_harvest

TRIGGERS = [" alpha", " bravo", " charlie", " delta", " echo", " foxtrot", " golf", " hotel", " india", " juliet",
            " kilo", " lima", " mike", " november", " oscar", " papa"]
FILLER = [" the", " a", " of", " and", " to", " in", " is", " it", " that", " was", " for", " on", " are", " with",
          " as", " at", " be", " this", " have", " from", "\n", ".", ",", "(", ")", " import", " def", " x", " y"]
HOOKPOINT = "blocks.1.hook_resid_post"


@dataclass
class FixtureRun:
    dir: Path
    vocab: list[str]
    tokens: np.ndarray  # [N, S] int32
    n_latents: int
    window: int

    def trigger_id(self, latent: int) -> int:
        return self.vocab.index(TRIGGERS[latent])

    def acts(self, seq_ids: torch.Tensor) -> torch.Tensor:
        """[n] -> [n, S, n_latents], the rule."""
        tok = torch.from_numpy(self.tokens[seq_ids.numpy()].astype(np.int64))  # [n, S]
        out = torch.zeros(*tok.shape, self.n_latents)
        prev = torch.cat([torch.zeros_like(tok[:, :1]), tok[:, :-1]], dim=1)
        level = (1 + prev % 9).float()
        for i in range(self.n_latents):
            hit = tok == self.trigger_id(i)
            hit[:, 0] = False
            out[..., i] = torch.where(hit, level, torch.zeros_like(level))
        return out


def trigger_of(label: str) -> str | None:
    """The trigger word a label names (' alpha' for 'alpha tokens'), if any."""
    for t in TRIGGERS:
        if re.search(rf"\b{t.strip()}\b", label):
            return t
    return None


def write_run(root: Path, n_latents: int = 8, n_sequences: int = 60, context_length: int = 64, window: int = 6,
              top_k: int = 10, n_random: int = 20, seed: int = 0, p_trigger: float = 0.03) -> FixtureRun:
    rng = np.random.default_rng(seed)
    vocab = ["<bos>"] + FILLER + TRIGGERS[:n_latents]
    n_fill = 1 + len(FILLER)
    toks = rng.integers(1, n_fill, size=(n_sequences, context_length)).astype(np.int32)
    trig = rng.random((n_sequences, context_length)) < p_trigger * n_latents
    toks[trig] = rng.integers(n_fill, n_fill + n_latents, size=int(trig.sum()))
    toks[:, 0] = 0
    run = FixtureRun(root, vocab, toks, n_latents, window)
    acts = run.acts(torch.arange(n_sequences)).numpy()  # [N, S, L]
    N_tokens = n_sequences * (context_length - 1)

    def components():
        for i in range(n_latents):
            a = acts[..., i]
            seqs, poss = np.nonzero(a > 0)
            if len(seqs) == 0:
                continue
            vals = a[seqs, poss]
            order = np.lexsort((seqs * context_length + poss, -vals))  # largest first, ties by location

            def example(k: int, source: str, seqs=seqs, poss=poss, a=a):
                return window_example(toks, a, vocab, int(seqs[k]), int(poss[k]), window, source)

            top = [example(int(k), "top") for k in order[:top_k]]
            rand = [example(int(k), "random") for k in np.sort(rng.choice(len(seqs), min(n_random, len(seqs)), replace=False))]
            n_i = len(seqs)
            tid = run.trigger_id(i)
            m_t = int((toks[:, 1:] == tid).sum())
            stat = Scored(TRIGGERS[i], tid, 1.0, float(n_i))
            pmi_t = Scored(TRIGGERS[i], tid, float(pmi(n_i, n_i, m_t, N_tokens)), float(n_i))
            j = (i + 1) % n_latents
            yield ComponentData(
                component_key=f"{HOOKPOINT}/{i}", hookpoint=HOOKPOINT, component_idx=i, latent=i, firing_count=n_i,
                firing_density=n_i / N_tokens, mean_activation=float(vals.mean()), max_activation=float(vals.max()),
                histogram=[n_i], top_examples=top, random_examples=rand,
                input_token_stats=TokenStats(top_precision=[stat], top_recall=[stat], top_pmi=[pmi_t], exact=True,
                                             error_bound=0.0),
                output_token_stats=None, logit_lens=None,
                correlations=ComponentCorrelations(precision=[], recall=[], pmi=[], exact=True, error_bound=0.0,
                                                   jaccard=[Scored(f"{HOOKPOINT}/{j}", j, 0.1, 1.0)]))

    rc = RunConfig(model="synthetic-model", model_class="Synthetic", n_layers=2, dataset="synthetic", dataset_column="text",
                   context_length=context_length, batch_size=8, n_sequences=n_sequences, n_tokens=N_tokens,
                   hookpoints=[HookpointInfo(name=HOOKPOINT, module="layers.1", dictionary="synthetic-sae", kind="test",
                                             d_in=4, n_latents=n_latents, offset=0)],
                   n_latents=n_latents, top_k=top_k, n_random=n_random, window=window, histogram_edges=[0.0, 10.0],
                   filter_bos=True, output_stats=False, seed=seed, engine_version="test", backend="torch")
    write_harvest(root, toks, rc, components())
    return run


def pool_source(run: FixtureRun, kind: str = "random", n_sequences: int = 60):
    """A NegativeSource over the fixture's pool, replayed with the rule (no model)."""
    from engine.core.rundir import RunDir
    from engine.interpret.negatives import NegativePool, NeighbourNegatives, PoolConfig, RandomNegatives

    rc = RunDir(run.dir).load_config()
    pool = NegativePool.build(run.tokens, 2 * rc.window + 1, rc.n_latents, run.acts, run.vocab,
                              PoolConfig(n_sequences=n_sequences), first_pos=1, progress=False)
    return {"random": RandomNegatives, "neighbours": NeighbourNegatives}[kind](pool)


def make_cli_scorable(run: FixtureRun) -> None:
    """Let `python -m engine.score RUN` run on the fixture: a word-level HF tokenizer for the run's vocab
    (named as the run's model, so negatives get their token strings) and the negative pool cached in
    RUN/negatives/ from the rule (the fixture has no model to replay)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from engine.core.rundir import RunDir
    from engine.interpret.negatives import PoolConfig, open_pool

    folder = run.dir / "tokenizer"
    vocab = {t: i for i, t in enumerate(run.vocab)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<bos>")),
                            clean_up_tokenization_spaces=False).save_pretrained(folder)
    rc = msgspec.structs.replace(RunDir(run.dir).load_config(), model=str(folder))
    (run.dir / "harvest" / "config.json").write_bytes(msgspec.json.encode(rc))
    open_pool(run.dir, rc, PoolConfig(), activations=run.acts, vocab=run.vocab, progress=False)
