#!/usr/bin/env bash
# The GPU check, for a fresh GPU machine with this repo checked out (`make gpu-check`), in under 8 minutes:
#
#   1. device        nvidia-smi -L, torch.cuda.get_device_name, torch / triton versions
#   2. install       only if a needed module does not import: pip install -e '.[test]' (+ triton if still
#                    missing); wheels in ./.whl (if any) are installed first, offline (--no-index --no-deps)
#   3. kernel tests  AUTOINTERP_KERNELS=triton pytest tests/kernels -q, compiled (TRITON_INTERPRET unset)
#   4. kernels       python -m bench.kernels --device cuda
#   5. scale         python -m bench.scale --preset llama-8b --latents 16384,65536,131072 (harvest / bare
#                    forward per latent count, statistics overhead over forward+encode, state GB vs goals)
#   6. results       rewrites only the "GPU run" section of bench/RESULTS.md (between <!-- gpu-run:begin -->
#                    and <!-- gpu-run:end -->, appended if absent) with the device, date, step results and tables;
#                    when no CUDA device was found, a copy in the logs folder instead
#
# Every step runs under `timeout` (its own cap, and never past the whole budget); a failing or timed-out step
# is reported and the script goes on. Logs go to GPU_CHECK_LOGS (default a temp folder) and, where $OUT is
# set (the device tool), the main ones are copied there with the rewritten RESULTS.md. Exit status 1 if any step
# failed or timed out, 0 otherwise.
#
#   GPU_CHECK_DRY=1       no GPU: skip the CUDA-only steps (install, compiled kernel tests, llama-8b), check that
#                         bench.kernels --device cuda refuses cleanly, run bench.scale --preset tiny as a stand-in,
#                         and write the section into a temp copy of RESULTS.md (never the real one)
#   GPU_CHECK_PYTHON      interpreter (default python3; .venv/bin/python in dry mode when present)
#   GPU_CHECK_RESULTS     the RESULTS.md to rewrite (default bench/RESULTS.md; dry: a temp copy)
#   GPU_CHECK_BUDGET_S    whole budget in seconds (default 465)
#   GPU_CHECK_SCALE_ARGS  extra bench.scale arguments (default: --batches 4 --hookpoints 1,2)
#   GPU_CHECK_T_<STEP>    per-step caps in seconds: DEVICE 40, INSTALL 100, TESTS 120, KERNELS 70, SCALE 140
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-465}
START=$(date +%s)
LOGS=${GPU_CHECK_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$LOGS"
: >"$LOGS/steps.tsv"
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then PY=$GPU_CHECK_PYTHON
elif [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python
elif command -v python3 >/dev/null 2>&1; then PY=python3
else PY=python; fi
if [ -n "${GPU_CHECK_RESULTS:-}" ]; then RESULTS=$GPU_CHECK_RESULTS
elif [ "$DRY" = 1 ]; then RESULTS=$LOGS/RESULTS.md; cp bench/RESULTS.md "$RESULTS" 2>/dev/null || : >"$RESULTS"
else RESULTS=$ROOT/bench/RESULTS.md; fi
SCALE_ARGS=${GPU_CHECK_SCALE_ARGS:---batches 4 --hookpoints 1,2}
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
FAILED=0

elapsed() { echo $(( $(date +%s) - START )); }

record() {  # name, status, seconds, log, command (one line of steps.tsv)
  local cmd=${5//$'\n'/ }
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${cmd//$'\t'/ }" >>"$LOGS/steps.tsv"
  printf '== %s: %s (%ss)\n' "$1" "$2" "$3"
}

# step NAME CAP LOG OKCODES -- CMD...   (OKCODES: exit codes that count as success, e.g. "0" or "0 2")
step() {
  local name=$1 cap=$2 log=$3 okcodes=$4; shift 5
  local left=$(( BUDGET - $(elapsed) ))
  local t=$(( cap < left ? cap : left ))
  if [ "$t" -lt 10 ]; then record "$name" "skipped: budget spent (${BUDGET}s)" 0 "$log" "$*"; FAILED=1; return; fi
  echo "== $name (timeout ${t}s): $*"
  local t0 rc; t0=$(date +%s)
  timeout -k 10 "$t" "$@" 2>&1 | tee "$LOGS/$log"
  rc=${PIPESTATUS[0]}
  local secs=$(( $(date +%s) - t0 )) status
  if [[ " $okcodes " == *" $rc "* ]]; then status=ok; [ "$rc" != 0 ] && status="ok (exit $rc, as expected)"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="TIMEOUT after ${t}s"; FAILED=1
  else status="FAILED (exit $rc)"; FAILED=1; fi
  record "$name" "$status" "$secs" "$log" "$*"
}

skip() { record "$1" "skipped: $2" 0 "" "$3"; }

# ---------------------------------------------------------------------------------------------- 1. device
echo "gpu check: python $PY, budget ${BUDGET}s, logs $LOGS, results $RESULTS$([ "$DRY" = 1 ] && echo ', DRY RUN')"
if [ "$DRY" = 1 ]; then skip "nvidia-smi" "dry run" "nvidia-smi -L"
else step "nvidia-smi" 20 nvidia-smi.log 0 -- nvidia-smi -L; fi
cat >"$LOGS/device.py" <<'PYEOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton missing:", type(e).__name__)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0),
          "memory %.0f GiB" % (torch.cuda.get_device_properties(0).total_memory / 2**30))
else:
    print("device none: torch.cuda.is_available() is False")
PYEOF
step "device" "${GPU_CHECK_T_DEVICE:-40}" device.log 0 -- "$PY" "$LOGS/device.py"

# ---------------------------------------------------------------------------------------------- 2. install
cat >"$LOGS/need.py" <<'PYEOF'
import importlib, sys
missing = []
for m in ("torch", "triton", "transformers", "safetensors", "msgspec", "aiohttp", "jinja2", "pytest", "hypothesis"):
    try:
        importlib.import_module(m)
    except Exception:
        missing.append(m)
import torch
if "torch" not in missing and not torch.cuda.is_available() and sys.argv[1] != "1":
    missing.append("torch-with-CUDA")
print(" ".join(missing))
PYEOF
if [ "$DRY" = 1 ]; then skip "install" "dry run" "pip install -e '.[test]'"
else
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    step "install (.whl, offline)" 60 install-whl.log 0 -- "$PY" -m pip install -q --no-index --no-deps --no-compile \
      --target "${TMPDIR:-/tmp}/gpu-check-site" .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:${TMPDIR:-/tmp}/gpu-check-site"
  fi
  MISSING=$("$PY" "$LOGS/need.py" 0 2>/dev/null || echo "torch")
  if [ -z "$MISSING" ]; then skip "install" "every needed module imports" "pip install -e '.[test]'"
  else
    echo "missing: $MISSING"
    step "install" "${GPU_CHECK_T_INSTALL:-100}" install.log 0 -- "$PY" -m pip install -q --disable-pip-version-check \
      --timeout 20 --retries 1 -e '.[test]'
    "$PY" -c "import triton" 2>/dev/null || step "install triton" 60 install-triton.log 0 -- "$PY" -m pip install -q \
      --disable-pip-version-check --timeout 20 --retries 1 triton
    MISSING=$("$PY" "$LOGS/need.py" 0 2>/dev/null || echo "torch")
    [ -n "$MISSING" ] && echo "still missing after install: $MISSING (no registry here? carry wheels in .whl)"
  fi
fi

# ---------------------------------------------------------------------------------------------- 3-5. checks
TIMEOUT_ARG=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT_ARG=(--timeout 90)
if [ "$DRY" = 1 ]; then
  step "kernel tests (dry: collect only)" 60 kernel-tests.log 0 -- "$PY" -m pytest tests/kernels -q -p no:cacheprovider --collect-only -qq
  step "bench.kernels --device cuda (dry: must refuse)" 60 kernels.log 2 -- "$PY" -m bench.kernels --device cuda
  step "bench.scale (dry: tiny stand-in)" 120 scale.log 0 -- "$PY" -m bench.scale --preset tiny --latents 256,512 --batches 1 --hookpoints 1
else
  step "kernel tests (CUDA, compiled)" "${GPU_CHECK_T_TESTS:-120}" kernel-tests.log 0 -- env -u TRITON_INTERPRET \
    AUTOINTERP_KERNELS=triton "$PY" -m pytest tests/kernels -q -p no:cacheprovider ${TIMEOUT_ARG[@]+"${TIMEOUT_ARG[@]}"}
  step "bench.kernels --device cuda" "${GPU_CHECK_T_KERNELS:-70}" kernels.log 0 -- env -u TRITON_INTERPRET \
    "$PY" -m bench.kernels --device cuda
  # shellcheck disable=SC2086  # SCALE_ARGS is a list of words
  step "bench.scale --preset llama-8b" "${GPU_CHECK_T_SCALE:-140}" scale.log 0 -- env -u TRITON_INTERPRET \
    "$PY" -m bench.scale --preset llama-8b --latents 16384,65536,131072 $SCALE_ARGS
fi

# ---------------------------------------------------------------------------------------------- 6. results
cat >"$LOGS/write_results.py" <<'PYEOF'
import datetime, os, platform, re, sys
from pathlib import Path

results, logs, dry, py = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
BEGIN, END = "<!-- gpu-run:begin -->", "<!-- gpu-run:end -->"

def read(name):
    p = logs / name
    return p.read_text(errors="replace") if name and p.is_file() else ""

steps = [line.split("\t") for line in read("steps.tsv").splitlines() if line.strip()]
dev = read("device.log")
m = re.search(r"^device (.+?) capability", dev, re.M)
device = m.group(1) if m else (f"no GPU, {platform.processor() or platform.machine()}" if dry else "no CUDA device found")
smi = " / ".join(re.sub(r" \(UUID: [^)]*\)", "", l) for l in read("nvidia-smi.log").splitlines() if l.startswith("GPU "))
versions = next((l for l in dev.splitlines() if l.startswith("python ")), "")
triton = next((l for l in dev.splitlines() if l.startswith("triton")), "")
stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
title = f"## GPU run ({device}, {stamp})" if not dry else f"## GPU run (DRY RUN, {device}, {stamp}: not GPU figures)"
facts = "; ".join(x for x in (versions, triton, f"`nvidia-smi -L`: {smi}" if smi else "") if x)
out = [BEGIN, title, "", "Command: `make gpu-check` (`bash bench/gpu_check.sh`)." + (f" {facts}." if facts else ""), "",
       "| step | result | seconds |", "|---|---|---|"]
out += [f"| {s[0]} | {s[1]} | {s[2]} |" for s in steps]
for s in steps:
    name, status, log, cmd = s[0], s[1], s[3], s[4]
    text = read(log)
    if not text or name in ("nvidia-smi", "device") or name.startswith("install"):
        continue
    lines = [l for l in text.splitlines() if l.strip() and not l.startswith("{")]  # tables, not the JSON line
    if "tests" in name or not status.startswith("ok"):
        lines = lines[-20:]  # pytest: its summary; a failed bench: the end of its output (progress lines too)
    else:
        lines = [l for l in lines if not l.startswith("[scale] ")]
    cmd = cmd.replace("env -u TRITON_INTERPRET ", "").replace(py + " ", "python ")
    out += ["", f"### {name}", "", f"`{cmd}`: {status}", "", "```", *lines, "```"]
section = "\n".join(out + [END]) + "\n"
text = results.read_text() if results.exists() else "# Benchmark results\n"
if BEGIN in text and END in text:
    head, rest = text.split(BEGIN, 1)
    text = head + section + rest.split(END, 1)[1].lstrip("\n")
else:
    text = text.rstrip("\n") + "\n\n" + section
results.write_text(text)
print(f"wrote the GPU run section of {results} ({len(section.splitlines())} lines)")
PYEOF
if [ "$DRY" != 1 ] && [ -z "${GPU_CHECK_RESULTS:-}" ] && ! grep -q '^device .* capability' "$LOGS/device.log" 2>/dev/null; then
  RESULTS=$LOGS/RESULTS.md; cp bench/RESULTS.md "$RESULTS" 2>/dev/null || : >"$RESULTS"
  echo "no CUDA device was found: bench/RESULTS.md is left alone, the section goes to $RESULTS"
fi
"$PY" "$LOGS/write_results.py" "$RESULTS" "$LOGS" "$DRY" "$PY" || { echo "== results: FAILED to write $RESULTS"; FAILED=1; }
for f in "$LOGS"/*.log; do [ "$f" = "$LOGS/all.log" ] || { echo "===== $(basename "$f")"; cat "$f"; }; done >"$LOGS/all.log" 2>/dev/null
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then  # the device tool brings back at most 8 files
  for f in RESULTS.md; do cp "$RESULTS" "$OUT/$f"; done 2>/dev/null
  for f in steps.tsv all.log kernel-tests.log kernels.log scale.log; do [ -f "$LOGS/$f" ] && cp "$LOGS/$f" "$OUT/"; done
fi

echo
echo "gpu check summary ($(elapsed)s of ${BUDGET}s):"
awk -F '\t' '{ printf "  %-48s %-36s %5ss\n", $1, $2, $3 }' "$LOGS/steps.tsv"
echo "section written to $RESULTS; logs in $LOGS"
exit "$FAILED"
