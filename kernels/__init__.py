"""Hot-path ops of the harvest, one per file: Triton kernel, launcher, torch reference.

Each op `<op>` dispatches through `kernels.dispatch.use_triton`; `<op>_torch` is
the reference (the CPU path, the test oracle and the bench baseline) and
`<op>_triton` the launcher. Import the ops from their modules, e.g.
`from kernels.encode_pack import encode_pack, sort_firings`.
"""
