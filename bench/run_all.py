"""Run every CPU benchmark and record the results in bench/RESULTS.md.

    python -m bench.run_all [--only harvest,memory] [--no-write]

Each benchmark is a module `bench.<name>` that prints a human table and ends
with one JSON line. This runs them one after another in subprocesses (so peak
memory is per benchmark), then replaces the "Latest CPU run" section of
RESULTS.md with the tables, the machine, versions and commands. Sections for
other machines (GPU runs) are kept as they are.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCHES = {
    "harvest": ["-m", "bench.harvest"],
    "memory": ["-m", "bench.memory"],
    "kernels": ["-m", "bench.kernels"],
    "clients": ["-m", "bench.clients"],
    "report": ["-m", "bench.report", "--n-latents", "5000", "--workers", "1"],
    "peers": ["-m", "bench.peers"],
    "cost": ["-m", "bench.cost"],
    "scale": ["-m", "bench.scale", "--preset", "tiny"],
    "watch": ["-m", "bench.watch"],
}
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
BEGIN, END = "<!-- cpu-run:begin -->", "<!-- cpu-run:end -->"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="comma-separated subset of " + ",".join(BENCHES))
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    names = [n for n in BENCHES if not a.only or n in a.only.split(",")]
    blocks = []
    for name in names:
        module = BENCHES[name][1]
        if not (ROOT / (module.replace(".", "/") + ".py")).exists():
            print(f"[{name}] skipped: {module} not present")
            continue
        cmd = [sys.executable, *BENCHES[name]]
        t = time.time()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        out = [line for line in r.stdout.splitlines() if line.strip()]
        print(f"[{name}] {'ok' if r.returncode == 0 else 'FAILED'} in {time.time() - t:.0f}s")
        print("\n".join(out[:-1] if out else []))
        if r.returncode != 0:
            print(r.stderr[-2000:])
            continue
        try:
            json.loads(out[-1])
        except (IndexError, json.JSONDecodeError):
            print(f"[{name}] last line is not JSON")
        blocks.append(f"### {name}\n\n`python {' '.join(BENCHES[name])}` ({time.time() - t:.0f}s)\n\n```\n" + "\n".join(out) + "\n```\n")
    if a.no_write or not blocks:
        return
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = f"{BEGIN}\n## Latest CPU run ({stamp})\n\nMachine: {machine()}. Command: `make bench`.\n\n" + "\n".join(blocks) + f"{END}\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    if BEGIN in text and END in text and a.only:  # keep the blocks of benchmarks not rerun
        old = text.split(BEGIN, 1)[1].split(END, 1)[0]
        ran = {b.split("\n", 1)[0] for b in blocks}
        kept = ["### " + b for b in old.split("### ")[1:] if "### " + b.split("\n", 1)[0] not in ran]
        blocks = sorted(blocks + [k.rstrip("\n") + "\n" for k in kept], key=lambda b: list(BENCHES).index(b[4:].split("\n", 1)[0].strip()))
        section = f"{BEGIN}\n## Latest CPU run ({stamp})\n\nMachine: {machine()}. Command: `make bench`.\n\n" + "\n".join(blocks) + f"{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
    print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
