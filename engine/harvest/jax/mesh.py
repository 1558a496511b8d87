"""Data parallel over a jax.sharding.Mesh: one jitted step (forward, encode, state update) per batch.

The batch is sharded over the mesh axis "data" (B / n_devices sequences per device); parameters
are replicated; every device keeps its own state (the state arrays carry a leading device axis,
sharded the same way), updated inside `shard_map` with no communication in the loop. Each device
encodes its own b S tokens, so its rows and its spill (spill_slots(b S, P, L) slots, see
engine.harvest.jax.encode) are local, as each torchrun rank's are. At the end (and at checkpoints)
the per-device states come to the host and are folded by the torch state's exact merge
(`HarvestState.merge`, via engine.harvest.jax.convert.merged): sums add, top-K and reservoir
samples merge by (score, location), so the result equals a one-device run (unless a device's spill
overflows: `overflow` then counts what it dropped; sketch tables keep their Misra-Gries guarantee,
as torchrun ranks do). On a TPU host or slice the mesh holds every chip; on CPU
`XLA_FLAGS=--xla_force_host_platform_device_count=N` makes N devices.
"""

from __future__ import annotations

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from engine.core.errors import UserError
from engine.harvest.jax.convert import from_torch, merged
from engine.harvest.jax.encode import encode_all
from engine.harvest.jax.forward import forward
from engine.harvest.jax.state import init_state, next_token_stats, update
from engine.harvest.state import HarvestState, StateConfig

# Matmuls of the step are traced at this precision. JAX's default lets TPUs (bfloat16 passes) and GPUs (TF32)
# round float32 operands, which the torch path (TF32 off) never does; "highest" multiplies float32 in float32
# and costs bfloat16 operands nothing. A run that wants the fast passes asks with --dtype bfloat16.
MATMUL_PRECISION = "highest"


def pick_devices(name: str, n: int = 0) -> list:
    """--device for the JAX backend: auto (the default backend's devices: every TPU chip), cpu, tpu, gpu;
    `n` > 0 keeps the first n."""
    kind = None if name == "auto" else {"cuda": "gpu"}.get(name.split(":")[0], name.split(":")[0])
    try:
        devs = jax.devices(kind)
    except RuntimeError:
        raise UserError(f"--device {name}: JAX has no such device here (have {jax.devices()[0].platform}) -- use --device auto") from None
    return devs[:n] if n else devs


def _local_step(params, inv_freq, dps, state, ids, seq_ids, valid, *, spec, rope_scale, points, sites, statics,
                offsets, cfg, need_logits):
    """One device's shard: ids [b, S] -> the updated state (leading device axis of size 1)."""
    state = jax.tree.map(lambda x: x[0], state)
    b, S = ids.shape
    acts, logits = forward(params, (inv_freq, rope_scale), ids, spec, points, need_logits)
    xs = [acts[pt].reshape(b * S, -1) for pt in sites]
    idx, val, over, spill = encode_all(dps, xs, statics, offsets)  # this shard's rows and spill
    top = mass = None
    if need_logits:
        top, mass = next_token_stats(logits.reshape(b * S, -1), valid, cfg.output_top, cfg.vocab_size)
    state = update(state, ids, idx, val, over, seq_ids, valid, top, mass, cfg, spill=spill)
    return jax.tree.map(lambda x: x[None], state)


@lru_cache(maxsize=8)
def _compiled_step(devices: tuple, spec, rope_scale: float, sites: tuple, statics: tuple, offsets: tuple,
                   cfg: StateConfig, need_logits: bool):
    """The jitted, sharded step for one configuration (cached: a second harvest in the process, e.g. a
    resume, reuses the compiled program)."""
    mesh = Mesh(np.array(devices), ("data",))
    local = partial(_local_step, spec=spec, rope_scale=rope_scale, points=tuple(sorted(set(sites))), sites=sites,
                    statics=statics, offsets=offsets, cfg=cfg, need_logits=need_logits)

    def fn(*args):
        with jax.default_matmul_precision(MATMUL_PRECISION):  # read while the step is traced
            return local(*args)

    sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), P(), P("data"), P("data"), P("data"), P("data")),
                            out_specs=P("data"), check_vma=False)
    return jax.jit(sharded, donate_argnums=(3,))


class MeshHarvest:
    """The sharded harvest step and its per-device states.

    params/inv_freq: the forward's (engine.harvest.jax.weights); sites: the capture point of each
    dictionary's hookpoint; dps/statics/offsets: engine.harvest.jax.encode's per-dictionary parts."""

    def __init__(self, devices: list, params: dict, rope: tuple, spec, sites: list, dps: list, statics: tuple,
                 offsets: tuple, cfg: StateConfig, need_logits: bool):
        self.mesh = Mesh(np.array(devices), ("data",))
        self.n, self.cfg = len(devices), cfg
        rep, self._dat = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P("data"))
        self.params, self.inv_freq, self.dps = jax.device_put((params, jnp.asarray(rope[0]), dps), rep)
        self.rope_scale, self._step_spec = float(rope[1]), (spec, tuple(sorted(set(sites))))  # for bench.harvest_jax
        self._step = _compiled_step(tuple(devices), spec, float(rope[1]), tuple(sites), statics, offsets, cfg, need_logits)
        self.state = self.place([])

    def place(self, states: list[dict]) -> dict:
        """Host states for the first devices (the rest start empty) -> the sharded device state."""
        empty = jax.device_get(init_state(self.cfg))
        full = list(states) + [empty] * (self.n - len(states))
        return jax.device_put({k: np.stack([s[k] for s in full]) for k in empty}, self._dat)

    def load(self, hs: HarvestState) -> None:
        """Resume: a (merged) checkpoint goes to device 0; merging it with the others' later work is exact."""
        self.state = self.place([from_torch(hs)])

    def step(self, ids: np.ndarray, seq_ids: np.ndarray, valid: np.ndarray) -> dict:
        """ids [B, S], seq_ids [B], valid [B, S] (B a multiple of the device count) -> the next state.
        The current state is donated: assign the result to `self.state`."""
        put = lambda x: jax.device_put(x, self._dat)
        return self._step(self.params, self.inv_freq, self.dps, self.state, put(ids), put(seq_ids), put(valid))

    def per_device(self) -> list[dict]:
        host = jax.device_get(self.state)
        return [{k: v[i] for k, v in host.items()} for i in range(self.n)]

    def merged(self) -> HarvestState:
        return merged(self.per_device(), self.cfg)
