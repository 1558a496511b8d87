"""bench/gpu_check.sh parses, and its dry run (no GPU) writes only the "GPU run" section of a RESULTS.md copy."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
BEGIN, END = "<!-- gpu-run:begin -->", "<!-- gpu-run:end -->"


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_dry_run_rewrites_only_its_section(tmp_path):
    real = (ROOT / "bench" / "RESULTS.md").read_bytes()
    head, tail = "# Results\n\nintro\n\n", "\n## Later section\n\nkept as it is\n"
    copy = tmp_path / "RESULTS.md"
    copy.write_text(head + f"{BEGIN}\n## GPU run (old)\n\nold figures\n{END}\n" + tail)
    env = dict(os.environ, GPU_CHECK_DRY="1", GPU_CHECK_RESULTS=str(copy), GPU_CHECK_LOGS=str(tmp_path / "logs"),
               GPU_CHECK_PYTHON=sys.executable)
    env.pop("OUT", None)
    r = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    text = copy.read_text()
    assert text.startswith(head) and text.endswith(tail)
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and "old figures" not in text
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert "## GPU run (DRY RUN" in section
    assert "| bench.kernels --device cuda (dry: must refuse) | ok (exit 2, as expected) |" in section
    assert "CUDA is not available" in section
    assert "per latent count" in section and "harvest / forward" in section  # the scale stand-in's tables
    assert "gpu check summary" in r.stdout
    assert (ROOT / "bench" / "RESULTS.md").read_bytes() == real  # the real file is never touched by a dry run
