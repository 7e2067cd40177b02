"""Mask schedules and MaskGIT iterative decoding: known tokens stay, the masked count
follows the schedule, [MASK] is never emitted, sweet spots stop early, batching never
changes results, and Gumbel-max samples follow the (tempered) softmax."""
import math

import pytest
import torch

from inpainting import image_generators
from models.cells import known_fraction
from models.decoding import (decode_step, gumbel, iterative_decode, num_masked_after,
                             sample_noise, token_unknown_from_pixels)
from models.schedules import SCHEDULES, gamma_func
from models.Transformer import BidirectionalTransformer
from runtime.precision import cpu_native_bf16
from utils import UserError

K, N, T = 32, 64, 6  # 8x8 tokens from 32 codes; id 32 is [MASK]


# ----------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("mode", SCHEDULES)
def test_schedule_endpoints_and_monotone(mode):
    gamma = gamma_func(mode)
    assert gamma(0.0) == 1.0 and gamma(1.0) == 0.0  # exact, not approximately
    assert isinstance(gamma(0.3), float)
    r = torch.linspace(0, 1, 2001)
    g = gamma(r)
    assert isinstance(g, torch.Tensor) and g.shape == r.shape
    assert g[0] == 1.0 and g[-1] == 0.0
    assert ((g >= 0) & (g <= 1)).all()
    assert (g[1:] <= g[:-1]).all()  # non-increasing


def test_unknown_schedule_is_user_error():
    with pytest.raises(UserError, match="cosine"):
        gamma_func("cosinus")


# ----------------------------------------------------------------------------- helpers

class RandomLogits(torch.nn.Module):
    """Stand-in transformer: fresh random logits on every call (seeded); counts its calls."""
    mask_token_id = K

    def __init__(self, seed=0, mask_logit=None):
        super().__init__()
        self.gen = torch.Generator().manual_seed(seed)
        self.mask_logit = mask_logit
        self.calls = 0

    def logits_at(self, tokens, rows):
        assert torch.equal(rows, tokens == K)  # decoding asks for the masked positions only
        self.calls += 1
        logits = 3 * torch.randn(*tokens.shape, K + 1, generator=self.gen)
        if self.mask_logit is not None:
            logits[..., K] = self.mask_logit
        return logits[rows]  # (M, K+1), row-major


def batch_with_holes(unknown_counts, seed=0):
    """Tokens (B, N) with random known ids and `unknown_counts[b]` [MASK] positions in row b."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, K, (len(unknown_counts), N), generator=g)
    for b, u in enumerate(unknown_counts):
        tokens[b, torch.randperm(N, generator=g)[:u]] = K
    return tokens


def generators(n, seed=0):
    return image_generators(range(n), seed, "cpu")


# ----------------------------------------------------------------------------- decoding

COUNTS = [N, 40, 7, 3, 1, 0]  # one batch, very different numbers of unknown tokens


def step_gamma(r):
    """All masked for the first half, none after: both clamps of the count rule engage."""
    return 1.0 if r < 0.5 else 0.0


@pytest.mark.parametrize("gamma", [gamma_func("cosine"), gamma_func("linear"), gamma_func("log"),
                                   step_gamma], ids=["cosine", "linear", "log", "step"])
def test_known_tokens_and_masked_counts(gamma):
    start = batch_with_holes(COUNTS)
    final, history = iterative_decode(RandomLogits(), start, T, gamma, 4.5, generators(len(COUNTS)),
                                      record=True)
    assert len(history) == T
    known = start != K
    u0 = torch.tensor(COUNTS)
    before = u0.clone()
    for t, (tokens, sampled) in enumerate(history, start=1):
        assert torch.equal(tokens[known], start[known])
        assert torch.equal(sampled[known], start[known])
        assert (sampled < K).all()
        if t == T:
            expected = torch.zeros_like(u0)
        else:  # floor(U0 * gamma(t/T)), at least 1 masked, at least 1 decided per step
            expected = torch.tensor([math.floor(u * gamma(t / T)) for u in COUNTS])
            expected = torch.minimum(expected.clamp_min(1), before - 1).clamp_min(0)
        assert torch.equal((tokens == K).sum(-1), expected), (t, expected)
        # masked positions of this step were masked before it too: decided tokens stay decided
        if t > 1:
            assert not ((tokens == K) & (history[t - 2][0] != K)).any()
        before = expected
    assert torch.equal(final[known], start[known]) and (final < K).all()
    assert torch.equal(final, history[-1][0])


def test_mask_never_sampled_even_with_huge_mask_logit():
    start = batch_with_holes([N, N])
    final, history = iterative_decode(RandomLogits(mask_logit=1e4), start, T, gamma_func("cosine"),
                                      4.5, generators(2), record=True)
    assert (final < K).all()
    assert all((sampled < K).all() for _, sampled in history)


@pytest.mark.parametrize("sweet_spot, steps", [(1, 1), (2, 2), (T - 1, T - 1), (T, T),
                                               (T + 5, T), (-1, T)])
def test_sweet_spot_history_length(sweet_spot, steps):
    model = RandomLogits()
    final, history = iterative_decode(model, batch_with_holes([N, 20]), T, gamma_func("cosine"),
                                      4.5, generators(2), sweet_spot=sweet_spot, record=True)
    assert len(history) == model.calls == steps
    assert (final < K).all()  # stopping early still fills every token


def test_no_history_unless_recorded():
    _, history = iterative_decode(RandomLogits(), batch_with_holes([N]), T, gamma_func("cosine"),
                                  4.5, generators(1))
    assert history == []


def test_batched_equals_one_by_one():
    torch.manual_seed(0)
    model = BidirectionalTransformer(N, K, dim=32, n_layers=2, hidden_dim=64, num_heads=4,
                                     attn_drop=0.0, dropout=0.0).eval()
    start = batch_with_holes([N, 30, 12, 5, 1], seed=1)
    gamma = gamma_func("cosine")
    batched, _ = iterative_decode(model, start, T, gamma, 4.5, image_generators(range(5), 7, "cpu"))
    for i in range(5):
        single, _ = iterative_decode(model, start[i:i + 1], T, gamma, 4.5,
                                     image_generators([i], 7, "cpu"))
        assert torch.equal(single[0], batched[i]), i
    other_seed, _ = iterative_decode(model, start, T, gamma, 4.5,
                                     image_generators(range(5), 8, "cpu"))
    assert not torch.equal(other_seed, batched)


def test_sample_noise_draws_each_images_stream_as_alone():
    """The images' draws run on threads; each is its generator's own stream, in order."""
    noise, conf = sample_noise(image_generators(range(5), 3, "cpu"), N, K, "cpu")
    alone = torch.stack([torch.rand(N * (K + 1), generator=g)
                         for g in image_generators(range(5), 3, "cpu")]).view(5, N, K + 1)
    assert torch.equal(noise, gumbel(alone)[..., :K]) and torch.equal(conf, gumbel(alone)[..., K])


def test_greedy_decoding_keeps_the_streams_without_making_sample_noise():
    """At temperature 0 the sample noise is not made, but its uniforms are still drawn: the
    confidence noise, and so the tokens, are those of the full draw."""
    full = sample_noise(image_generators(range(3), 7, "cpu"), N, K, "cpu")
    greedy = sample_noise(image_generators(range(3), 7, "cpu"), N, K, "cpu", sampling=False)
    assert full[0].shape == (3, N, K) and greedy[0] is None
    assert torch.equal(greedy[1], full[1])
    torch.manual_seed(0)
    logits, tokens = torch.randn(3, N, K + 1), batch_with_holes([N, 20, 3])
    step = lambda noise: decode_step(logits[tokens == K], tokens, (tokens == K).sum(-1), 0, T,  # noqa: E731
                                     gamma_func("cosine"), 4.5, noise, full[1], temperature=0.0)
    assert all(torch.equal(a, b) for a, b in zip(step(None), step(full[0])))


@pytest.mark.skipif(not cpu_native_bf16(), reason="no native bf16: packing is a no-op")
def test_cpu_bf16_decoding_runs_on_packed_weights():
    model = BidirectionalTransformer(N, K, dim=32, n_layers=1, hidden_dim=64, num_heads=4).eval()
    packed = []  # per transformer call: did the first MLP layer have packed weights?
    model.blocks[0].MLP[0].register_forward_pre_hook(lambda m, _: packed.append(m.packed is not None))
    start, gamma = batch_with_holes([N, 20]), gamma_func("cosine")
    bf16 = lambda: torch.autocast("cpu", torch.bfloat16)  # noqa: E731
    iterative_decode(model, start, T, gamma, 4.5, generators(2), autocast=bf16)
    iterative_decode(model, start, T, gamma, 4.5, generators(2))  # fp32: the plain path
    assert packed == [True] * T + [False] * T
    assert model.blocks[0].MLP[0].packed is None  # released after the decode


# ----------------------------------------------------------------------------- decode_step

def test_decode_step_remasks_least_confident():
    """With no noise the most probable id is sampled and the least confident are re-masked."""
    logits = torch.zeros(1, 6, K + 1)
    peaks = torch.tensor([8.0, 1.0, 5.0, 2.0, 0.0, 9.0])  # confidence order per position
    logits[0, torch.arange(6), torch.arange(6)] = peaks
    logits[0, :, K] = 100.0  # must be ignored
    tokens = torch.full((1, 6), K)
    tokens[0, 4] = 20  # known, even though its logits are the least confident
    zero = torch.zeros(1, 6, K + 1)
    nxt, sampled = decode_step(logits[tokens == K], tokens, torch.tensor([5]), step=0, total_iter=2,
                               gamma=gamma_func("linear"), choice_temperature=4.5,
                               sample_noise=zero, confidence_noise=torch.zeros(1, 6))
    assert sampled.tolist() == [[0, 1, 2, 3, 20, 5]]
    # floor(5 * gamma(1/2)) = 2 stay masked: positions 1 and 3 (the two flattest)
    assert nxt.tolist() == [[0, K, 2, K, 20, 5]]


def test_decode_step_is_pure():
    tokens = batch_with_holes([N, 10])
    logits = torch.randn(N + 10, K + 1)  # fp32: a cast to fp32 would be no copy
    copies = logits.clone(), tokens.clone()
    noise = gumbel(torch.rand(2, N, K + 1)), gumbel(torch.rand(2, N))
    a = decode_step(logits, tokens, (tokens == K).sum(-1), 0, T, gamma_func("cosine"), 4.5, *noise)
    b = decode_step(logits, tokens, (tokens == K).sum(-1), 0, T, gamma_func("cosine"), 4.5, *noise)
    assert torch.equal(logits, copies[0]) and torch.equal(tokens, copies[1])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def dense_step(logits, tokens, n_unknown_start, step, total_iter, gamma, choice_temperature,
               sample_noise, confidence_noise, temperature):
    """decode_step's reference: every position through log-softmax, sampling and confidence,
    the known ones then overruled."""
    unknown = tokens == K
    logp = logits.float().clone().index_fill_(-1, torch.tensor([K]), -math.inf).log_softmax(-1)
    scores = logp / temperature + sample_noise if temperature > 0 else logp
    sampled = torch.where(unknown, scores.argmax(-1), tokens)
    confidence = logp.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
    confidence = confidence + choice_temperature * (1 - (step + 1) / total_iter) * confidence_noise
    confidence = torch.where(unknown, confidence, math.inf)
    n_mask = num_masked_after(step, total_iter, n_unknown_start, unknown.sum(-1), gamma)
    remask = confidence.argsort(dim=-1, stable=True).argsort(dim=-1) < n_mask.unsqueeze(-1)
    return torch.where(remask, K, sampled), sampled


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_decode_step_at_the_masked_rows_equals_the_dense_step(dtype, temperature):
    """decode_step, given the masked rows' logits only, gives the tokens of the dense
    reference, which reads every row, bit for bit."""
    g = torch.Generator().manual_seed(3)
    tokens = batch_with_holes([N, 40, 9, 0], seed=2)
    logits = torch.randn(4, N, K + 1, generator=g).to(dtype)
    noise = gumbel(torch.rand(4, N, K + 1, generator=g)), gumbel(torch.rand(4, N, generator=g))
    args = (tokens, (tokens == K).sum(-1), 1, T, gamma_func("cosine"), 4.5, *noise, temperature)
    ours, reference = decode_step(logits[tokens == K], *args), dense_step(logits, *args)
    assert all(torch.equal(a, b) for a, b in zip(ours, reference))


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0, 0.0])
def test_gumbel_max_frequencies_match_tempered_softmax(temperature):
    draws = 20000
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5, 2.0]).expand(draws, 1, 5).clone()  # id 4 = [MASK]
    tokens = torch.full((draws, 1), 4)
    g = torch.Generator().manual_seed(0)
    noise = gumbel(torch.rand(draws, 1, 5, generator=g))
    _, sampled = decode_step(logits[tokens == 4], tokens, torch.ones(draws, dtype=torch.long), 0, 1,
                             gamma_func("cosine"), 0.0, noise, torch.zeros(draws, 1), temperature)
    freq = torch.bincount(sampled.flatten(), minlength=5).double() / draws
    if temperature == 0:  # the most likely token, always
        probs = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    else:
        probs = torch.softmax(logits[0, 0, :4].double() / temperature, 0)
    assert freq[4] == 0
    assert (freq[:4] - probs).abs().max() < 0.02, (freq, probs)


# ----------------------------------------------------------------------------- pixels -> tokens

def test_token_unknown_from_pixels():
    known = torch.ones(2, 1, 64, 64, dtype=torch.bool)
    known[0, 0, 5, 9] = False    # patch (1, 2) with 4x4 patches -> token 1*16 + 2
    known[0, 0, 63, 0] = False   # patch (15, 0) -> token 240
    known[1, 0, 8:12, 4:8] = False  # exactly patch (2, 1) -> token 33
    unknown = token_unknown_from_pixels(known, 16)
    assert unknown.shape == (2, 256) and unknown.dtype == torch.bool
    assert unknown[0].nonzero().flatten().tolist() == [18, 240]
    assert unknown[1].nonzero().flatten().tolist() == [33]
    assert not token_unknown_from_pixels(torch.ones(1, 1, 64, 64), 16).any()


def test_min_known_keeps_the_tokens_of_mostly_known_patches():
    known = torch.ones(1, 1, 64, 64)
    known[0, 0, 0, 0:4] = 0         # token 0: 12 of 16 pixels known
    known[0, 0, 4:7, 4:8] = 0       # token 17: 4 of 16
    known[0, 0, 8, 8] = 0           # token 34: 15 of 16
    unknown = lambda m: token_unknown_from_pixels(known, 16, m)[0].nonzero().flatten().tolist()
    assert unknown(1.0) == [0, 17, 34]
    assert unknown(0.75) == [17]     # 12/16 is kept, exactly at the threshold
    assert unknown(0.8) == [0, 17]
    assert unknown(0.25) == [] and unknown(0.26) == [17]


def test_known_fraction_is_the_mean_of_each_cell():
    known = torch.ones(1, 1, 8, 8)
    known[0, 0, 0, 0] = 0           # cell (0, 0) of the 2x2-pixel grid: 3 of 4 known
    known[0, 0, 4:8, 4:8] = 0       # cells (2, 2), (2, 3), (3, 2), (3, 3): all hole
    frac = known_fraction(known, 4)
    assert frac.shape == (1, 1, 4, 4) and frac.dtype == torch.float32
    want = torch.ones(4, 4)
    want[0, 0], want[2:, 2:] = 0.75, 0
    assert torch.equal(frac[0, 0], want)
    assert torch.equal(known_fraction(known.bool(), 8), known)  # a grid of pixels: the mask itself
    assert torch.equal(known_fraction(known, 1), torch.full((1, 1, 1, 1), 47 / 64))
    with pytest.raises(ValueError, match="does not tile"):
        known_fraction(known, 3)
