"""The inpainting benchmark runs end to end on the tiny config: every figure is a finite
positive rate named with its precision, and its batching guard (fp32 batch tokens ==
batch-1 tokens) holds. RESULTS.md keeps one section per kind of machine."""
import math

import pytest
import torch

from benchmarks import bench_inpaint
from benchmarks.run_all import merge_section, section_markers
from runtime.precision import choose_precision

OWN = choose_precision("auto", torch.device("cpu"))[0]
ROWS = {
    "bf16": ["matmul peak fp32", "matmul peak bf16", "matmul peak bf16",
             "inpaint from tokens, fp32, batch 3", "inpaint from tokens, bf16, batch 3",
             "inpaint end to end, bf16, batch 3", "transformer fwd bf16 fused, batch 3",
             "transformer fwd bf16 hand-written, batch 3", "transformer fwd baseline"],
    "fp32": ["matmul peak fp32", "inpaint from tokens, fp32, batch 3",
             "inpaint end to end, fp32, batch 3", "inpaint end to end, int8 linears, batch 3",
             "transformer fwd fp32 fused, batch 3", "transformer fwd fp32 hand-written, batch 3",
             "transformer fwd baseline"],
}


# this machine's own policy, and fp32 (what a CPU without native bf16, e.g. AVX2, runs)
@pytest.mark.parametrize("precision", sorted({OWN, "fp32"}))
def test_inpaint_benchmark_smoke(monkeypatch, precision):
    monkeypatch.setattr(bench_inpaint, "resolve_precision", lambda *args: precision)
    rows = bench_inpaint.run("cpu", "tiny", quick=True, batch=3, total_iter=3, peak_size=256)
    assert [r.name.split(" (")[0] for r in rows] == ROWS[precision]
    for r in rows:
        assert math.isfinite(r.ours) and r.ours > 0, r
        assert r.baseline is None or (math.isfinite(r.baseline) and r.baseline > 0), r
        assert r.precision in ("fp32", "bf16", "int8+fp32"), r
    inpaint = [r for r in rows if r.name.startswith("inpaint")]
    assert all(r.unit == "images/s" and r.ratio for r in inpaint)
    assert "tokens == batch-1 tokens: True" in inpaint[0].note


def test_results_keep_one_section_per_kind():
    text = "# Benchmark results\n\nintro\n"
    amx = merge_section(text, "AMX, native bf16", "## AMX\ntable 1")
    both = merge_section(amx + "\nhand-written notes\n", "AVX2, no native bf16", "## AVX2\ntable 2")
    again = merge_section(both, "AMX, native bf16", "## AMX\ntable 3")
    assert again.startswith("# Benchmark results\n")
    for kind, table in [("AMX, native bf16", "table 3"), ("AVX2, no native bf16", "table 2")]:
        start, end = section_markers(kind)
        assert again.count(start) == again.count(end) == 1
        assert table in again.split(start)[1].split(end)[0]
    assert "table 1" not in again and "intro" in again and "hand-written notes" in again


def test_attention_training_rows_name_the_policy_pick():
    from benchmarks.bench_train import attention_rows
    from runtime.precision import fused_attention
    rows = attention_rows("cpu", quick=True, shapes=(("small", 32, 4, 2),))
    precisions = sorted({OWN, "fp32"})
    assert [(r.precision, r.name) for r in rows] == [
        (p, f"attention fwd+bwd, small, dropout {d}, batch 2") for p in precisions for d in (0.0, 0.1)]
    for r in rows:
        assert r.unit == "ms" and not r.higher and r.ours > 0 and r.baseline > 0
        pick = fused_attention(torch.device("cpu"), r.precision, True, float(r.name.split("dropout ")[1][:3]))
        assert r.note.startswith(f"the policy's {'fused' if pick else 'hand-written'} kernel")


def test_train_benchmark_smoke():
    """Both variants (the lab-style step and ours) run one training step in their own
    processes on the tiny config and report a finite rate and peak memory."""
    from benchmarks.bench_train import run
    rows = run("cpu", "tiny", quick=True, batch=2)
    assert [r.name for r in rows] == ["train fwd+bwd+step, batch 2", "train peak memory"]
    for r in rows:
        assert math.isfinite(r.ours) and r.ours > 0 and math.isfinite(r.baseline) and r.baseline > 0, r
        assert r.precision == OWN


def test_lab_style_train_step_learns():
    """The baseline's step (full logits, loss on the masked tokens) lowers its loss on a
    fixed batch: it trains, so its timing is of real work."""
    from benchmarks.common import build_maskgit, generated_images, lab_path
    from benchmarks.lab_baseline import train_step_lab_style
    from data import normalization, normalize
    model = build_maskgit("cpu", "tiny")
    lab_path(model)
    mean, std = normalization(model.vq_config, "train")
    images = normalize(generated_images(4, model.vq_config["img_resolution"]).float() / 255, mean, std)
    opt = torch.optim.Adam(model.transformer.parameters(), lr=3e-3)
    torch.manual_seed(0)
    losses = [train_step_lab_style(model, images, opt) for _ in range(30)]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses


def test_token_cache_benchmark_smoke():
    """The cache benchmark builds, reads and trains from its cache on the tiny config."""
    from benchmarks.bench_token_cache import run
    from benchmarks.common import maskgit_config
    rows = run("cpu", "tiny", n_images=16, batch=8)
    assert [r.name for r in rows] == ["stage-2 epoch, 16 images (tiny)", "token cache build (once per checkpoint)",
                                      "token cache read (once per run)"]
    assert all(math.isfinite(r.ours) and r.ours > 0 for r in rows), rows
    tiny = maskgit_config("tiny")["train_param"]["precision"]
    assert rows[0].baseline > 0 and rows[0].precision == choose_precision(tiny, torch.device("cpu"))[0]
