"""benchmarks/bench_gpu.py --quick: the one-call GPU benchmark runs its whole path on a CPU (issue 16)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_gpu_quick_fills_every_figure(demo_data, tmp_path):
    out = tmp_path / "bench_gpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--quick", "--data", str(demo_data),
                           "--out", str(out), "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [(e["batch"], e["precision"], e["compiled"]) for e in r["image"]] == [
        (4, "fp32", False), (4, "bf16", False), (8, "fp32", False), (8, "bf16", False)]
    for e in r["image"]:
        for kind in ("bare", "kit"):
            assert e[kind]["train"] > 0 and e[kind]["infer"] > 0
    assert r["audio"]["train"] > 0 and r["audio"]["infer"] > 0 and r["audio"]["infer_windows"] == 64 * 3
    assert r["fusion"]["frames"] >= 1990 and r["fusion"]["epoch_s"] > 0 and r["fusion"]["infer"] > 0
    assert "kit/bare" in done.stdout and "bench_gpu on cpu" in done.stdout
