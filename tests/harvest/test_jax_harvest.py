"""`python -m engine.harvest --backend jax` end to end on the embedded default: the same files as the torch
path with equal statistics (dense tables with output stats; sketch tables without), a 2-device mesh equal to
one device, checkpoint + resume equal to an uninterrupted run, and a torch harvest that never imports jax."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytest.importorskip("jax", reason="jax not installed: pip install -e '.[jax]' to run the JAX backend tests")

from engine.harvest import run as harvest

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--n-batches", "2", "--batch-size", "4", "--context-length", "48", "--top-k", "5", "--n-random", "4", "--window", "3"]
RUNS = {"dense+out": ["--final-checkpoint"], "sketch": ["--no-output-stats", "--pair-budget-mb", "0"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{mode: (torch harvest dir, jax harvest dir)} for the two table modes."""
    out = {}
    for mode, extra in RUNS.items():
        d = tmp_path_factory.mktemp(mode)
        t = harvest.main([*SMALL, *extra, "--out", str(d / "torch")])
        j = harvest.main([*SMALL, *extra, "--out", str(d / "jax"), "--backend", "jax"])
        out[mode] = (t, j)
    return out


def _close(a, b, path, rel=2e-5):
    """Structural equality: ints, strings and lists of ids exact; floats within float32 forward tolerance
    (the JAX and torch forwards round differently, ~1e-6 relative over four layers; 2e-5 leaves room)."""
    if path.endswith(".histogram"):
        _hist_close(a, b, path)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}", rel)
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: {len(a)} vs {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]", rel)
    elif isinstance(a, float) and not isinstance(b, bool):
        assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-5), f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def _hist_close(a, b, path):
    """Histograms: the same firings, each in the same bin except one whose activation sits within float32
    rounding of a bin edge (then it moves to the neighbouring bin): equal totals, at most 2 moved per row."""
    assert sum(a) == sum(b), path
    moved = [x - y for x, y in zip(a, b) if x != y]
    assert sum(abs(m) for m in moved) <= 2 * 2, f"{path}: {a} vs {b}"


def _output_tables_close(t_ckpt, j_ckpt):
    """Output-token tables: out_tok sums each firing position's top-8 next-token probabilities (out_total the
    same over every position), and when the 8th and 9th probabilities are
    within rounding the backends may keep different tokens (each such swap moves at most a 1/8 share of one
    position's mass, in practice ~1e-3 of it): the tables agree to 1e-3 of their total mass."""
    tt, jt = load_file(str(t_ckpt / "tensors.safetensors")), load_file(str(j_ckpt / "tensors.safetensors"))
    for k in ("out_total", "out_tok.table"):  # the marginal is the same top-8 mass over every position
        diff = (jt[k] - tt[k]).abs().sum()
        assert diff <= 1e-3 * tt[k].sum(), f"{k}: {diff} of {tt[k].sum()}"
    assert jt["in_tok.table"].equal(tt["in_tok.table"]) and jt["cooc.table"].equal(tt["cooc.table"])


def _components(d):
    return [json.loads(line) for line in open(d / "components.jsonl")]


@pytest.mark.parametrize("mode", list(RUNS))
def test_jax_backend_equals_torch(runs, mode):
    t, j = runs[mode]
    assert (t / "tokens.bin").read_bytes() == (j / "tokens.bin").read_bytes()
    ts, js = load_file(str(t / "stats.safetensors")), load_file(str(j / "stats.safetensors"))
    for k in ("count", "tok_total"):  # integer statistics: identical
        assert ts[k].equal(js[k]), k
    assert ts["hist"].sum(1).equal(js["hist"].sum(1))  # an activation within rounding of a bin edge may
    assert (ts["hist"] - js["hist"]).abs().sum() <= 4   # change bins (1 in ~1e5 firings): at most 2 moves
    for k in ("act_sum", "act_max"):
        assert (ts[k] - js[k]).abs().max() <= 2e-5 * ts[k].abs().max(), k
    tc, jc = _components(t), _components(j)
    assert len(tc) == len(jc) > 100
    for a, b in zip(tc, jc):  # every field of every latent: top-K/reservoir locations, token and co-firing lists
        a_out, b_out = a.pop("output_token_stats"), b.pop("output_token_stats")
        _close(b, a, f"latent {a['latent']}")
        if a_out is not None and a_out["top_recall"]:  # the top mass carrier agrees; _output_tables_close: the rest
            _close(b_out["top_recall"][0], a_out["top_recall"][0], f"latent {a['latent']} output recall", rel=1e-3)
        a["output_token_stats"] = a_out
    if mode == "dense+out":
        _output_tables_close(t / "checkpoint", j / "checkpoint")
    tcfg, jcfg = json.loads((t / "config.json").read_text()), json.loads((j / "config.json").read_text())
    assert (tcfg.pop("backend"), jcfg.pop("backend")) == ("torch", "jax")
    jcfg["extra"].pop("jax_devices")
    assert tcfg == jcfg
    has_out = tc[0]["output_token_stats"] is not None
    assert has_out == (mode == "dense+out")
    assert tc[0]["input_token_stats"]["exact"] == (mode != "sketch")


def test_two_device_mesh_equals_one_device(runs, tmp_path):
    """A subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=2: the batch splits over two CPU
    devices and the per-device states merge exactly."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = tmp_path / "mesh"
    r = subprocess.run([sys.executable, "-m", "engine.harvest", *SMALL, "--out", str(out), "--backend", "jax"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 JAX device(s)" in r.stdout
    one, two = runs["dense+out"][1], out / "harvest"
    assert json.loads((two / "config.json").read_text())["extra"]["jax_devices"] == 2
    s1, s2 = load_file(str(one / "stats.safetensors")), load_file(str(two / "stats.safetensors"))
    for k in ("count", "tok_total"):
        assert s1[k].equal(s2[k]), k
    assert (s1["hist"] - s2["hist"]).abs().sum() <= 4
    for a, b in zip(_components(one), _components(two)):
        _close(b, a, f"latent {a['latent']}")


def test_jax_checkpoint_resume_equals_uninterrupted(runs, tmp_path):
    """One batch with a final checkpoint (torch format), then --resume to two: byte-identical results."""
    args = [*SMALL, "--out", str(tmp_path), "--backend", "jax"]
    args[1] = "1"  # --n-batches 1
    harvest.main([*args, "--final-checkpoint"])
    info = json.loads((tmp_path / "harvest" / "checkpoint" / "state.json").read_text())
    assert info["meta"]["sequences_done"] == 4
    args[1] = "2"
    harvest.main([*args, "--resume"])
    ref = runs["dense+out"][1]
    assert (tmp_path / "harvest" / "components.jsonl").read_bytes() == (ref / "components.jsonl").read_bytes()
    assert not (tmp_path / "harvest" / "checkpoint").exists()  # finished without --final-checkpoint: none left


def test_torch_harvest_never_imports_jax(tmp_path):
    code = ("import sys; from engine.harvest import run; run.main(['--n-batches', '1', '--batch-size', '2', "
            f"'--context-length', '16', '--out', {str(tmp_path)!r}]); print('jax' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "False"
    assert (tmp_path / "harvest" / "components.jsonl").stat().st_size > 0


def test_jax_backend_refuses_what_it_cannot_run(tmp_path, capsys):
    from engine.core.errors import run_cli

    with pytest.raises(SystemExit) as e:
        run_cli(harvest.main, [*SMALL, "--batch-size", "3", "--out", str(tmp_path), "--backend", "jax", "--latent-parallel"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--latent-parallel" in err and "Traceback" not in err


def test_step_multiplies_float32_at_highest_precision():
    """Every matmul of the compiled step (forward, encode, co-occurrence) carries precision HIGHEST: JAX's
    default lets a TPU multiply float32 in bfloat16 passes and a GPU in TF32, which CPU runs never show."""
    import re

    import jax
    import numpy as np

    from engine.harvest.config import HarvestArgs
    from engine.harvest.defaults import DEFAULT_MODEL, DEFAULT_SAE
    from engine.harvest.jax.mesh import pick_devices
    from engine.harvest.jax.run import setup

    a = HarvestArgs(model=DEFAULT_MODEL, dictionaries=[DEFAULT_SAE], batch_size=2, context_length=8, n_batches=1,
                    backend="jax")
    h = setup(a, pick_devices("cpu"))[0]
    put = lambda x: jax.device_put(x, h._dat)
    ids, seq, valid = np.zeros((2, 8), np.int64), np.arange(2, dtype=np.int64), np.ones((2, 8), bool)
    text = h._step.lower(h.params, h.inv_freq, h.dps, h.state, put(ids), put(seq), put(valid)).as_text()
    dots = re.findall(r"(?:stablehlo\.dot_general|stablehlo\.dot)\b[^\n]*", text)
    assert len(dots) >= 10, f"expected the forward's and the encode's matmuls, found {len(dots)}"
    plain = [d for d in dots if "HIGHEST" not in d]
    assert not plain, f"{len(plain)} of {len(dots)} matmuls without precision HIGHEST, e.g. {plain[0][:200]}"
