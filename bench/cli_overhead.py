"""The whole `engine.harvest` command against its in-memory loop, side by side on the same tokens.

    python -m bench.cli_overhead [--batches 100] [--batch-size 16] [--context-length 128]
                                 [--output-stats | --no-output-stats] [--repeats 3] [--threads 1]

Same process, model, dictionary and sequences for both paths (the embedded default):

  in-memory  the CLI's own loop on sequences tokenized beforehand: `HookedModel.run`, the BOS mask,
             `Harvester.update` with the CLI's StateConfig, nothing written
  CLI        `engine.harvest.run.main([...])` in this process (imports warm, as the in-memory path's
             are): model and tokenizer load, reading and tokenizing the corpus, the loop, tokens.bin,
             the results (config.json, stats.safetensors, components.jsonl) and any checkpoint

The paths alternate for `--repeats` rounds; the ratio is the median over rounds of CLI / in-memory
within a round (a shared machine's load changes slowly, so paired rounds cancel it), with each
path's best time next to it. Wall time is what a user waits; process CPU time (all threads, less
sensitive to other load) also counts the CLI's tokenization, which its prefetch thread runs on
another core while the loop runs. A last, instrumented CLI round splits the CLI's wall time into
phases (the prefetch thread's time is shown, not added). The last line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.harvest.config import HarvestArgs
from engine.harvest.data import batches, iter_texts, pack
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from engine.harvest.dictionaries import load_dictionary
from engine.harvest.harvester import Harvester
from engine.harvest.model import load_model
from engine.harvest.sources import HookedModel


def cpu_s() -> float:
    """User + system CPU seconds of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall s, CPU s) of fn()."""
    t, c = time.perf_counter(), cpu_s()
    fn()
    return time.perf_counter() - t, cpu_s() - c


def cli_argv(out: Path, a) -> list[str]:
    return [DEFAULT_MODEL, DEFAULT_SAE, "--dataset", DEFAULT_DATASET, "--out", str(out), "--n-batches", str(a.batches),
            "--batch-size", str(a.batch_size), "--context-length", str(a.context_length), "--device", "cpu",
            "--output-stats" if a.output_stats else "--no-output-stats", *a.cli_extra]


def run_cli(main, argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # summary, progress bars
        main(argv)


def in_memory(model, tok, d, data: list[torch.Tensor], S: int, output_stats: bool):
    """The CLI's loop (engine.harvest.run) on sequences tokenized beforehand, with the CLI's defaults."""
    hooked = HookedModel(model, [d.hookpoint])
    cfg = HarvestArgs(context_length=S, batch_size=len(data[0]), output_stats=output_stats).state_config(
        [d], max(len(tok), model.config.vocab_size))  # exactly the CLI's (one top per chunk, ...)
    h = Harvester([d], cfg, [d.hookpoint], "cpu")
    bos, first = tok.bos_token_id, 0
    for ids in data:
        acts, logits = hooked.run(ids, need_logits=output_stats)
        h.update(acts, ids, seq_ids=torch.arange(first, first + len(ids)), valid=ids != bos, logits=logits)
        first += len(ids)
    hooked.close()
    return h.state


def breakdown(R, argv: list[str]) -> dict[str, float]:
    """One run of module R's CLI (engine.harvest.run) with its phases timed (wrappers on the names it calls)."""
    from engine.harvest.data import TokenStore
    from engine.harvest.state import HarvestState

    times: dict[str, float] = {}
    undo = []

    def wrap(owner, name, label):
        f = getattr(owner, name)

        @functools.wraps(f)
        def g(*args, **kw):
            t = time.perf_counter()
            try:
                return f(*args, **kw)
            finally:
                times[label] = times.get(label, 0.0) + time.perf_counter() - t

        setattr(owner, name, g)
        undo.append((owner, name, f))

    def timed_pack(texts, tokenizer, S):  # runs in the prefetch thread: overlapped, reported apart
        it = orig_pack(texts, tokenizer, S)
        while True:
            t = time.perf_counter()
            try:
                seq = next(it)
            except StopIteration:
                return
            finally:
                times["tokenize+pack (prefetch thread)"] = times.get("tokenize+pack (prefetch thread)", 0.0) + time.perf_counter() - t
            yield seq

    orig_pack = R.pack
    wrap(R, "load_model", "model+tokenizer load")
    wrap(R, "open_dictionaries", "dictionary load")
    wrap(HookedModel, "run", "forward")
    wrap(Harvester, "update", "Harvester.update")
    wrap(TokenStore, "write", "tokens.bin writes")
    wrap(HarvestState, "save", "checkpoint save")
    wrap(R, "build_results", "results (config, stats, components.jsonl, token bytes, directions)")
    R.pack = timed_pack
    try:
        t = time.perf_counter()
        run_cli(R.main, argv)
        total = time.perf_counter() - t
    finally:
        R.pack = orig_pack
        for owner, name, f in reversed(undo):
            setattr(owner, name, f)
    times["total"] = total
    counted = sum(v for k, v in times.items() if k not in ("total", "tokenize+pack (prefetch thread)"))
    times["other"] = total - counted
    return times


def measure(a, module=None) -> dict:
    """`module`: the CLI's module (default engine.harvest.run; another version of it to compare)."""
    if module is None:
        import engine.harvest.run as module
    main = module.main
    torch.set_num_threads(a.threads)
    model, tok, _ = load_model(DEFAULT_MODEL, "cpu", "float32")
    d = load_dictionary(DEFAULT_SAE)
    S = a.context_length
    data = [ids for _, ids in batches(pack(iter_texts(DEFAULT_DATASET), tok, S), a.batch_size, a.batches * a.batch_size)]
    n_tok = sum(x.numel() for x in data)
    mem, cli, ratios, mem_cpu, cli_cpu = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        tmp = Path(tmp)
        in_memory(model, tok, d, data[:1], S, a.output_stats)  # warm-up
        run_cli(main, cli_argv(tmp / "warm", a))
        for r in range(a.repeats):
            w, c = timed(lambda: in_memory(model, tok, d, data, S, a.output_stats))
            mem.append(w), mem_cpu.append(c)
            w, c = timed(lambda out=tmp / f"cli{r}": run_cli(main, cli_argv(out, a)))
            cli.append(w), cli_cpu.append(c)
            ratios.append(cli[-1] / mem[-1])
        out = tmp / f"cli{a.repeats - 1}" / "harvest"
        written = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
        ckpt = sum(p.stat().st_size for p in (out / "checkpoint").rglob("*") if p.is_file()) if (out / "checkpoint").exists() else 0
        phases = breakdown(module, cli_argv(tmp / "breakdown", a)) if a.breakdown else {}
    return {"tokens": n_tok, "batches": len(data), "output_stats": a.output_stats, "threads": a.threads,
            "in_memory_s": mem, "cli_s": cli, "ratio": statistics.median(ratios), "ratios": ratios,
            "in_memory_cpu_s": mem_cpu, "cli_cpu_s": cli_cpu,
            "cpu_ratio": statistics.median(c / m for c, m in zip(cli_cpu, mem_cpu)),
            "written": written, "checkpoint_bytes": ckpt, "phases": phases}


def report(res: dict) -> None:
    print(f"embedded default, {res['tokens']:,} tokens ({res['batches']} batches), output stats "
          f"{'on' if res['output_stats'] else 'off'}, {res['threads']} torch thread(s), torch {torch.__version__}")
    print(f"{'path':12s} {'best s':>7s} {'median s':>9s}  rounds")
    for name, key in (("in-memory", "in_memory_s"), ("CLI", "cli_s")):
        ts = res[key]
        print(f"{name:12s} {min(ts):7.2f} {statistics.median(ts):9.2f}  {' '.join(f'{t:.2f}' for t in ts)}")
    print(f"CLI / in-memory: {res['ratio']:.3f} wall (median of paired rounds: {' '.join(f'{r:.3f}' for r in res['ratios'])}), "
          f"{res['cpu_ratio']:.3f} CPU (in-memory {min(res['in_memory_cpu_s']):.2f} s, CLI {min(res['cli_cpu_s']):.2f} s, best)")
    files = ", ".join(f"{k} {v / 2**20:.1f} MB" for k, v in sorted(res["written"].items()))
    print(f"CLI wrote: {files}; checkpoint {res['checkpoint_bytes'] / 2**20:.1f} MB")
    if res["phases"]:
        print("CLI phases (one instrumented run):")
        for k, v in res["phases"].items():
            print(f"  {k:45s} {v:7.2f} s")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--output-stats", action=argparse.BooleanOptionalAction, default=True,
                   help="the CLI's default (full forward, next-token statistics); --no-output-stats as bench.peers")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    p.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True, help="a last, instrumented CLI run")
    p.add_argument("--cli-extra", nargs=argparse.REMAINDER, default=[], help="further engine.harvest flags (last)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    res = measure(parse(argv))
    report(res)
    return res


if __name__ == "__main__":
    main()
