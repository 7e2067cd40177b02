"""The inpainting benchmark runs end to end on the tiny config: every figure is a finite
positive rate, and its batching guard (fp32 batch tokens == batch-1 tokens) holds."""
import math

from benchmarks import bench_inpaint


def test_inpaint_benchmark_smoke():
    rows = bench_inpaint.run("cpu", "tiny", quick=True, batch=3, total_iter=3, peak_size=256)
    assert [r.name.split(" (")[0] for r in rows] == [
        "matmul peak fp32", "matmul peak bf16", "matmul peak bf16",
        "inpaint from tokens, fp32, batch 3", "inpaint from tokens, bf16, batch 3",
        "inpaint end to end, bf16, batch 3", "transformer fwd bf16 fused, batch 3",
        "transformer fwd bf16 hand-written, batch 3", "transformer fwd baseline"]
    for r in rows:
        assert math.isfinite(r.ours) and r.ours > 0, r
        assert r.baseline is None or (math.isfinite(r.baseline) and r.baseline > 0), r
    inpaint = [r for r in rows if r.name.startswith("inpaint")]
    assert [r.unit for r in inpaint] == ["images/s"] * 3 and all(r.ratio for r in inpaint)
    assert "tokens == batch-1 tokens: True" in inpaint[0].note
