"""MaskGIT iterative decoding (Chang et al., 2022), as pure functions of tensors.

Token ids are in [0, K); K is [MASK]. At each of T steps the transformer predicts
every masked token, a token is sampled for each, and the least confident samples
are masked again, so that floor(U0 * gamma(t/T)) stay masked after step t (U0 =
masked count at the start, t = 1..T). Known tokens have infinite confidence and
never change.
"""
import contextlib
import functools
import math
from concurrent.futures import ThreadPoolExecutor

import torch

from .cells import known_fraction
from .Transformer.packed import packed_weights


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise from uniform samples u in [0, 1)."""
    tiny = torch.finfo(u.dtype).tiny
    return -torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-7)))


def token_unknown_from_pixels(known: torch.Tensor, grid: int, min_known: float = 1.0) -> torch.Tensor:
    """Pixel mask (B, 1, H, W), 1 = known -> token mask (B, grid*grid), True = unknown.

    A token is known when at least `min_known` (in (0, 1]) of its patch's pixels are known;
    1 re-predicts every token whose patch touches a hole.
    """
    return (known_fraction(known, grid) < min_known).flatten(1)  # (B, grid*grid), row-major


def num_masked_after(step: int, total_iter: int, n_unknown_start: torch.Tensor,
                     n_unknown_now: torch.Tensor, gamma) -> torch.Tensor:
    """How many tokens stay masked after 0-based `step` (per sample, int64)."""
    if step == total_iter - 1:
        return torch.zeros_like(n_unknown_now)
    n = torch.floor(n_unknown_start.double() * gamma((step + 1) / total_iter)).long()
    # at least one token is fixed per step, and one stays masked until the last step
    return torch.minimum(n.clamp_min(1), n_unknown_now - 1).clamp_min(0)


def decode_step(logits: torch.Tensor, tokens: torch.Tensor, n_unknown_start: torch.Tensor,
                step: int, total_iter: int, gamma, choice_temperature: float,
                sample_noise: torch.Tensor, confidence_noise: torch.Tensor,
                temperature: float = 1.0):
    """One decoding step.

    tokens (B, N) in [0, K] with K = [MASK]; logits (M, K+1) at its M masked positions, in
    row-major order (the transformer's `logits_at(tokens, tokens == K)`): the known tokens
    keep their ids at infinite confidence, so nothing is read of their logits.
    sample_noise (B, N, K+1) and confidence_noise (B, N) are Gumbel(0, 1) samples; sample_noise
    is not read (may be None) at temperature 0.
    Tokens are sampled from softmax(logits / temperature) (0: the most likely token);
    confidence is the untempered log p of the sampled token.
    Returns (next_tokens (B, N) with re-masked positions set to K,
             sampled (B, N) in [0, K): every position filled).
    """
    mask_id = logits.shape[-1] - 1
    unknown = tokens == mask_id  # (B, N), M True
    rows = logits.to(torch.float32, copy=True)  # (M, K+1); the caller's logits stay as they are
    rows[:, mask_id] = -math.inf  # never emit [MASK]
    logp = rows.log_softmax(dim=-1)
    # Gumbel-max: argmax(logp / temperature + g) is a sample of softmax(logits / temperature)
    scores = logp / temperature + sample_noise[unknown] if temperature > 0 else logp
    best = scores.argmax(dim=-1)  # (M,)
    sampled = tokens.masked_scatter(unknown, best)
    ratio = (step + 1) / total_iter
    confidence = torch.full(tokens.shape, math.inf, device=tokens.device)  # (B, N)
    confidence[unknown] = (logp.gather(-1, best.unsqueeze(-1)).squeeze(-1)  # log p(sampled)
                           + choice_temperature * (1.0 - ratio) * confidence_noise[unknown])
    n_mask = num_masked_after(step, total_iter, n_unknown_start, unknown.sum(-1), gamma)  # (B,)
    rank = confidence.argsort(dim=-1, stable=True).argsort(dim=-1)  # 0 = least confident
    remask = rank < n_mask.unsqueeze(-1)
    return torch.where(remask, mask_id, sampled), sampled


def sample_noise(generators: list[torch.Generator], n: int, vocab: int, device,
                 sampling: bool = True) -> tuple:
    """(sample noise (B, N, vocab), confidence noise (B, N)), Gumbel(0, 1), from per-image
    generators, so batching never changes results. Without `sampling` (temperature 0, which
    reads no sample noise) the sample noise is None: its uniforms are still drawn, so each
    image's stream and tokens stay those of every temperature, but are not turned into
    Gumbel noise (4097 values per token at the cat-face recipe's 4096 codes).
    A generator's draw is serial, so the images' draws run on threads (torch releases the GIL):
    71 ms against 33 ms for 16 images at that size on 2 cores, each stream as drawn alone."""
    u = torch.empty(len(generators), n, vocab + 1, device=device)  # last column: confidence

    def fill(row, g):  # in place, so no per-image tensors are stacked afterwards
        with torch.inference_mode(row.is_inference()):  # grad modes are per thread
            torch.rand(row.shape, generator=g, device=device, out=row)
    list(_draw_threads().map(fill, u, generators))
    if not sampling:
        return None, gumbel(u[..., vocab])
    g = gumbel(u)
    return g[..., :vocab], g[..., vocab]


@functools.cache
def _draw_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=torch.get_num_threads(), thread_name_prefix="noise")


@torch.inference_mode()
def iterative_decode(transformer, tokens: torch.Tensor, total_iter: int, gamma,
                     choice_temperature: float, generators: list[torch.Generator],
                     sweet_spot: int = -1, record: bool = False, autocast=contextlib.nullcontext,
                     temperature: float = 1.0):
    """Run MaskGIT decoding on `tokens` (B, N), K at unknown positions.

    Stops after `sweet_spot` steps when 1 <= sweet_spot < total_iter. Returns
    (tokens (B, N) in [0, K), history) where history lists, per step, the tokens
    left masked after it (B, N) and the sampled ids (B, N) if `record`.
    `autocast` is a context factory, e.g. for bf16; `temperature` scales the sampling
    (see `decode_step`). The transformer (an nn.Module) is called as
    transformer.logits_at(tokens, rows) and computes logits (M, K+1) at the still-masked
    positions only, the only ones decoding reads.
    """
    steps = sweet_spot if 1 <= sweet_spot < total_iter else total_iter
    n_unknown_start = (tokens == transformer.mask_token_id).sum(-1)
    history = []
    sampled = tokens
    # one context for every step, so its weight casts (and, for CPU bf16, the packed weights)
    # are made once; decode_step has no autocast op (log_softmax runs in fp32 either way)
    with autocast(), packed_weights(transformer, tokens.numel()):
        for step in range(steps):
            logits = transformer.logits_at(tokens, tokens == transformer.mask_token_id)  # (M, K+1)
            s_noise, c_noise = sample_noise(generators, tokens.shape[1], logits.shape[-1],
                                            tokens.device, sampling=temperature > 0)
            tokens, sampled = decode_step(logits, tokens, n_unknown_start, step, total_iter, gamma,
                                          choice_temperature, s_noise, c_noise, temperature)
            if record:
                history.append((tokens.clone(), sampled.clone()))
    return sampled, history
