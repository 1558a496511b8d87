"""End to end against a real local LLM server: explain and score real latents of a real model.

    python -m bench.e2e [--latents 24] [--port 8377] [--base-url URL --model M]   (make e2e [E2E_ARGS=...])

Subject: SmolLM2-135M-Instruct with the shipped SAE (`engine.demo_real`'s run, harvested
first if missing). Explainer and judge: the same GGUF served by `llama_cpp.server` on
127.0.0.1 (started here, stopped at the end), or any OpenAI-compatible server you name
with --base-url/--model (vLLM, upstream llama-server, a bigger GGUF), which is then
neither started nor stopped.

The harvested run is copied twice: `search/` keeps the offline search labels, `llm/`
gets the server's explanations of the same latents; both are scored by the server
(detection, fuzz, simulation with logprobs) on the same held-out examples. Printed (and
the last stdout line, as JSON): per-scorer pooled scores with 95% CIs for both label
sets, wall times of each step, the server's requests/s (from its access log) and the
share of wall time spent in this process (its CPU time / wall time; the rest is waiting
on the server).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from engine.core.rundir import RunDir, primary

SCORERS = ("detection", "fuzz", "simulation")
MODEL, LOGPROBS_SUFFIX = "smollm2", "-logprobs"


def start_server(gguf: Path, port: int, log: Path, threads: int) -> subprocess.Popen:
    """llama_cpp.server on 127.0.0.1, one request at a time, serving the GGUF under two names.

    `smollm2` computes logits for the last token only; `smollm2-logprobs` keeps every position's
    logits (`logits_all`, which llama-cpp-python needs for logprobs) and is used by simulation alone:
    copying 49,152 logits per prompt token made every explain and judge prompt several times slower.
    The server swaps the loaded model when the name changes (about a second for 135M)."""
    common = {"model": str(gguf), "n_ctx": 8192, "n_threads": threads, "n_threads_batch": threads}
    config = {"host": "127.0.0.1", "port": port,
              "models": [{**common, "model_alias": MODEL, "logits_all": False},
                         {**common, "model_alias": MODEL + LOGPROBS_SUFFIX, "logits_all": True}]}
    path = log.with_name("server.json")
    path.write_text(json.dumps(config, indent=1))
    cmd = [sys.executable, "-m", "llama_cpp.server", "--config_file", str(path)]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_ready(base_url: str, proc: subprocess.Popen | None, timeout_s: float = 600.0) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"llama_cpp.server exited with status {proc.returncode} -- see its log")
        try:
            with urllib.request.urlopen(base_url + "/models", timeout=5) as r:
                if r.status == 200:
                    return time.time() - t0
        except OSError:
            time.sleep(2)
    raise SystemExit(f"{base_url} did not answer within {timeout_s:.0f}s")


def pick_latents(run: RunDir, n: int, min_firings: int) -> list[int]:
    """The first n latents (by index) with enough firings for the held-out sets."""
    return [c.latent for c in run.iter_components() if c.firing_count >= min_firings][:n]


def copy_run(src: Path, dst: Path) -> Path:
    if dst.exists():
        return dst
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("scores", "report"))
    return dst


def pooled(summary: dict, name: str) -> str:
    s = summary.get(name) or {}
    p = s.get("pooled") or {}
    if "balanced_accuracy" not in p:
        return "-"
    lo, hi = p["ci"]["balanced_accuracy"]
    out = f"{p['balanced_accuracy']:.3f} [{lo:.2f},{hi:.2f}]"
    if name == "simulation" and s.get("pooled_pearson") is not None:
        ci = s.get("pooled_pearson_ci") or p.get("ci", {}).get("pearson")
        out += f" r={s['pooled_pearson']:.3f}" + (f" [{ci[0]:.2f},{ci[1]:.2f}]" if ci else "")
    return out


def server_requests(log: Path) -> dict[str, int]:
    """HTTP statuses of the completions the server answered (uvicorn's access log)."""
    counts: dict[str, int] = {}
    if log.exists():
        for m in re.finditer(r'"POST /v1/chat/completions HTTP/1.1" (\d+)', log.read_text(errors="replace")):
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/e2e", help="Folder of the two scored copies and the server log.")
    p.add_argument("--source-run", default="runs/demo-real", help="Harvested run (engine.demo_real makes it).")
    p.add_argument("--latents", type=int, default=24, help="Latents explained and scored.")
    p.add_argument("--base-url", default="", help="An OpenAI-compatible server to use instead of starting one.")
    p.add_argument("--model", default=MODEL, help="Model name sent to the server.")
    p.add_argument("--logprobs-model", default="",
                   help="Model name for simulation (it asks for logprobs); --model when empty, "
                        f"{MODEL + LOGPROBS_SUFFIX} for the server started here.")
    p.add_argument("--port", type=int, default=8377, help="Port of the llama_cpp.server started here.")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2)), help="Server threads.")
    p.add_argument("--n-examples-test", type=int, default=5, help="Held-out activating examples per latent "
                   "(and as many non-activating ones).")
    p.add_argument("--max-examples", type=int, default=12, help="Examples shown to the explainer.")
    p.add_argument("--n-simulated", type=int, default=1, help="Simulated activating windows per latent.")
    a = p.parse_args(argv)
    t_wall, t_cpu = time.time(), time.process_time()
    times: dict[str, float] = {}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    src = Path(a.source_run)
    if not (src / "harvest" / "components.jsonl").exists():
        from engine import demo_real

        t = time.time()
        demo_real.main(["--out", str(src), "--no-bare-forward"])
        times["demo_real"] = time.time() - t
    search, llm = copy_run(src, out / "search"), copy_run(src, out / "llm")
    latents = pick_latents(RunDir(search), a.latents, min_firings=4 * a.n_examples_test)
    spec = ",".join(map(str, latents))

    proc, log = None, out / "server.log"
    base_url = a.base_url.rstrip("/")
    if not base_url:
        from engine.build_real import gguf_path

        base_url = f"http://127.0.0.1:{a.port}/v1"
        proc = start_server(gguf_path(), a.port, log, a.threads)
    try:
        times["server_start"] = wait_ready(base_url, proc)
        from engine.interpret import run as interpret
        from engine.score import run as score

        def client(model: str) -> list[str]:
            return ["--provider", "openai-compatible", "--base-url", base_url, "--model", model,
                    "--max-concurrent", "1", "--read-timeout-s", "900"]

        sim_model = a.logprobs_model or (a.model + LOGPROBS_SUFFIX if proc is not None else a.model)
        t = time.time()
        interpret.main([str(llm), "--latents", spec, "--max-examples", str(a.max_examples),
                        "--n-examples-test", str(a.n_examples_test), *client(a.model)])
        times["interpret"] = time.time() - t
        summaries = {}
        for name, run in (("search", search), ("llm", llm)):
            t = time.time()
            common = [str(run), "--latents", spec, "--n-examples-test", str(a.n_examples_test),
                      "--n-non-activating", str(a.n_examples_test)]
            summaries[name] = score.main([*common, "--scorers", *SCORERS[:2], *client(a.model)])
            summaries[name].update(score.main([*common, "--scorers", "simulation", "--logprobs", "5",
                                               "--n-simulated", str(a.n_simulated), *client(sim_model)]))
            times[f"score_{name}"] = time.time() - t
    finally:
        if proc is not None and proc.poll() in (-4, 132):  # SIGILL: a build for another CPU (see the Makefile)
            print("e2e: llama_cpp.server died of an illegal instruction: its build uses CPU features this host "
                  "lacks -- reinstall it portably: make e2e after .venv/bin/pip uninstall -y llama-cpp-python",
                  file=sys.stderr)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    wall, cpu = time.time() - t_wall, time.process_time() - t_cpu

    explained = {k: primary(v) for k, v in RunDir(llm).read_explanations().items() if k in set(latents)}
    real = [e for e in explained.values() if e.source == "llm" and e.error is None]
    print(f"\n{len(latents)} latents; {len(real)} explained by the server ({len(explained) - len(real)} kept the search "
          "label after a failure)")
    for e in list(explained.values())[:8]:
        shown = repr(e.label) if e.source == "llm" and e.error is None else "(failed: search label kept)"
        print(f"  {e.latent:5d}  llm {shown:45.45}  search {e.search_label!r:.40}")
    print(f"\n{'scorer':11s} {'search labels':34s} {'LLM explanations':34s}")
    for s in SCORERS:
        print(f"{s:11s} {pooled(summaries['search'], s):34s} {pooled(summaries['llm'], s):34s}")
    reqs = server_requests(log)
    served = sum(reqs.values())
    server_s = wall - times.get("demo_real", 0.0) - times["server_start"]
    print(f"\nwall {wall:.0f}s: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    if proc is not None:
        print(f"server: {served} completions {reqs} in {server_s:.0f}s = {served / max(server_s, 1e-9):.3f} requests/s")
    print(f"this process: {cpu:.0f}s CPU = {cpu / wall:.1%} of wall time (the rest waits on the server)")
    result = {"latents": len(latents), "explained_by_llm": len(real), "times_s": times, "wall_s": wall,
              "our_cpu_share": cpu / wall, "server_requests": reqs, "requests_per_s": served / max(server_s, 1e-9),
              "scores": {n: {s: (summaries[n].get(s) or {}).get("pooled") for s in SCORERS} for n in summaries}}
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()
