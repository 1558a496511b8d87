"""Dictionaries and models by name, resolved offline from a pre-populated Hugging Face cache.

The cache is written in huggingface_hub's own layout (refs/main -> commit, blobs/, snapshots/<commit>/
symlinks) with files made by the real libraries: sae-lens's `SAE.save_model` for a release of its
pretrained registry, a Gemma Scope `params.npz` for a registry release, and a sparsify checkpoint root (one
folder per hookpoint, as tests/harvest/test_dictionaries.py writes it). Everything runs in subprocesses with
HF_HOME pointing at the cache and HF_HUB_OFFLINE=1 (huggingface_hub reads both at import), so nothing can
reach a hub.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.core.schemas import RunConfig
from engine.harvest.defaults import DEFAULT_DATASET, DEFAULT_MODEL

sae_lens = pytest.importorskip("sae_lens")

ROOT = Path(__file__).resolve().parents[2]
D = 128  # the embedded model's width, so the named dictionaries can be harvested on it
SAE_LENS = "sae-lens:gpt2-small-res-jb/blocks.0.hook_resid_pre"
GEMMA = "gemma-scope:gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_20"
SPARSIFY = "EleutherAI/sae-tiny-test:layers.2"
COMMITS = {"jbloom/GPT2-Small-SAEs-Reformatted": "1" * 40, "google/gemma-scope-2b-pt-res": "2" * 40,
           "EleutherAI/sae-tiny-test": "3" * 40}


def cache_repo(hub_cache: Path, repo_id: str, folder: Path, commit: str) -> None:
    """Every file under `folder` as repo `repo_id` at `commit`, laid out as huggingface_hub caches downloads."""
    from huggingface_hub.file_download import repo_folder_name

    repo = hub_cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)  # a second call: the repo has moved on to `commit`
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """HF_HOME with three cached repos; also the source folders, for the references."""
    tmp = tmp_path_factory.mktemp("hub")
    g = torch.Generator().manual_seed(0)
    src = tmp / "src"
    # sae-lens: a registry release's folder, written by sae-lens itself
    sae = sae_lens.SAE.from_dict(sae_lens.StandardSAEConfig(d_in=D, d_sae=48).to_dict())
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_pre"
    sae.save_model(src / "jb" / "blocks.0.hook_resid_pre")
    # Gemma Scope: params.npz (JumpReLU) at the release's path
    rng = np.random.default_rng(0)
    gs = src / "gs" / "layer_1" / "width_16k" / "average_l0_20"
    gs.mkdir(parents=True)
    np.savez(gs / "params.npz", W_enc=rng.normal(size=(D, 40)).astype(np.float32), b_enc=rng.normal(size=40).astype(np.float32),
             W_dec=rng.normal(size=(40, D)).astype(np.float32), b_dec=rng.normal(size=D).astype(np.float32),
             threshold=np.abs(rng.normal(size=40)).astype(np.float32))
    # sparsify: a checkpoint root, one folder per hookpoint
    for layer in (2, 3):
        hp = src / "sp" / f"layers.{layer}"
        hp.mkdir(parents=True)
        save_file({"encoder.weight": torch.randn(32, D, generator=g), "encoder.bias": torch.randn(32, generator=g),
                   "W_dec": torch.randn(32, D, generator=g), "b_dec": torch.randn(D, generator=g)}, str(hp / "sae.safetensors"))
        (hp / "cfg.json").write_text(json.dumps({"activation": "topk", "k": 4, "num_latents": 32, "d_in": D}))
    home = tmp / "hf"
    for repo_id, folder in zip(COMMITS, ("jb", "gs", "sp")):
        cache_repo(home / "hub", repo_id, src / folder, COMMITS[repo_id])
    return home, src


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    return {**env, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "HF_TOKEN": TOKEN}


TOKEN = "hf_sentinelTOKEN0123456789"  # a token in the environment must never reach a file or a message


SCRIPT = r"""
import contextlib, io, json, sys, torch
from safetensors.torch import save_file
from engine.core.errors import UserError, run_cli
from engine.harvest.dictionaries import load_dictionary
from engine.harvest.run import main
out, harvest_argv, names = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
x = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
res, acts = {"cli": []}, {"x": x}
for i, name in enumerate(names):  # resolve and encode
    try:
        d = load_dictionary(name)
    except UserError as e:
        res[name] = {"error": str(e)}
        continue
    acts[f"d{i}"] = d.encode_dense(x)
    res[name] = {"revision": d.revision, "hookpoint": d.hookpoint, "path": d.path, "kind": d.kind}
save_file(acts, out + ".safetensors")
for argv in harvest_argv:  # the CLI entry point itself: exit status and stderr
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            run_cli(main, argv)
            code = 0
        except SystemExit as e:
            code = e.code
    res["cli"].append([code, err.getvalue()])
open(out + ".json", "w").write(json.dumps(res))
"""

PINNED = f"hf:EleutherAI/sae-tiny-test@{COMMITS['EleutherAI/sae-tiny-test']}:layers.3"
UNKNOWN = ["sae-lens:gpt2-small-res-jbb/blocks.0.hook_resid_pre", "sae-lens:gpt2-small-res-jb/blocks.0.hook_resid_prex",
           "sae-lens:gpt2-small-res-jb/blocks.5.hook_resid_pre", "EleutherAI/not-cached:layers.1", "EleutherAI/sae-tiny-test:layers.7",
           "EleutherAI/sae-tiny-test", "gemma-scope:gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6"]
SMALL = ["--dataset", DEFAULT_DATASET, "--n-batches", "1", "--batch-size", "2", "--context-length", "32", "--top-k", "2",
         "--n-random", "2", "--window", "2", "--no-output-stats"]


@pytest.fixture(scope="module")
def resolved(hf_home, tmp_path_factory):
    """One offline process: resolve every name, then the harvest CLI by name, then two uncached CLI runs."""
    home, _ = hf_home
    tmp = tmp_path_factory.mktemp("resolved")
    runs = [[DEFAULT_MODEL, SAE_LENS, GEMMA, SPARSIFY, "--out", str(tmp / "run"), *SMALL],
            ["someone/uncached-model", "neurons:8", "--hookpoints", "layers.0", "--out", str(tmp / "x"), *SMALL],
            [DEFAULT_MODEL, "EleutherAI/not-cached:layers.1", "--out", str(tmp / "x"), *SMALL]]
    subprocess.run([sys.executable, "-c", SCRIPT, str(tmp / "r"), json.dumps(runs), SAE_LENS, GEMMA, SPARSIFY, PINNED, *UNKNOWN],
                   env=_env(home), cwd=ROOT, check=True, timeout=600)
    res = json.loads((tmp / "r.json").read_text())
    return res, load_file(str(tmp / "r.safetensors")), tmp / "run"


def test_named_dictionaries_encode_as_their_libraries(hf_home, resolved):
    _, src = hf_home
    meta, acts, _ = resolved
    x = acts["x"]
    with torch.no_grad():  # sae-lens: its own encode of the folder it wrote
        want = sae_lens.SAE.load_from_disk(str(src / "jb" / "blocks.0.hook_resid_pre")).encode(x)
    torch.testing.assert_close(acts["d0"], want, rtol=1e-5, atol=1e-5)
    z = np.load(src / "gs" / "layer_1" / "width_16k" / "average_l0_20" / "params.npz")  # Gemma Scope's JumpReLU
    pre = x.numpy() @ z["W_enc"] + z["b_enc"]
    np.testing.assert_allclose(acts["d1"].numpy(), np.maximum(pre * (pre > z["threshold"]), 0), rtol=1e-5, atol=1e-5)
    t = load_file(str(src / "sp" / "layers.2" / "sae.safetensors"))  # sparsify's TopK on x - b_dec
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    val, idx = pre.topk(4, dim=1)
    torch.testing.assert_close(acts["d2"], torch.zeros_like(pre).scatter(1, idx, val))
    assert [meta[n]["revision"] for n in (SAE_LENS, GEMMA, SPARSIFY)] == list(COMMITS.values())
    assert [meta[n]["hookpoint"] for n in (SAE_LENS, GEMMA, SPARSIFY)] == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "layers.2"]
    assert [meta[n]["kind"] for n in (SAE_LENS, GEMMA, SPARSIFY)] == ["sae_lens:standard", "gemma_scope:jumprelu", "sparsify:topk"]
    t = load_file(str(src / "sp" / "layers.3" / "sae.safetensors"))  # a pinned revision and the hf: prefix
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    val, idx = pre.topk(4, dim=1)
    torch.testing.assert_close(acts["d3"], torch.zeros_like(pre).scatter(1, idx, val))
    assert (meta[PINNED]["revision"], meta[PINNED]["hookpoint"]) == (COMMITS["EleutherAI/sae-tiny-test"], "layers.3")


@pytest.mark.parametrize("name, says", [
    (UNKNOWN[0], "'gpt2-small-res-jbb' is not a sae-lens release (closest releases: gpt2-small-res-jb"),
    (UNKNOWN[1], "has no SAE id 'blocks.0.hook_resid_prex' (closest ids: blocks.0.hook_resid_pre"),
    (UNKNOWN[2], "jbloom/GPT2-Small-SAEs-Reformatted/blocks.5.hook_resid_pre is not in the HF cache"),
    (UNKNOWN[3], "EleutherAI/not-cached (and there is no local folder of that name) is not in the HF cache"),
    (UNKNOWN[4], "EleutherAI/sae-tiny-test has no folder 'layers.7' (has layers.2, layers.3)"),
    (UNKNOWN[5], "the repo holds one dictionary per hookpoint (layers.2, layers.3) -- write EleutherAI/sae-tiny-test:HOOKPOINT"),
    (UNKNOWN[6], "write gemma-scope:RELEASE/layer_L/width_W/average_l0_N"),
])
def test_unknown_or_uncached_names_say_so_in_one_line(resolved, name, says):
    err = resolved[0][name]["error"]
    assert says in err and "\n" not in err and " -- " in err, err


def test_harvest_by_name_offline_records_revisions(resolved):
    res, _, run = resolved
    code, err = res["cli"][0]
    assert code == 0, err[-2000:]
    rc = msgspec.json.decode((run / "harvest" / "config.json").read_bytes(), type=RunConfig)
    assert [(h.name, h.dictionary, h.revision) for h in rc.hookpoints] == [
        ("blocks.0.hook_resid_pre", SAE_LENS, COMMITS["jbloom/GPT2-Small-SAEs-Reformatted"]),
        ("blocks.1.hook_resid_post", GEMMA, COMMITS["google/gemma-scope-2b-pt-res"]),
        ("layers.2", SPARSIFY, COMMITS["EleutherAI/sae-tiny-test"])]
    assert rc.n_latents == 48 + 40 + 32 and (run / "harvest" / "components.jsonl").stat().st_size > 0
    written = [p.read_bytes() for p in run.rglob("*") if p.is_file()]
    assert written and not any(TOKEN.encode() in b for b in written)
    assert not any(TOKEN in err for _, err in res["cli"]) and TOKEN not in json.dumps(res)


@pytest.mark.parametrize("i, what", [(1, "model someone/uncached-model"), (2, "dictionary EleutherAI/not-cached:layers.1")])
def test_cli_offline_and_not_cached_is_one_line_exit_2(resolved, i, what):
    code, err = resolved[0]["cli"][i]
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {what}") and "is not in the HF cache" in lines[0] and "HF_HUB_OFFLINE" in lines[0], err


def test_replay_and_merge_read_a_hub_repo_at_the_recorded_commit():
    """prepare.run_dictionaries loads each hub repo at config.json's revision: a repo that moved on since the
    harvest must not change what a replay or a merge computes."""
    from engine.harvest.dictionaries.hub import pinned

    c = COMMITS["EleutherAI/sae-tiny-test"]
    assert pinned(SPARSIFY, c) == f"EleutherAI/sae-tiny-test@{c}:layers.2"
    assert pinned("hf:EleutherAI/sae-tiny-test", c) == f"hf:EleutherAI/sae-tiny-test@{c}"
    assert pinned("EleutherAI/sae-tiny-test@v1:layers.2", c) == "EleutherAI/sae-tiny-test@v1:layers.2"  # its own pin
    local = str(ROOT / "engine" / "assets" / "default" / "sae")
    assert pinned(SAE_LENS, c) == SAE_LENS and pinned(GEMMA, c) == GEMMA and pinned(local, c) == local
    assert pinned(SPARSIFY, None) == SPARSIFY


MODEL_REPO, MODEL_COMMITS = "acme/tiny-lm", ("a" * 40, "b" * 40)

MOVED = r"""
import json, sys, torch
from pathlib import Path
from engine.core.errors import run_cli
from engine.harvest.replay import Replayer
from engine.harvest.run import main
out, step = Path(sys.argv[1]), sys.argv[2]
tail = ["--out", str(out), "--dataset", sys.argv[3], "--batch-size", "2", "--context-length", "16", "--top-k", "2",
        "--n-random", "2", "--window", "2", "--no-output-stats"]
res = {}
if step == "first":  # harvest 1 batch by name, keep the checkpoint
    run_cli(lambda argv: main(argv), ["acme/tiny-lm", "--n-batches", "1", "--final-checkpoint", *tail])
    res["first"] = json.loads((out / "harvest" / "config.json").read_text())["model_revision"]
else:  # the repo has moved on: resume to 2 batches, then replay
    run_cli(lambda argv: main(argv), ["acme/tiny-lm", "--n-batches", "2", "--resume", *tail])
    res["resumed"] = json.loads((out / "harvest" / "config.json").read_text())["model_revision"]
    r = Replayer.from_run(out)
    res["replay_weight"] = r.model.model.embed_tokens.weight[0, :4].tolist()
print(json.dumps(res))
"""


def test_a_hub_model_is_recorded_and_replayed_resumed_at_its_commit(tmp_path):
    """A model read by hub name: config.json and the checkpoint record the commit; after the repo moves on, a
    --resume continues on the checkpoint's weights and a replay loads the recorded ones, not the newest."""
    from safetensors.torch import load_file as load_st

    home, src = tmp_path / "hf", Path(DEFAULT_MODEL)
    cache_repo(home / "hub", MODEL_REPO, src, MODEL_COMMITS[0])
    env = _env(home)

    def run(first: bool) -> dict:
        p = subprocess.run([sys.executable, "-c", MOVED, str(tmp_path / "run"), "first" if first else "resume",
                            DEFAULT_DATASET], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        return json.loads(p.stdout.strip().splitlines()[-1])

    assert run(True)["first"] == MODEL_COMMITS[0]
    moved = tmp_path / "moved"  # the repo's next commit: other embedding weights
    moved.mkdir()
    for f in src.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    w = load_st(str(src / "model.safetensors"))
    key = next(k for k in w if k.endswith("embed_tokens.weight"))
    save_file({k: (v + 1.0 if k == key else v).contiguous() for k, v in w.items()}, str(moved / "model.safetensors"),
              metadata={"format": "pt"})
    cache_repo(home / "hub", MODEL_REPO, moved, MODEL_COMMITS[1])
    res = run(False)
    assert res["resumed"] == MODEL_COMMITS[0]
    assert res["replay_weight"] == pytest.approx(w[key][0, :4].tolist())
    rc = msgspec.json.decode((tmp_path / "run" / "harvest" / "config.json").read_bytes(), type=RunConfig)
    assert rc.model == MODEL_REPO and rc.model_revision == MODEL_COMMITS[0]
