"""torchrun with 2 CPU processes (gloo) gives the single-process harvest."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL, DEFAULT_SAE
from tests.helpers.run_files import components_by_latent

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["-m", "engine.harvest", DEFAULT_MODEL, DEFAULT_SAE, "--dataset", DEFAULT_DATASET, "--n-batches", "6",
        "--batch-size", "4", "--context-length", "64", "--top-k", "5", "--n-random", "4", "--window", "3", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    subprocess.run([sys.executable, *ARGS, "--out", str(out)], check=True, cwd=ROOT, capture_output=True, env=ENV)
    return out


def _torchrun(out, *extra):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                        "--master-port", str(_free_port()), *ARGS, "--out", str(out), *extra], cwd=ROOT, capture_output=True,
                       text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi")
    _torchrun(out, "--final-checkpoint")  # each rank keeps its end state: checkpoint/rank{r}/
    return out


def test_two_process_gloo_equals_single_process(single, multi):
    a = load_file(str(single / "harvest" / "stats.safetensors"))
    b = load_file(str(multi / "harvest" / "stats.safetensors"))
    for k in ("count", "hist", "tok_total"):
        assert torch.equal(a[k], b[k]), k
    torch.testing.assert_close(a["act_sum"], b["act_sum"], rtol=1e-9, atol=1e-9)
    assert torch.equal(a["act_max"], b["act_max"])
    ca, cb = components_by_latent(single), components_by_latent(multi)
    assert ca.keys() == cb.keys()
    for lat in ca:
        x, y = ca[lat], cb[lat]
        assert [(e.sequence, e.position) for e in x.top_examples] == [(e.sequence, e.position) for e in y.top_examples]
        assert [(e.sequence, e.position) for e in x.random_examples] == [(e.sequence, e.position) for e in y.random_examples]
        assert x.top_examples == y.top_examples
        assert x.input_token_stats == y.input_token_stats
        assert x.correlations == y.correlations


def test_latent_parallel_ranks_write_the_single_process_results(tmp_path, single):
    """--latent-parallel: each rank keeps half the latents (all batches); the joined output is the same bytes."""
    split = tmp_path / "split"
    _torchrun(split, "--latent-parallel", "--checkpoint-every", "2")
    for name in ("components.jsonl", "stats.safetensors", "tokens.bin"):
        assert (split / "harvest" / name).read_bytes() == (single / "harvest" / name).read_bytes(), name
    assert not list((split / "harvest").glob("components.rank*"))
    halves = [load_file(str(split / "harvest" / "checkpoint" / f"rank{r}" / "tensors.safetensors")) for r in range(2)]
    assert [len(h["count"]) for h in halves] == [512, 512]  # each rank held half of the 1024 latents
    assert [h["cooc.table"].shape for h in halves] == [(512, 1024), (512, 1024)]


def test_a_torchrun_run_merges_with_a_run_over_other_data(tmp_path, multi):
    """engine.harvest merge reads a torchrun run's per-rank end states and folds them into one."""
    other_data = tmp_path / "other.txt"
    other_data.write_text("\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}" for i in range(300)))
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "engine.harvest", DEFAULT_MODEL, DEFAULT_SAE, "--dataset", str(other_data),
                    "--n-batches", "2", "--batch-size", "4", "--context-length", "64", "--top-k", "5", "--n-random", "4",
                    "--window", "3", "--final-checkpoint", "--out", str(other)], check=True, cwd=ROOT, capture_output=True,
                   env=ENV)
    r = subprocess.run([sys.executable, "-m", "engine.harvest", "merge", str(multi), str(other), "--out",
                        str(tmp_path / "merged")], cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b, m = (load_file(str(p / "harvest" / "stats.safetensors")) for p in (multi, other, tmp_path / "merged"))
    assert torch.equal(m["count"], a["count"] + b["count"]) and torch.equal(m["hist"], a["hist"] + b["hist"])
