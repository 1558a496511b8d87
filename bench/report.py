"""Report writing time and size for a large synthetic run, against just reading it.

    python -m bench.report [--n-latents 100000] [--workers 1,0] [--out DIR] [--keep]

Writes a synthetic run shaped like a default harvest (top_k 20, n_random 40,
window 16 -> 33-token windows, 10-entry token/correlation lists, 48 histogram
bins, an explanation for 90% of latents and two scorers), then times:

  read     decode every components.jsonl line into ComponentData (msgspec) and
           nothing else: the floor for anything that shows the data
  report   engine.report.build_report with --workers W (0 = one per CPU, at most 8)
  serve    engine.serve start-up (offset index + table), then the median of 20
           latent page renders and of 20 search+sort API queries

and prints seconds, the ratio report/read, bytes written (total and per latent)
and files written. The last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np
from tqdm import tqdm

from engine.core.schemas import (
    ActivationExample,
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

TOP_K, N_RANDOM, WINDOW, N_BINS, LIST = 20, 40, 16, 48, 10


def write_big_run(run: Path, n_latents: int, seed: int = 0) -> None:
    """A synthetic run of `n_latents` latents with default-harvest-sized records (contents random;
    examples are drawn from a pool so that generation stays fast)."""
    rng = np.random.default_rng(seed)
    syll = ["ka", "to", "mi", "ra", "ne", "so", "lu", "pe", "di", "vo", "an", "el", "or", "us", "th", "st"]
    vocab = [(" " if i % 3 else "") + "".join(rng.choice(syll, size=rng.integers(1, 4))) for i in range(5000)]
    vocab[:6] = ["\n", " the", " <script>", "&amp;", "\t", ""]
    (run / "harvest").mkdir(parents=True)
    (run / "interpretations").mkdir()
    (run / "scores").mkdir()
    n_tokens = 10_000_000
    hp = HookpointInfo(name="blocks.6.hook_resid_post", module="model.layers.6", dictionary="sae", kind="sae_lens:topk",
                       d_in=1024, n_latents=n_latents, offset=0)
    edges = [10 ** (-3 + 6 * i / N_BINS) for i in range(N_BINS + 1)]
    cfg = RunConfig(model="bench/model", model_class="LlamaForCausalLM", n_layers=12, dataset="bench", dataset_column="text",
                    context_length=128, batch_size=32, n_sequences=n_tokens // 128, n_tokens=n_tokens, hookpoints=[hp],
                    n_latents=n_latents, top_k=TOP_K, n_random=N_RANDOM, window=WINDOW, histogram_edges=edges,
                    filter_bos=True, output_stats=True, seed=seed, engine_version="bench", backend="torch")
    (run / "harvest" / "config.json").write_bytes(msgspec.json.encode(cfg))

    W = 2 * WINDOW + 1
    pool = []
    for j in range(4000):
        ids = rng.integers(0, len(vocab), W).tolist()
        acts = np.where(rng.random(W) < 0.15, rng.lognormal(0, 1, W), 0.0).round(5)
        acts[WINDOW] = round(float(rng.lognormal(1, 0.5)), 5)
        pool.append(ActivationExample(sequence=int(rng.integers(0, cfg.n_sequences)), position=int(rng.integers(0, 128)),
                                      activation=float(acts[WINDOW]), token_ids=ids, tokens=[vocab[i] for i in ids],
                                      activations=acts.tolist(), firing_index=WINDOW, source="top"))

    def scored(names, k=LIST) -> list[Scored]:
        idx = rng.integers(0, len(names), k)
        vals = np.sort(rng.random(k))[::-1]
        return [Scored(names[i], int(i), round(float(v), 6), float(rng.integers(2, 500))) for i, v in zip(idx, vals)]

    def stats() -> TokenStats:
        return TokenStats(top_precision=scored(vocab), top_recall=scored(vocab), top_pmi=scored(vocab), exact=True, error_bound=0.0)

    keys = [f"{hp.name}/{i}" for i in range(n_latents)]
    enc = msgspec.json.Encoder()
    with open(run / "harvest" / "components.jsonl", "wb") as fc, \
            open(run / "interpretations" / "results.jsonl", "wb") as fe, \
            open(run / "scores" / "detection.jsonl", "wb") as fd, open(run / "scores" / "fuzzing.jsonl", "wb") as ff:
        for lat in tqdm(range(n_latents), desc="synthetic run", unit="latent", mininterval=2):
            count = int(rng.integers(20, 50_000))
            ex = rng.integers(0, len(pool), TOP_K + N_RANDOM)
            corr_idx = rng.integers(0, n_latents, 4 * LIST)
            corr = [[Scored(keys[i], int(i), round(float(v), 5), float(rng.integers(2, 99)))
                     for i, v in zip(corr_idx[k * LIST:(k + 1) * LIST], np.sort(rng.random(LIST))[::-1])] for k in range(4)]
            c = ComponentData(
                component_key=keys[lat], hookpoint=hp.name, component_idx=lat, latent=lat, firing_count=count,
                firing_density=count / n_tokens, mean_activation=float(rng.lognormal(0, 0.5)),
                max_activation=float(rng.lognormal(1.5, 0.3)), histogram=rng.integers(0, 200, N_BINS).tolist(),
                top_examples=[pool[i] for i in ex[:TOP_K]], random_examples=[pool[i] for i in ex[TOP_K:]],
                input_token_stats=stats(), output_token_stats=stats(),
                logit_lens=LogitLens(top=scored(vocab), bottom=scored(vocab)),
                correlations=ComponentCorrelations(*corr, exact=True, error_bound=0.0))
            fc.write(enc.encode(c) + b"\n")
            if lat % 10:
                label = " ".join(vocab[i].strip() for i in rng.integers(6, len(vocab), 4))
                fe.write(enc.encode(Explanation(component_key=keys[lat], latent=lat, label=label, confidence="high",
                                                reasoning="Fires on " + label + ".", search_label=label[:12], source="llm",
                                                model="bench", explainer="default", prompt_hash="h", raw_response="{}",
                                                example_ids=[])) + b"\n")
                for scorer, f, auc in (("detection", fd, True), ("fuzzing", ff, False)):
                    ba = float(rng.random())
                    f.write(enc.encode(ScoreResult(component_key=keys[lat], latent=lat, scorer=scorer, label=label,
                                                   n_examples=40, accuracy=ba, balanced_accuracy=ba, precision=ba, recall=ba,
                                                   f1=ba, auc=ba if auc else None, ci={}, per_quantile_recall={},
                                                   model="bench")) + b"\n")


def dir_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under path."""
    total = files = 0
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                else:
                    total += e.stat(follow_symlinks=False).st_size
                    files += 1
    return total, files


def time_read(path: Path) -> float:
    dec = msgspec.json.Decoder(ComponentData)
    t = time.perf_counter()
    with open(path, "rb") as f:
        for line in f:
            dec.decode(line)
    return time.perf_counter() - t


def time_serve(run: Path) -> dict:
    from aiohttp.test_utils import TestClient, TestServer

    from engine.report.data import latent_href
    from engine.report.serve import make_app

    t = time.perf_counter()
    app = make_app(run)
    startup = time.perf_counter() - t

    async def requests() -> tuple[list[float], list[float]]:
        pages, queries = [], []
        async with TestClient(TestServer(app)) as client:
            for k in range(20):
                t = time.perf_counter()
                r = await client.get("/" + latent_href(k * 997 % 1000))
                await r.read()
                pages.append(time.perf_counter() - t)
                t = time.perf_counter()
                r = await client.get("/api/latents", params=dict(q="ka", sort="detection:balanced_accuracy", dir="desc", page=k))
                await r.read()
                queries.append(time.perf_counter() - t)
        return pages, queries

    pages, queries = asyncio.run(requests())
    return dict(startup_s=startup, page_ms=1e3 * statistics.median(pages), query_ms=1e3 * statistics.median(queries))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-latents", type=int, default=100_000)
    p.add_argument("--workers", default="1,0", help="comma-separated worker counts to time (0 = one per CPU, at most 8)")
    p.add_argument("--out", type=Path, default=None, help="where to write the run (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the run and report afterwards")
    a = p.parse_args(argv)
    from engine.report.site import build_report

    base = Path(tempfile.mkdtemp(prefix="bench_report_", dir=a.out))
    run = base / "run"
    try:
        t = time.perf_counter()
        write_big_run(run, a.n_latents)
        gen_s = time.perf_counter() - t
        comp = run / "harvest" / "components.jsonl"
        comp_bytes = comp.stat().st_size
        read_s = time_read(comp)
        print(f"synthetic run: {a.n_latents:,} latents, components.jsonl {comp_bytes / 1e9:.2f} GB (generated in {gen_s:.0f}s)")
        print(f"read     {read_s:8.1f}s  decode every line into ComponentData ({comp_bytes / read_s / 1e6:.0f} MB/s)")
        result = dict(n_latents=a.n_latents, components_bytes=comp_bytes, read_s=read_s, report={}, cpus=os.cpu_count(),
                      machine=platform.processor() or platform.machine())
        for w in [int(x) for x in a.workers.split(",")]:
            out = base / f"report_w{w}"
            t = time.perf_counter()
            build_report(run, out, workers=w or None)
            s = time.perf_counter() - t
            size, files = dir_size(out)
            result["report"][str(w)] = dict(seconds=s, ratio_to_read=s / read_s, bytes=size, files=files)
            print(f"report   {s:8.1f}s  workers={w or 'cpus'}: {s / read_s:.2f}x read, {size / 1e9:.2f} GB in {files:,} files "
                  f"({size / a.n_latents / 1e3:.1f} kB per latent, {size / comp_bytes:.2f}x components.jsonl)")
            if w != int(a.workers.split(",")[-1]):
                shutil.rmtree(out)
        sv = time_serve(run)
        result["serve"] = sv
        print(f"serve    {sv['startup_s']:8.1f}s  start-up ({sv['startup_s'] / read_s:.2f}x read); "
              f"page {sv['page_ms']:.1f} ms, search+sort query {sv['query_ms']:.1f} ms (medians of 20)")
        print(json.dumps(result))
        return result
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
