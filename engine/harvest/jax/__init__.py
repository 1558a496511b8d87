"""The JAX backend of the harvest (`python -m engine.harvest ... --backend jax`), for TPUs and any XLA device.

  forward.py   the decoder forward (Llama / Mistral / Qwen2 / Gemma / Gemma-2) from HF safetensors
  weights.py   HF config + safetensors -> a ModelSpec and a parameter pytree; hookpoints -> capture points
  encode.py    dictionary encodes -> per-token firing rows
  pairs.py     dense / Misra-Gries pair tables
  state.py     the accumulator (every statistic of engine.harvest.state)
  convert.py   JAX state <-> torch HarvestState (checkpoints, merge, results)
  mesh.py      data parallel over a jax.sharding.Mesh
  run.py       the harvest loop behind the CLI

Importing it turns on jax_enable_x64 (int64 locations, float64 sums); the torch path never imports it.
"""

try:
    import jax
except ImportError as e:  # pragma: no cover - exercised by the skips in tests
    raise ImportError("the JAX backend needs jax: pip install 'autointerp-engine[jax]'") from e

jax.config.update("jax_enable_x64", True)
