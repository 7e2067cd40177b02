"""CompactVQGAN and its factorised, l2-normalised codebook (EMA updates, restarts)."""
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

import training_vqgan
from data import write_synthetic_folder
from data.sources import image_tensor
from models.VQGAN import VQGAN, CompactVQGAN, FactorizedCodebook, build_vqgan
from models.VQGAN.codebook import Codebook
from models.VQGAN.factorized_codebook import ARGMAX_GROUP, LOOKUP_ROWS, assignment_sums, first_argmax
from utils import UserError, load_config

from conftest import REPO

COMPACT = REPO / "configs" / "VQGAN_catface_compact.yml"


def tiny_compact_cfg(**changes) -> dict:
    cfg = load_config(COMPACT)
    cfg.update({"num_codebook_vectors": 64, "channels": [16, 32], "enc_res_blocks": [0, 1],
                "dec_res_blocks": [1, 1], **changes})
    return cfg


# ----------------------------------------------------------------------------- the quantiser

def test_quantise_then_embed_returns_the_unit_code_vectors():
    torch.manual_seed(0)
    cb = FactorizedCodebook(32, 4)
    z = torch.randn(2, 4, 3, 5)
    z_q, idx, _ = cb(z)
    assert z_q.shape == (2, 4, 3, 5) and idx.shape == (2, 15)
    assert torch.allclose(cb.embed(idx, 3, 5), z_q, atol=1e-6)
    assert torch.allclose(z_q.norm(dim=1), torch.ones(2, 3, 5), atol=1e-5)
    # a code vector itself (at any length) quantises to its own index
    codes = cb.embedding.weight.detach()
    scaled = (codes * torch.rand(32, 1) * 5 + 0.1).t().reshape(1, 4, 4, 8)
    assert torch.equal(cb(scaled)[1].flatten(), torch.arange(32))


def test_indices_are_row_major_over_the_grid():
    cb = FactorizedCodebook(4, 2)
    cb.embedding.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    z = torch.zeros(1, 2, 2, 3)
    z[0, :, 0, 2] = torch.tensor([0.0, 3.0])   # row 0, col 2 -> code 1 at index 2
    z[0, :, 1, 0] = torch.tensor([-2.0, 0.1])  # row 1, col 0 -> code 2 at index 3
    z[0, :, 0, 0] = z[0, :, 0, 1] = z[0, :, 1, 1] = z[0, :, 1, 2] = torch.tensor([1.0, 0.0])
    assert cb(z)[1].tolist() == [[0, 0, 1, 2, 0, 0]]


def test_lookup_is_by_cosine_not_by_length():
    cb = FactorizedCodebook(2, 2)
    cb.embedding.weight.data = torch.tensor([[10.0, 0.0], [0.6, 0.8]])
    # nearest in plain l2 would be code 1 (much shorter); by angle it is code 0
    assert cb.lookup(torch.tensor([[0.9, 0.1]])).item() == 0
    assert torch.allclose(cb.codes().norm(dim=1), torch.ones(2))


def test_without_l2_normalisation_the_lookup_is_the_euclidean_nearest_code():
    torch.manual_seed(0)
    cb = FactorizedCodebook(300, 8, l2_normalize=False)
    cb.embedding.weight.data *= torch.rand(300, 1) * 3  # codes of many lengths
    z = torch.randn(LOOKUP_ROWS + 29, 8) * 2  # two blocks, the second short
    assert torch.equal(cb.lookup(z), torch.cdist(z, cb.embedding.weight).argmin(dim=1))
    # the same pair as the cosine test above: now the shorter, nearer code wins
    cb = FactorizedCodebook(2, 2, l2_normalize=False)
    cb.embedding.weight.data = torch.tensor([[10.0, 0.0], [0.6, 0.8]])
    assert cb.lookup(torch.tensor([[0.9, 0.1]])).item() == 1
    # quantise then embed returns the stored code vectors themselves, not unit ones
    z_q, idx, _ = cb(torch.tensor([[9.0, 0.7], [0.1, 1.0]]).t().reshape(1, 2, 1, 2))
    assert idx.tolist() == [[0, 1]]
    assert torch.equal(cb.embed(idx, 1, 2), z_q) and torch.equal(cb.codes(), cb.embedding.weight)
    assert torch.allclose(z_q[0, :, 0, 0], torch.tensor([10.0, 0.0]))


def test_the_lookup_normalisation_is_a_config_switch_that_defaults_to_on():
    assert build_vqgan(tiny_compact_cfg()).codebook.l2_normalize
    cfg = tiny_compact_cfg()
    del cfg["l2_normalize"]  # checkpoints of configs from before the switch
    assert build_vqgan(cfg).codebook.l2_normalize
    assert not build_vqgan(tiny_compact_cfg(l2_normalize=False)).codebook.l2_normalize
    with pytest.raises(UserError, match="l2_normalize = 'no' must be true or false"):
        build_vqgan(tiny_compact_cfg(l2_normalize="no"))


def test_lookup_in_blocks_of_rows_is_the_argmax_over_every_code():
    torch.manual_seed(0)
    cb = FactorizedCodebook(4096, 8)
    z = torch.randn(3 * LOOKUP_ROWS + 17, 8)  # several blocks and a short last one
    brute = (F.normalize(z, dim=1) @ F.normalize(cb.embedding.weight, dim=1).t()).argmax(dim=1)
    assert torch.equal(cb.lookup(z), brute)


@pytest.mark.parametrize("k", [64 * ARGMAX_GROUP, 4 * ARGMAX_GROUP, ARGMAX_GROUP + 3])
def test_first_argmax_is_argmax_with_ties_across_groups_and_nan(k):
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 4, (300, k), generator=g).float()  # each row's maximum in many groups
    s[7] = 3.0  # every column a maximum: 0
    s[11, k - 1] = 5.0  # in the last column
    s[13, [5, k // 2]] = float("nan")  # a NaN wins, the first one
    s[17, :] = -float("inf")
    expected = s.argmax(dim=1)
    assert expected[[7, 11, 13, 17]].tolist() == [0, k - 1, 5, 0]
    assert torch.equal(first_argmax(s), expected)
    assert torch.equal(first_argmax(s[1:]), expected[1:])  # a block shorter than the buffer


@pytest.mark.parametrize("make", [lambda: FactorizedCodebook(4096, 8), lambda: Codebook(1024, 64, 0.25)],
                         ids=["factorized", "lab"])
def test_lookup_under_bf16_autocast_is_the_fp32_nearest_code(make):
    # bf16 similarities round neighbouring codes together (6.6% of the recipe's val tokens
    # changed code); the lookup must not depend on the caller's autocast
    torch.manual_seed(0)
    cb = make()
    z = torch.randn(2000, cb.embedding.weight.shape[1])
    exact = cb.lookup(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(cb.lookup(z), exact)
        assert torch.equal(cb(z.t().reshape(1, -1, 40, 50))[1].flatten(), exact)


@pytest.mark.parametrize("make", [lambda: FactorizedCodebook(3, 2), lambda: Codebook(3, 2, 0.25)],
                         ids=["factorized", "lab"])
def test_lookup_ties_go_to_the_first_code(make):
    cb = make()
    cb.embedding.weight.data = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    assert cb.lookup(torch.tensor([[2.0, 0.0], [0.0, 1.0]])).tolist() == [1, 0]


def test_loss_is_commitment_plus_codebook_and_straight_through():
    torch.manual_seed(0)
    cb = FactorizedCodebook(8, 3, beta=0.25)
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    z_q, idx, loss = cb(z)
    zn = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, 3), dim=1)
    expected = 1.25 * F.mse_loss(zn, cb.codes()[idx.flatten()])
    assert torch.allclose(loss, expected)
    z_q.sum().backward()
    assert z.grad is not None and cb.embedding.weight.grad is None  # z_q's value path is detached


def test_the_codebook_gradient_is_the_same_on_every_run_with_two_threads():
    # many encoder outputs on few codes: the rows that collide must be summed in a fixed order
    torch.manual_seed(0)
    cb = FactorizedCodebook(1024, 8)
    z = torch.randn(1, 8, 1, 1) + 0.3 * torch.randn(32, 8, 16, 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            cb.zero_grad()
            cb(z)[2].backward()
            grads.append(cb.embedding.weight.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_ema_moves_codes_to_the_mean_of_their_assignments():
    cb = FactorizedCodebook(2, 2, ema_decay=0.5)
    cb.embedding.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cb.ema_sum.copy_(cb.embedding.weight.data)
    assert not cb.embedding.weight.requires_grad
    # four vectors near code 0, none near code 1
    z = torch.tensor([[0.8, 0.6], [0.8, -0.6], [1.0, 0.0], [0.9, 0.2]]).t().reshape(1, 2, 2, 2)
    cb.train()
    _, idx, loss = cb(z)
    assert idx.flatten().tolist() == [0, 0, 0, 0]
    zn = F.normalize(z.reshape(2, 4).t(), dim=1)
    count = torch.tensor([0.5 * 1 + 0.5 * 4, 0.5 * 1 + 0.5 * 0])  # lerp of ones towards (4, 0)
    total = 0.5 * torch.tensor([[1.0, 0.0], [0.0, 1.0]]) + 0.5 * torch.stack([zn.sum(0), torch.zeros(2)])
    assert torch.allclose(cb.ema_count, count) and torch.allclose(cb.ema_sum, total)
    n, eps = count.sum(), cb.eps
    smoothed = (count + eps) / (n + 2 * eps) * n
    assert torch.allclose(cb.embedding.weight, total / smoothed[:, None])
    # commitment only (the codes take no gradient), to the code as updated by this batch
    assert torch.allclose(loss, 0.25 * F.mse_loss(zn, cb.codes()[0].expand(4, 2)))
    cb.eval()  # no update outside training
    before = cb.embedding.weight.clone()
    cb(z)
    assert torch.equal(before, cb.embedding.weight)


def test_restart_moves_only_dead_codes_onto_encoder_outputs():
    torch.manual_seed(0)
    cb = FactorizedCodebook(6, 3, ema_decay=0.9)
    before = cb.embedding.weight.detach().clone()
    counts = torch.tensor([3.0, 0.0, 1.0, 0.0, 0.0, 2.0])
    z = torch.randn(10, 3)
    assert cb.restart_dead_codes(counts, z) == 3
    dead, alive = [1, 3, 4], [0, 2, 5]
    assert torch.equal(cb.embedding.weight[alive], before[alive])
    zn = F.normalize(z, dim=1)
    for k in dead:  # each dead code is now one of the (normalised) encoder outputs
        assert (zn - cb.embedding.weight[k]).abs().sum(1).min() < 1e-6
        assert cb.ema_count[k] == 1.0 and torch.equal(cb.ema_sum[k], cb.embedding.weight[k])
    assert cb.restart_dead_codes(torch.ones(6), z) == 0


# ----------------------------------------------------------------------------- the architecture

def test_shapes_and_the_vqgan_contract():
    torch.manual_seed(0)
    vq = build_vqgan(tiny_compact_cfg())
    assert isinstance(vq, CompactVQGAN) and vq.latent_resolution == 16
    x = torch.randn(3, 3, 64, 64)
    z_q, idx, q_loss = vq.encode(x)
    assert z_q.shape == (3, 8, 16, 16) and idx.shape == (3, 256) and q_loss.dim() == 0
    assert idx.min() >= 0 and idx.max() < 64
    rec, idx2, _ = vq(x)
    assert rec.shape == x.shape and torch.equal(idx, idx2)
    assert torch.allclose(vq.decode_indices(idx), rec, atol=1e-5)
    assert vq.latents(x).shape == (3 * 256, 8)
    # row-major: the token of grid cell (r, c) is the encoder output at (r, c)
    z = vq.encoder(x)
    assert torch.equal(vq.codebook.lookup(z[1, :, 5, 9][None]), idx[1, 5 * 16 + 9][None])


def test_the_lab_vqgan_is_still_what_a_config_without_architecture_builds(vq_tiny_cfg):
    assert type(build_vqgan(vq_tiny_cfg)) is VQGAN
    with pytest.raises(UserError, match="unknown architecture 'vit'"):
        build_vqgan({**vq_tiny_cfg, "architecture": "vit"})
    with pytest.raises(UserError, match="impossible CompactVQGAN"):
        build_vqgan(tiny_compact_cfg(channels=[16, 32, 64]))


def test_blocks_start_as_identities_so_the_untrained_net_is_shallow():
    vq = build_vqgan(tiny_compact_cfg())
    x = torch.randn(2, 16, 32, 32)
    block = vq.decoder.model[-4][0]  # the 32x32 stage's first res block
    assert torch.equal(block(x), x)


def test_a_tiny_run_of_the_recipe_lowers_its_loss(tmp_path):
    data = write_synthetic_folder(tmp_path / "data", 64)
    cfg = tmp_path / "compact.yml"
    c = tiny_compact_cfg()
    c["training"].update(max_steps=40, batch_size=8, warmup_steps=5, disc_start=30,
                         restart_every=10, precision="fp32")
    cfg.write_text(yaml.safe_dump(c))
    training_vqgan.main(["--config", str(cfg), "--out", str(tmp_path / "run"), "--data", str(data),
                         "--device", "cpu"])
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    torch.manual_seed(0)
    untrained = training_vqgan.evaluate(build_vqgan(c), image_tensor(str(data), 64)[:256],
                                        [0.5] * 3, [0.5] * 3, "cpu")["val_l1"]
    assert lines[-1]["step"] == 40
    assert lines[-1]["val_l1"] < 0.7 * untrained
    assert lines[-1]["val_usage"] > 0.5


def test_assignment_sums_count_and_sum_each_codes_rows_the_same_on_every_run():
    torch.manual_seed(0)
    idx = torch.randint(0, 40, (5000,))  # 5000 rows on 40 of 64 codes: many collisions
    z = torch.randn(5000, 8)
    onehot = F.one_hot(idx, 64).float()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [assignment_sums(idx, z, 64) for _ in range(4)]
    finally:
        torch.set_num_threads(threads)
    count, total = runs[0]
    assert count.dtype == torch.float32 and torch.equal(count, onehot.sum(0))
    assert torch.equal(count[40:], torch.zeros(24)) and torch.equal(total[40:], torch.zeros(24, 8))
    assert torch.allclose(total, onehot.t() @ z, atol=1e-4)
    assert all(torch.equal(c, count) and torch.equal(t, total) for c, t in runs[1:])


def test_ema_updates_run_under_bf16_autocast():
    """The EMA sums stay fp32 when the encoder output is bf16 (a crash before)."""
    torch.manual_seed(0)
    cb = FactorizedCodebook(8, 4, 0.25, ema_decay=0.9).train()
    before = cb.ema_sum.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cb(torch.randn(2, 4, 4, 4).to(torch.bfloat16))
    assert cb.ema_sum.dtype == torch.float32 and not torch.equal(cb.ema_sum, before)
