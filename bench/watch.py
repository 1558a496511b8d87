"""The per-step cost of watching a training SAE with a Harvester, as a ratio to the training step.

    python -m bench.watch [--steps 30] [--latents 4096] [--k 32] [--batch-size 8] [--context-length 128] [--every 1]

Runs examples/train_and_watch.py's loop (embedded model, block-2 residual stream, TopK SAE, Adam) twice on
the same batches: watching every `--every`-th step, and not watching. Per step it times the model forward
(the activations), the SAE training step (forward, backward, Adam) and the Harvester update on the detached
activations (encode with the live weights + every statistic), and prints medians, the watch time as a ratio
to the training step and to forward + training step, and the slowdown of the whole watched training loop.
The first step of each run (warm-up) is left out; on CUDA every interval ends with a synchronize. The last stdout line is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess

import torch

from examples.train_and_watch import train


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--latents", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    kw = {"steps": a.steps, "n_latents": a.latents, "k": a.k, "batch_size": a.batch_size, "context_length": a.context_length,
          "device": a.device}
    plain = train(watch=False, **kw)
    watched = train(every=a.every, **kw)
    loop = lambda r: sum(r["forward_s"][1:]) + sum(r["train_s"][1:]) + sum(r["watch_s"][1:])
    t_plain, t_watched = loop(plain), loop(watched)
    med = lambda xs: statistics.median(xs[1:] if len(xs) > 1 else xs)  # drop the warm-up step
    fwd, step, watch = med(watched["forward_s"]), med(watched["train_s"]), med(watched["watch_s"])
    fwd0, step0 = med(plain["forward_s"]), med(plain["train_s"])
    tokens = a.batch_size * a.context_length
    print(f"device {a.device} ({torch.cuda.get_device_name() if a.device.startswith('cuda') else platform.processor() or platform.machine()}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{a.steps} steps of {tokens:,} tokens, {a.latents} latents, k = {a.k}, watching every {a.every} step(s)")
    print(f"{'per step (median)':28s} {'ms':>9s} {'tok/s':>12s}")
    for name, t in (("model forward", fwd), ("SAE training step", step), ("watch (Harvester.update)", watch),
                    ("unwatched: forward", fwd0), ("unwatched: training step", step0)):
        print(f"{name:28s} {t * 1e3:9.2f} {tokens / t:12,.0f}")
    ratio_step, ratio_all = watch / step, watch / (fwd + step)
    print(f"watch / training step {ratio_step:.2f}x; watch / (forward + training step) {ratio_all:.2f}x; "
          f"training loop watched / unwatched {t_watched / t_plain:.2f}x (steps after the first)")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    result = {"bench": "watch", "commit": commit, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "config": vars(a), "forward_ms": fwd * 1e3, "train_step_ms": step * 1e3, "watch_ms": watch * 1e3,
              "watch_over_train_step": ratio_step, "watch_over_forward_and_train": ratio_all,
              "loop_watched_over_unwatched": t_watched / t_plain}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
