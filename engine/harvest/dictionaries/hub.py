"""Dictionaries by name, resolved with `huggingface_hub` into its cache and loaded like local folders.

  sae-lens:RELEASE/SAE_ID          sae-lens's pretrained registry (`SAE.from_pretrained`), e.g.
                                   sae-lens:gpt2-small-res-jb/blocks.8.hook_resid_pre
  gemma-scope:RELEASE/SAE_ID       Gemma Scope `params.npz` by release (a sae-lens release name or the
                                   hub repo) and `layer_L/width_W/average_l0_N`; the hookpoint follows
                                   from the release (res -> blocks.L.hook_resid_post, mlp -> blocks.L.hook_mlp_out,
                                   att -> layers.L.self_attn.o_proj@in), e.g.
                                   gemma-scope:gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82
  OWNER/REPO[@REV][:HOOKPOINT]     a hub repo holding sparsify (one sub-folder per hookpoint), sae-lens or
  hf:OWNER/REPO[@REV][:HOOKPOINT]  params.npz files; only the hookpoint's folder is fetched, e.g.
                                   EleutherAI/sae-llama-3-8b-32x:layers.16

Files come from and go to the HF cache (`HF_HOME`/`HF_HUB_CACHE`); `HF_HUB_OFFLINE=1` reads only the cache;
tokens come from the environment (`HF_TOKEN`) through huggingface_hub and are never passed, stored or shown
here. The commit the files were read at is `Dictionary.revision` (recorded in config.json). Every failure
is one line: an unknown release or SAE id (with the closest names), a repo that is not on the hub, or a name
that is not cached while offline.
"""

from __future__ import annotations

import difflib
import re
from contextlib import contextmanager
from pathlib import Path

from engine.core.errors import UserError
from engine.harvest.dictionaries.base import Dictionary

SAE_LENS, GEMMA_SCOPE, HF = "sae-lens:", "gemma-scope:", "hf:"
_REPO = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<rev>[\w.-]+))?(?::(?P<hook>[^:]+))?")
_SMALL = ["*.json", "*.yaml", "*.yml", "*.md"]  # what a repo says about itself, before any weights
_ROOT_WEIGHTS = ["sae.safetensors", "sae_weights.safetensors", "params.npz", "model_*.pth"]  # a dictionary at the root


def is_named(name: str) -> bool:
    """Whether `name` is a hub name (prefixed, or OWNER/REPO that is not a local path)."""
    if name.startswith((SAE_LENS, GEMMA_SCOPE, HF)):
        return True
    return not Path(name).exists() and not name.startswith((".", "/", "~")) and _REPO.fullmatch(name) is not None


def pinned(name: str, revision: str | None) -> str:
    """`name` at the commit a run read it at (config.json's `revision`): OWNER/REPO[:HOOK] becomes
    OWNER/REPO@REV[:HOOK]; names with their own @REV, registry names (sae-lens:, gemma-scope:) and local paths
    stay as they are."""
    if not revision or not is_named(name) or name.startswith((SAE_LENS, GEMMA_SCOPE)):
        return name
    prefix = HF if name.startswith(HF) else ""
    m = _REPO.fullmatch(name[len(prefix):])
    if m is None or m.group("rev"):
        return name
    return f"{prefix}{m.group('repo')}@{revision}" + (f":{m.group('hook')}" if m.group("hook") else "")


def load_named(name: str, hookpoint: str | None, load_local) -> Dictionary:
    """Resolve a hub name; `load_local(path, hookpoint)` loads the fetched folder (the local-folder loader)."""
    if name.startswith(SAE_LENS):
        return _sae_lens(name)
    if name.startswith(GEMMA_SCOPE):
        return _gemma_scope(name, load_local)
    return _repo(name, hookpoint, load_local)


@contextmanager
def _hub_errors(name: str, what: str):
    """huggingface_hub's failures -> one line naming the dictionary and the fix (never a token or header)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        if constants.is_offline_mode():
            raise UserError(f"dictionary {name}: {what} is not in the HF cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE "
                            "is set -- fetch it once with network access, or point HF_HOME at a cache that has it") from None
        raise UserError(f"dictionary {name}: {what} could not be fetched ({type(e).__name__}) -- check the network, or set "
                        "HF_HUB_OFFLINE=1 to use the cache") from None
    except GatedRepoError:
        raise UserError(f"dictionary {name}: {what} is gated -- accept its terms on the hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise UserError(f"dictionary {name}: the hub has no repo {what} (or it is private) -- check the path or name, "
                        "or set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise UserError(f"dictionary {name}: {what} has no such revision -- check the @REV part") from None
    except EntryNotFoundError:
        raise UserError(f"dictionary {name}: {what} is not in the repo -- check the SAE id or hookpoint") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        raise UserError(f"dictionary {name}: the hub answered HTTP {status} for {what} -- retry, or set HF_HUB_OFFLINE=1 "
                        "to use the cache") from None
    except OSError as e:  # connection failures surface as OSError subclasses
        raise UserError(f"dictionary {name}: {what} could not be fetched ({type(e).__name__}) -- check the network, or set "
                        "HF_HUB_OFFLINE=1 to use the cache") from None


def snapshot_commit(path: str | Path) -> str | None:
    """The commit of a file or folder inside the HF cache (.../snapshots/<commit>/...)."""
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def _closest(word: str, options, what: str) -> str:
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.5)
    return f"closest {what}: {', '.join(close)}" if close else f"{len(options)} {what} known"


def _registry_entry(name: str, body: str):
    """RELEASE/SAE_ID -> (release, sae_id, registry entry), checked against sae-lens's pretrained_saes.yaml."""
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        raise UserError(f"dictionary {name}: sae-lens is not installed -- pip install sae-lens to use its pretrained registry") from None
    directory = get_pretrained_saes_directory()
    release, _, sae_id = body.partition("/")
    if release not in directory:
        raise UserError(f"dictionary {name}: {release!r} is not a sae-lens release ({_closest(release, directory, 'releases')}) "
                        "-- write sae-lens:RELEASE/SAE_ID with a release from sae-lens's pretrained_saes.yaml")
    entry = directory[release]
    if sae_id not in entry.saes_map:
        raise UserError(f"dictionary {name}: release {release} has no SAE id {sae_id!r} "
                        f"({_closest(sae_id, entry.saes_map, 'ids')}) -- write sae-lens:{release}/SAE_ID")
    return release, sae_id, entry


def _cached_commit(repo_id: str) -> str | None:
    """The commit `main` points at in the HF cache, after a download (huggingface_hub's refs/ layout)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / "main"
    return ref.read_text().strip() if ref.exists() else None


def _sae_lens(name: str) -> Dictionary:
    from engine.harvest.dictionaries.sae_lens import sae_lens_dictionary

    release, sae_id, entry = _registry_entry(name, name[len(SAE_LENS):])
    from sae_lens import SAE

    with _hub_errors(name, f"{entry.repo_id}/{entry.saes_map[sae_id]}"):
        try:
            sae = SAE.from_pretrained(release, sae_id, device="cpu")
        except (ValueError, KeyError, NotImplementedError) as e:
            raise UserError(f"dictionary {name}: sae-lens could not load it ({type(e).__name__}: {' '.join(str(e).split())[:150]}) "
                            "-- check the release and SAE id") from None
    state = sae.state_dict()
    sae.process_state_dict_for_saving(state)  # exactly what SAE.save_model writes
    d = sae_lens_dictionary(sae.cfg.to_dict(), state, Path(name))
    d.path, d.revision = name, _cached_commit(entry.repo_id)
    return d


_GS_SITE = {"res": "blocks.{L}.hook_resid_post", "mlp": "blocks.{L}.hook_mlp_out", "att": "layers.{L}.self_attn.o_proj@in"}


def _gemma_scope(name: str, load_local) -> Dictionary:
    from huggingface_hub import hf_hub_download

    body = name[len(GEMMA_SCOPE):]
    m = re.fullmatch(r"(?P<release>(?:[\w.-]+/)?gemma-scope-[\w.-]+?)/(?P<id>layer_(?P<L>\d+)/width_\w+/[\w.-]+)", body)
    if not m:
        raise UserError(f"dictionary {name}: not a Gemma Scope layer SAE name -- write gemma-scope:RELEASE/layer_L/width_W/average_l0_N, "
                        "e.g. gemma-scope:gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82 (other files: give the params.npz path)")
    release, sae_id = m.group("release"), m.group("id")
    if "/" in release:
        repo_id, folder = release, sae_id
    else:
        _, _, entry = _registry_entry(name, f"{release}/{sae_id}")
        repo_id, folder = entry.repo_id, entry.saes_map[sae_id]
    with _hub_errors(name, f"{repo_id}/{folder}/params.npz"):
        path = hf_hub_download(repo_id, f"{folder}/params.npz")
    d = load_local(path, None)
    kind = next((k for k in _GS_SITE if re.search(rf"-{k}(-|$)", repo_id)), None)
    d.hookpoint = _GS_SITE[kind].format(L=m.group("L")) if kind else None
    d.path, d.revision = name, snapshot_commit(path)
    return d


def _repo(name: str, hookpoint: str | None, load_local) -> Dictionary:
    from huggingface_hub import snapshot_download

    m = _REPO.fullmatch(name.removeprefix(HF))
    if not m:
        raise UserError(f"dictionary {name}: not a hub repo name -- write OWNER/REPO[@REVISION][:HOOKPOINT], "
                        "e.g. EleutherAI/sae-llama-3-8b-32x:layers.16")
    repo_id, rev, hook = m.group("repo"), m.group("rev"), m.group("hook") or hookpoint
    fetch = lambda patterns: Path(snapshot_download(repo_id, revision=rev, allow_patterns=_SMALL + patterns))
    what = repo_id + (f"@{rev}" if rev else "") + ("" if name.startswith(HF) else " (and there is no local folder of that name)")
    with _hub_errors(name, what):
        root = fetch([f"{hook}/*"] if hook else [])  # sparsify checkpoints: one sub-folder per hookpoint, only that one
        subs = sorted(q.name for q in root.iterdir() if q.is_dir() and not q.name.startswith("."))
        if not (hook and (root / hook).is_dir()) and ((root / "cfg.json").exists() or not (subs or m.group("hook"))):
            root, hook = fetch(_ROOT_WEIGHTS), None  # one dictionary at the repo's root
    if hook and not (root / hook).is_dir():
        more = ", ..." if len(subs) > 5 else ""
        raise UserError(f"dictionary {name}: {repo_id} has no folder {hook!r} (has {', '.join(subs[:5]) or 'none'}{more}) "
                        "-- pick one of its hookpoints")
    if not hook and subs and not (root / "cfg.json").exists():
        raise UserError(f"dictionary {name}: the repo holds one dictionary per hookpoint ({', '.join(subs[:5])}"
                        f"{', ...' if len(subs) > 5 else ''}) -- write {repo_id}:HOOKPOINT or pass --hookpoints")
    d = load_local(str(root), hook)
    d.path, d.revision = name, snapshot_commit(root)
    return d
