"""Every candidate fast path for fp32 CPU inference (what CPUs without native bf16, such as
AVX2 ones, run), each timed against the plain fp32 path in the same run, with its exactness.

    python benchmarks/bench_fast_paths.py [--quick] [--batch 16] [--config tiny] [--no-compile]

Transformer forward on B masked images' tokens, logits at the masked positions (as decoding
calls it), against the plain path: the hand-written attention, nn.Linear (MKL's sgemm):
  SDPA           F.scaled_dot_product_attention: the same function, another kernel
  packed fp32    oneDNN-packed fp32 weights (torch.ops.mkldnn._reorder_linear_weight and
                 _linear_pointwise, the mechanism packed.py uses for bf16)
  compiled       torch.compile of every block but the last (whose rows follow the mask);
                 its compile time is a row of its own
  int8           dynamic int8 linears (models/Transformer/int8.py): approximate
VQGAN encode and decode of B images, against NCHW:
  channels_last  NHWC weights and activations
  compiled       torch.compile of the decoder
Each row gives wall seconds (ours = the option, baseline = the plain path) and, in the
note, the same ratio in this process's CPU seconds, which a shared machine disturbs less.
Exact options are checked end to end: MaskGit.complete with the option gives the same
tokens on a batch as the plain path gives one image at a time. The policy
(runtime/precision.py) turns on those measured faster on AVX2; inpainting.py runs them.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (Row, add_common_args, build_maskgit, interleaved_wall_cpu,  # noqa: E402
                               masked_batch, table)
from inpainting import image_generators  # noqa: E402
from models.Transformer.attention import set_fused  # noqa: E402
from models.Transformer.int8 import quantize_linears  # noqa: E402
from models.Transformer.packed import Linear, unpacked  # noqa: E402
from runtime.precision import resolve_device  # noqa: E402


@contextlib.contextmanager
def packed_fp32(module, rows: int):
    """Every `Linear` of `module` multiplies by an oneDNN-packed fp32 weight inside."""
    linears = [m for m in module.modules() if isinstance(m, Linear)]
    for m in linears:
        m.packed = (torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), rows), m.bias)
    try:
        yield
    finally:
        for m in linears:
            m.packed = None


def compile_blocks(transformer):
    """A copy of `transformer` whose blocks but the last run torch.compile'd."""
    compiled = copy.deepcopy(transformer)
    head, last = compiled.blocks[:-1], compiled.blocks[-1]
    compiled.blocks = torch.nn.Sequential(*[torch.compile(b) for b in head], last)
    return compiled


def transformer_options(model, tokens, compile_: bool) -> dict:
    """name -> (context factory, transformer) of every option; 'plain' first. Every option
    but the packed one runs `unpacked`, whatever the policy packs on this machine."""
    tr = model.transformer
    sdpa = copy.deepcopy(tr)
    set_fused(sdpa, True)
    options = {"plain": (unpacked, tr), "SDPA": (unpacked, sdpa),
               "packed fp32": (lambda: packed_fp32(tr, tokens.numel()), tr)}
    if compile_:
        options["compiled"] = (unpacked, compile_blocks(tr))
    options["int8"] = (contextlib.nullcontext, quantize_linears(copy.deepcopy(tr)))
    return options


def one_at_a_time(model, tokens, steps: int, n: int) -> torch.Tensor:
    """The plain path's tokens (n, N) of complete() on the first n images, each alone."""
    with unpacked():
        return torch.cat([model.complete(tokens[i:i + 1], steps, image_generators([i], 0, tokens.device))[1]
                          for i in range(n)])


def batch_tokens(model, tokens, transformer, context, steps: int, n: int) -> torch.Tensor:
    """The tokens (n, N) of complete() on the first n images as one batch, decoded by
    `transformer` under `context`."""
    saved = model.transformer
    try:
        model.transformer = transformer
        with context():
            return model.complete(tokens[:n], steps, image_generators(range(n), 0, tokens.device))[1]
    finally:
        model.transformer = saved


def vqgan_options(model, compile_: bool) -> dict:
    """name -> (VQGAN, memory format of its inputs); 'plain' is NCHW."""
    options = {"plain": (model.vqgan, torch.contiguous_format),
               "channels_last": (copy.deepcopy(model.vqgan).to(memory_format=torch.channels_last),
                                 torch.channels_last)}
    if compile_:
        compiled = copy.deepcopy(model.vqgan)
        compiled.decoder = torch.compile(compiled.decoder)
        options["compiled"] = (compiled, torch.contiguous_format)
    return options


def rows_of(what: str, wall: dict, cpu: dict, notes: dict, batch: int) -> list[Row]:
    return [Row(f"{what} {name}, batch {batch}", wall[name], wall["plain"], "s", higher=False,
                precision="int8+fp32" if name == "int8" else "fp32",
                note=f"CPU time {cpu['plain'] / cpu[name]:.2f}x; {notes[name]}")
            for name in wall if name != "plain"]


@torch.inference_mode()
def run(device=None, config: str = "lab", quick: bool = False, batch: int | None = None,
        total_iter: int = 7, compile_: bool = True, check_images: int | None = None) -> list[Row]:
    device = resolve_device(device)
    if device.type != "cpu":
        return [Row("fast-path options", float("nan"), note="CPU only; skipped on " + str(device))]
    batch = batch or (4 if quick else 16)
    repeats = 1 if quick else 3
    check_images = check_images or min(batch, 2 if quick else 4)
    model = build_maskgit(device, config)
    images, known = masked_batch(model.vq_config, batch, device)
    tokens = model.masked_tokens(images, known)
    only = tokens == model.mask_token_id
    rows = []

    # transformer forward
    options = transformer_options(model, tokens, compile_)
    reference = model.transformer.logits_at(tokens, only)  # (M, K+1): what decoding reads
    alone = one_at_a_time(model, tokens, total_iter, check_images)
    notes, fns = {}, {}
    for name, (context, tr) in options.items():
        start = time.perf_counter()
        with context():
            logits = tr.logits_at(tokens, only)  # the first call compiles
        if name == "compiled":
            rows.append(Row("torch.compile of the transformer's blocks (first call)",
                            time.perf_counter() - start, unit="s", precision="fp32",
                            note="once per process and batch shape"))
        diff = (logits - reference).abs().max().item()
        exact = "logits equal" if diff == 0 else f"max |logit diff| {diff:.1e}"
        if name not in ("plain", "int8"):
            same = torch.equal(batch_tokens(model, tokens, tr, context, total_iter, check_images), alone)
            exact += f"; tokens == batch-1 tokens ({check_images} images): {same}"
        elif name == "int8":
            agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
            exact += f"; argmax agrees at {100 * agree:.0f}% of masked tokens (random weights)"
        notes[name] = exact

        def fn(context=context, tr=tr):
            with context():
                tr.logits_at(tokens, only)
        fns[name] = fn
    wall, cpu = interleaved_wall_cpu(fns, device, repeats)
    rows += rows_of("transformer fwd", wall, cpu, notes, batch)

    # VQGAN encode and decode
    z_q = model.vqgan.codebook.embed(tokens.clamp_max(model.mask_token_id - 1), *(model.vqgan.latent_resolution,) * 2)
    ref_tokens, ref_images = model.vqgan.encode(images)[1], model.vqgan.decode(z_q)
    enc, dec, enc_notes, dec_notes = {}, {}, {}, {}
    for name, (vq, layout) in vqgan_options(model, compile_).items():
        x, z = images.contiguous(memory_format=layout), z_q.contiguous(memory_format=layout)
        start = time.perf_counter()
        out = vq.decode(z)
        if name == "compiled":
            rows.append(Row("torch.compile of the VQGAN decoder (first call)", time.perf_counter() - start,
                            unit="s", precision="fp32", note="once per process and batch shape"))
        diff = (out - ref_images).abs().max().item()
        dec_notes[name] = "pixels equal" if diff == 0 else f"max |pixel diff| {diff:.1e}"
        enc_notes[name] = f"tokens equal: {torch.equal(vq.encode(x)[1], ref_tokens)}"
        enc[name] = lambda vq=vq, x=x: vq.encode(x)
        dec[name] = lambda vq=vq, z=z: vq.decode(z)
    enc.pop("compiled", None), enc_notes.pop("compiled", None)  # only the decoder is compiled
    wall, cpu = interleaved_wall_cpu(enc, device, repeats)
    rows += rows_of("VQGAN encode", wall, cpu, enc_notes, batch)
    wall, cpu = interleaved_wall_cpu(dec, device, repeats)
    rows += rows_of("VQGAN decode", wall, cpu, dec_notes, batch)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 16)")
    p.add_argument("--total-iter", type=int, default=7)
    p.add_argument("--no-compile", action="store_true", help="leave out torch.compile (minutes here)")
    args = p.parse_args(argv)
    print(table(run(args.device, args.config, args.quick, args.batch, args.total_iter,
                    not args.no_compile)))


if __name__ == "__main__":
    main()
