"""A small, self-consistent synthetic run directory for the report tests.

Latent l fires on a few trigger tokens (and rarely elsewhere) of a random token
store; every statistic in components.jsonl is then computed from those firings by
brute force with the formulas of engine/harvest/results.py, so numbers on the pages
are checkable. Explanations and scores are written the way the interpret and score
steps append them, including a torn last line and dataset text that is markup.

    info = write_synthetic_run(tmp_path / "run", n_latents=300)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from clients.usage import Usage
from engine.core.schemas import (
    ComponentCorrelations,
    ComponentData,
    Explanation,
    HookpointInfo,
    LogitLens,
    RunConfig,
    Scored,
    ScoreResult,
    TokenStats,
)
from tests.helpers.run_files import pmi, window_example, write_harvest, write_jsonl

WORDS = """the of and to in is that for it as with was on be by at this from or an are not have but
which one all were when we there can if so what out up about into time more your some would
river stone bridge garden winter summer castle forest harbor market letter window candle silver
copper engine signal battery rocket planet comet orbit galaxy atom proton neutron photon quantum
violin piano guitar trumpet melody rhythm chorus sonnet poem novel chapter author reader library
apple bread cheese honey pepper salt sugar butter lemon onion garlic tomato potato carrot olive
doctor nurse patient fever vaccine virus cell blood heart lung brain muscle bone nerve tissue
import return class def self None True False print range list dict yield lambda async await""".split()
SPECIAL = ["\n", "\t", "<script>alert('tok')</script>", " &amp;", "\u00e9t\u00e9", "", "  ", "</div>"]
XSS_LABEL = "<script>window.__xss=1</script> tags & <b>markup</b>"
COMPLETED_LABEL = "label from the completed torn line"
XSS_REASONING = "<img src=x onerror=\"window.__xss=2\"> seen in the examples"
HIST_LO, HIST_HI, N_BINS = -3.0, 3.0, 48
TOP_N, MIN_COUNT = 10, 2


@dataclass
class SyntheticRun:
    """What the tests need to know about a written run."""

    dir: Path
    latents: list[int]
    "Latents in components.jsonl (the ones that fired), ascending."
    dead: list[int]
    labels: dict[int, str]
    "latent -> the label the report should show (primary explanation)."
    search_labels: dict[int, str]
    sources: dict[int, str]
    "latent -> source (llm / search) of the primary explanation."
    xss_latent: int
    "A latent whose label and reasoning are markup and whose examples contain the <script> token."
    word: str
    "A trigger word that appears in several labels (for search tests)."
    torn_line: bytes = b""
    "The whole line whose first 40 bytes end results.jsonl (an explanation of latents[1])."
    scorers: list[str] = field(default_factory=list)


def _tokens() -> list[str]:
    return [" " + w for w in WORDS] + WORDS[:40] + SPECIAL


def _ranked(idx: np.ndarray, val: np.ndarray, cnt: np.ndarray, name) -> list[Scored]:
    order = np.lexsort((idx, -val))[:TOP_N]  # value descending, ties by index
    return [Scored(name(int(idx[o])), int(idx[o]), float(f"{val[o]:.6g}"), float(f"{cnt[o]:.6g}")) for o in order]


def _pair_lists(joint: np.ndarray, n_i: float, marg: np.ndarray, N: float, name, jaccard=False) -> dict:
    cols = np.nonzero((joint >= MIN_COUNT) & (marg > 0))[0]
    c, m = joint[cols].astype(np.float64), marg[cols].astype(np.float64)
    prec, rec = (c / n_i, c / m) if jaccard else (c / m, c / n_i)
    out = dict(precision=_ranked(cols, prec, c, name), recall=_ranked(cols, rec, c, name),
               pmi=_ranked(cols, pmi(c, n_i, m, N), c, name))
    if jaccard:
        out["jaccard"] = _ranked(cols, c / (n_i + m - c), c, name)
    return out


def write_synthetic_run(run: Path, n_latents: int = 300, n_seq: int = 96, ctx: int = 64, top_k: int = 20,
                        n_random: int = 20, window: int = 8, seed: int = 0,
                        scorers: tuple[tuple[str, bool], ...] = (("detection", True), ("fuzzing", False))) -> SyntheticRun:
    """scorers: (name, reports an AUC) of every score log written."""
    rng = np.random.default_rng(seed)
    vocab = _tokens()
    V = len(vocab)
    # token store: Zipf-like word frequencies
    p = 1.0 / np.arange(1, V + 1) ** 0.9
    store = rng.choice(V, size=(n_seq, ctx), p=p / p.sum()).astype(np.int32)  # [n_seq, ctx]
    flat = store.reshape(-1)  # [N]
    N = flat.size
    next_tok = np.concatenate([store[:, 1:], np.zeros((n_seq, 1), np.int32)], axis=1).reshape(-1)  # [N]
    has_next = np.ones((n_seq, ctx), bool)
    has_next[:, -1] = False
    has_next = has_next.reshape(-1)

    # activations [N, L]: trigger tokens fire strongly, background rarely; some latents are dead
    triggers = [rng.choice(V, size=rng.integers(1, 4), replace=False) for _ in range(n_latents)]
    dead = set(rng.choice(n_latents, size=max(1, n_latents // 50), replace=False).tolist())
    xss_tok = vocab.index(SPECIAL[2])
    xss_latent = next(i for i in range(n_latents) if i not in dead)
    triggers[xss_latent] = np.array([xss_tok, vocab.index(" river")])
    acts = np.zeros((N, n_latents), np.float32)
    for lat in range(n_latents):
        if lat in dead:
            continue
        on = np.isin(flat, triggers[lat]) & (rng.random(N) < 0.9)
        on |= rng.random(N) < rng.uniform(0.0005, 0.01)
        acts[on, lat] = rng.lognormal(mean=rng.uniform(-0.5, 1.5), sigma=0.7, size=int(on.sum()))
    fires = acts > 0  # [N, L]
    count = fires.sum(0).astype(np.int64)  # [L]
    co = fires.T.astype(np.float32) @ fires.astype(np.float32)  # [L, L]
    tok_total = np.bincount(flat, minlength=V)
    out_total = np.bincount(next_tok[has_next], minlength=V)

    half = n_latents // 2
    hps = [HookpointInfo(name="blocks.0.hook_resid_post", module="model.layers.0", dictionary="sae0", kind="sae_lens:topk",
                         d_in=64, n_latents=half, offset=0),
           HookpointInfo(name="blocks.1.hook_resid_post", module="model.layers.1", dictionary="sae1", kind="sae_lens:topk",
                         d_in=64, n_latents=n_latents - half, offset=half)]
    hp_of = lambda lat: hps[0] if lat < half else hps[1]
    keys = [f"{hp_of(lat).name}/{lat - hp_of(lat).offset}" for lat in range(n_latents)]
    edges = [10 ** (HIST_LO + i * (HIST_HI - HIST_LO) / N_BINS) for i in range(N_BINS + 1)]
    cfg = RunConfig(model="synthetic/tiny-lm", model_class="LlamaForCausalLM", n_layers=2, dataset="synthetic words",
                    dataset_column="text", context_length=ctx, batch_size=8, n_sequences=n_seq, n_tokens=N,
                    hookpoints=hps, n_latents=n_latents, top_k=top_k, n_random=n_random, window=window,
                    histogram_edges=edges, filter_bos=False, output_stats=True, seed=seed, engine_version="0.1.0",
                    backend="torch")

    def example(pos: int, lat: int, source):
        return window_example(store, acts[:, lat].reshape(n_seq, ctx), vocab, *divmod(pos, ctx), window, source)

    alive = [lat for lat in range(n_latents) if count[lat] > 0]

    def components():
        for lat in alive:
            pos = np.nonzero(fires[:, lat])[0]
            vals = acts[pos, lat]
            n_i = float(count[lat])
            top = pos[np.lexsort((pos, -vals))[:top_k]]
            rand = np.sort(rng.choice(pos, size=min(n_random, len(pos)), replace=False))
            bins = np.clip(np.floor((np.log10(vals) - HIST_LO) * N_BINS / (HIST_HI - HIST_LO)), 0, N_BINS - 1).astype(int)
            ins = _pair_lists(np.bincount(flat[pos], minlength=V), n_i, tok_total, N, vocab.__getitem__)
            op = pos[has_next[pos]]
            outs = _pair_lists(np.bincount(next_tok[op], minlength=V), n_i, out_total, N, vocab.__getitem__)
            joint = co[lat].copy()
            joint[lat] = 0
            corr = _pair_lists(joint, n_i, count.astype(np.float64), N, keys.__getitem__, jaccard=True)
            lens = rng.normal(size=V)
            lo_, hi_ = np.argsort(lens)[:TOP_N], np.argsort(-lens)[:TOP_N]
            yield ComponentData(
                component_key=keys[lat], hookpoint=hp_of(lat).name, component_idx=lat - hp_of(lat).offset, latent=lat,
                firing_count=int(n_i), firing_density=n_i / N, mean_activation=float(vals.mean()),
                max_activation=float(vals.max()), histogram=np.bincount(bins, minlength=N_BINS).tolist(),
                top_examples=[example(int(q), lat, "top") for q in top],
                random_examples=[example(int(q), lat, "random") for q in rand],
                input_token_stats=TokenStats(top_precision=ins["precision"], top_recall=ins["recall"], top_pmi=ins["pmi"],
                                             exact=True, error_bound=0.0),
                output_token_stats=TokenStats(top_precision=outs["precision"], top_recall=outs["recall"],
                                              top_pmi=outs["pmi"], exact=False, error_bound=0.0),
                logit_lens=LogitLens(top=[Scored(vocab[i], int(i), round(float(lens[i]), 4), 0.0) for i in hi_],
                                     bottom=[Scored(vocab[i], int(i), round(float(lens[i]), 4), 0.0) for i in lo_]),
                correlations=ComponentCorrelations(**corr, exact=True, error_bound=0.0),
            )

    write_harvest(run, store, cfg, components())

    # explanations: most latents by an LLM, some search-only, one refusal, one re-explained, a few missing
    labels, search_labels, sources = {}, {}, {}
    lines = []
    word = vocab[int(triggers[alive[1]][0])].strip() or "river"
    for k, lat in enumerate(alive):
        if k % 23 == 22:
            continue
        trig = [vocab[int(t)].strip() or repr(vocab[int(t)]) for t in triggers[lat]]
        search = ", ".join(trig)
        label = f"the word '{trig[0]}'" + (f" or '{trig[1]}'" if len(trig) > 1 else "")
        base = dict(component_key=keys[lat], latent=lat, search_label=search, prompt_hash="h", raw_response="{}",
                    example_ids=[f"{e}:0" for e in range(3)])
        if lat == xss_latent:
            label = XSS_LABEL
        if k % 7 == 3:  # search only
            e = Explanation(label=search, confidence="", reasoning="", source="search", model="", explainer="search", **base)
        elif k % 31 == 5:  # refusal: label falls back to the search label
            e = Explanation(label=search, confidence="", reasoning="", source="llm", model="m", explainer="default",
                            error="refusal", **base)
        else:
            if k % 11 == 0:  # an earlier search explanation, then the LLM one
                lines.append(Explanation(label=search, confidence="", reasoning="", source="search", model="",
                                         explainer="search", **base))
            e = Explanation(label=label, confidence=("low", "medium", "high")[k % 3],
                            reasoning=XSS_REASONING if lat == xss_latent else f"Fires on {search}.", source="llm",
                            model="claude-test", explainer="default", usage=Usage(input_tokens=900, output_tokens=60), **base)
        lines.append(e)
        labels[lat], search_labels[lat], sources[lat] = e.label, search, e.source
    (run / "interpretations").mkdir(exist_ok=True)
    write_jsonl(run / "interpretations" / "results.jsonl", lines)
    torn = Explanation(component_key=keys[alive[1]], latent=alive[1], label=COMPLETED_LABEL, confidence="high",
                       reasoning="", search_label=search_labels[alive[1]], source="llm", model="claude-test",
                       explainer="default", prompt_hash="h", raw_response="{}", example_ids=[])
    torn_line = msgspec.json.encode(torn) + b"\n"
    with open(run / "interpretations" / "results.jsonl", "ab") as f:
        f.write(torn_line[:40])  # torn: a writer killed (or still) mid-append

    # scores: detection (with AUC) and fuzzing (no AUC); the last result per latent counts
    (run / "scores").mkdir(exist_ok=True)

    def results(scorer: str, has_auc: bool):
        for k, lat in enumerate(alive):
            if lat not in labels or k % 5 == 4:
                continue
            ba = float(np.clip(rng.normal(0.75, 0.12), 0, 1))
            yield ScoreResult(component_key=keys[lat], latent=lat, scorer=scorer, label=labels[lat], n_examples=40,
                              accuracy=ba, balanced_accuracy=ba, precision=ba, recall=ba, f1=ba,
                              auc=float(min(1.0, ba + 0.05)) if has_auc else None,
                              ci={"balanced_accuracy": [max(0.0, ba - 0.1), min(1.0, ba + 0.1)]},
                              per_quantile_recall={"top": 1.0, "q1": ba}, per_stratum_n={"top": 9, "q1": 7, "neg": 20},
                              model="claude-test",
                              error="timeout" if k % 37 == 1 else None)

    for scorer, has_auc in scorers:
        write_jsonl(run / "scores" / f"{scorer}.jsonl", results(scorer, has_auc))
    return SyntheticRun(run, alive, sorted(dead), labels, search_labels, sources, xss_latent, word, torn_line, [s for s, _ in scorers])


def harvest_default(out: Path, labels: str = "0-199") -> Path:
    """A real run of the embedded default (model, SAE, corpus; absolute paths in its config), small, with
    offline search labels for `labels`: what the try-your-own-text and direction tests need."""
    from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
    from engine.harvest.run import main as harvest_main
    from engine.interpret.config import InterpretConfig
    from engine.interpret.run import run_interpret

    harvest_main([DEFAULT_MODEL, DEFAULT_SAE, "--dataset", DEFAULT_DATASET, "--out", str(out), "--n-batches", "2",
                  "--batch-size", "4", "--context-length", "64", "--top-k", "6", "--n-random", "10", "--window", "4"])
    run_interpret(out, InterpretConfig(provider="search", latents=labels, progress=False))
    return out

