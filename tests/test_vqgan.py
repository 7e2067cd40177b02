"""Stage 1: the VQGAN matches the lab's checkpoint layout, quantises row-major, round-trips
codebook vectors, passes gradients straight through, and learns on generated data."""
import math
from pathlib import Path

import pytest
import torch

from conftest import REPO, VQ_TINY
from data import make_synthetic_images, normalize
from models.VQGAN import VQGAN, Codebook, codebook_usage
from models.VQGAN.blocks import resample_stages
from models.VQGAN.losses import generator_loss
from models.VQGAN_Transformer import load_vqgan
from runtime.checkpoints import save_checkpoint
from utils import UserError, load_config

MANIFEST = Path(__file__).parent / "vqgan_state_dict.tsv"


def tiny_vqgan(cfg, seed=0) -> VQGAN:
    torch.manual_seed(seed)
    return VQGAN.from_config(cfg)


def images(n, cfg) -> torch.Tensor:
    """n generated images, normalised as the tiny config asks: (n, 3, 64, 64)."""
    x = torch.from_numpy(make_synthetic_images(n)).permute(0, 3, 1, 2).float() / 255
    stats = cfg["normalization"]["train"]
    return normalize(x, stats["mean"], stats["std"])


# ----------------------------------------------------------------------------- lab layout

def test_lab_state_dict_matches_manifest():
    manifest = [line.split("\t") for line in MANIFEST.read_text().splitlines()]
    with torch.device("meta"):  # 70M parameters: shapes only, no memory
        model = VQGAN.from_config(load_config(REPO / "configs" / "VQGAN.yml"))
    ours = [(k, str(tuple(v.shape))) for k, v in model.state_dict().items()]
    assert len(ours) == len(manifest) == 315
    assert ours == [(k, shape) for k, shape in manifest]  # same keys, order and shapes
    assert sum(p.numel() for p in model.parameters()) == 70_775_299


def test_resample_stages_lab_layout():
    assert resample_stages(5, 2, from_end=True) == {4, 2}   # encoder
    assert resample_stages(5, 2, from_end=False) == {0, 2}  # decoder
    assert resample_stages(3, 2, from_end=True) == {2, 0}
    with pytest.raises(ValueError):
        resample_stages(3, 3, from_end=True)


def test_state_dict_round_trip_strict(vq_tiny_cfg, tmp_path):
    src = tiny_vqgan(vq_tiny_cfg, seed=1)
    torch.save(src.state_dict(), tmp_path / "vq.pt")
    dst = tiny_vqgan(vq_tiny_cfg, seed=2)
    dst.load_state_dict(torch.load(tmp_path / "vq.pt", weights_only=True), strict=True)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_from_config_missing_key(vq_tiny_cfg):
    del vq_tiny_cfg["latent_dim"]
    with pytest.raises(UserError, match="latent_dim"):
        VQGAN.from_config(vq_tiny_cfg)


def test_from_config_impossible_resolution(vq_tiny_cfg):
    vq_tiny_cfg["latent_resolution"] = 2  # 64 -> 2 needs 5 resamplings in 3 stages
    with pytest.raises(UserError):
        VQGAN.from_config(vq_tiny_cfg)


@pytest.mark.parametrize("style", ["plain", "training"])
def test_load_vqgan_accepts_both_checkpoint_styles(vq_tiny_cfg, tmp_path, style):
    src = tiny_vqgan(vq_tiny_cfg, seed=3)
    state = src.state_dict()
    if style == "training":  # our checkpoint: its own config wins over the path given
        state = {"model": state, "config": vq_tiny_cfg, "epoch": 1}
        config_path = tmp_path / "does_not_exist.yml"
    else:  # the lab's VQGAN.pt: a bare state_dict, built from config_path
        config_path = VQ_TINY
    save_checkpoint(state, tmp_path / "vq.pt")
    model, cfg = load_vqgan(config_path, tmp_path / "vq.pt")
    assert cfg["latent_dim"] == vq_tiny_cfg["latent_dim"]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for k, v in src.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_load_vqgan_without_config_path(vq_tiny_cfg, tmp_path):
    src = tiny_vqgan(vq_tiny_cfg, seed=3)
    save_checkpoint({"model": src.state_dict(), "config": vq_tiny_cfg}, tmp_path / "ours.pt")
    model, cfg = load_vqgan(None, tmp_path / "ours.pt")  # our checkpoints carry their config
    assert cfg == vq_tiny_cfg and torch.equal(model.state_dict()["codebook.embedding.weight"],
                                              src.state_dict()["codebook.embedding.weight"])
    save_checkpoint(src.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(UserError, match=r"plain\.pt: no VQGAN config .*configs/VQGAN\.yml"):
        load_vqgan(None, tmp_path / "plain.pt")


def test_load_vqgan_wrong_shapes_is_user_error(vq_tiny_cfg, tmp_path):
    vq_tiny_cfg["num_codebook_vectors"] = 32
    save_checkpoint(tiny_vqgan(vq_tiny_cfg).state_dict(), tmp_path / "vq.pt")
    with pytest.raises(UserError, match="codebook.embedding.weight"):
        load_vqgan(VQ_TINY, tmp_path / "vq.pt")


# ----------------------------------------------------------------------------- shapes

def test_encode_decode_shapes(vq_tiny_cfg):
    vq = tiny_vqgan(vq_tiny_cfg).eval()
    d, k = vq_tiny_cfg["latent_dim"], vq_tiny_cfg["num_codebook_vectors"]
    with torch.no_grad():
        z_q, indices, q_loss = vq.encode(images(2, vq_tiny_cfg))
        assert z_q.shape == (2, d, 16, 16)
        assert indices.shape == (2, 256) and indices.dtype == torch.int64
        assert 0 <= indices.min() and indices.max() < k
        assert q_loss.dim() == 0 and q_loss >= 0
        assert vq.decode(z_q).shape == (2, 3, 64, 64)
        # decode_indices is decode(embed(indices)): same image from the ids alone
        assert torch.allclose(vq.decode_indices(indices), vq.decode(z_q), atol=1e-5)


# ----------------------------------------------------------------------------- codebook

def codebook(k=64, d=16, seed=0) -> Codebook:
    torch.manual_seed(seed)
    cb = Codebook(k, d, beta=0.25)
    cb.embedding.weight.data.normal_()  # well-separated codes
    return cb


def test_indices_are_row_major():
    cb = codebook()
    h, w = 3, 5  # not square, so a column-major order cannot pass
    ids = torch.randperm(64)[:2 * h * w].view(2, h, w)
    z = cb.embedding.weight[ids].permute(0, 3, 1, 2)  # (2, D, h, w): (i, j) holds code ids[i, j]
    z = z + 0.01 * torch.randn_like(z)
    _, indices, _ = cb(z)
    assert torch.equal(indices, ids.view(2, h * w))  # index i*w + j is position (i, j)


def test_indices_equal_manual_argmin():
    cb = codebook()
    z = torch.randn(2, 16, 4, 4)
    _, indices, _ = cb(z)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                dist = ((cb.embedding.weight - z[b, :, i, j]) ** 2).sum(1)
                assert indices[b, i * 4 + j] == dist.argmin()


def test_codebook_round_trip():
    cb = codebook()
    e = cb.embedding.weight.detach()
    z = e.t().reshape(1, 16, 8, 8)  # (1, D, 8, 8): code i*8 + j at position (i, j)
    z_q, indices, loss = cb(z)
    assert torch.equal(indices, torch.arange(64).view(1, 64))
    assert torch.allclose(z_q, z) and loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.equal(cb.embed(indices, 8, 8), z)


def test_straight_through_gradient():
    cb = codebook()
    z = torch.randn(2, 16, 4, 4, requires_grad=True)
    z_q, _, _ = cb(z)
    g = torch.randn_like(z_q)
    z_q.backward(g)
    assert torch.equal(z.grad, g)  # d z_q / d z is the identity


def test_gradient_reaches_encoder(vq_tiny_cfg):
    vq = tiny_vqgan(vq_tiny_cfg)
    z_q, _, _ = vq.encode(images(1, vq_tiny_cfg))
    z_q.square().sum().backward()  # no q_loss: only the straight-through path
    first_conv = vq.encoder.model[0].weight.grad
    assert first_conv is not None and first_conv.abs().sum() > 0


def test_restart_dead_codes_touches_only_dead():
    cb = codebook()
    before = cb.embedding.weight.detach().clone()
    counts = torch.ones(64)
    dead = torch.tensor([3, 10, 63])
    counts[dead] = 0
    z_flat = torch.randn(50, 16) + 100.0  # far from every code, so moved rows are obvious
    assert cb.restart_dead_codes(counts, z_flat) == 3
    after = cb.embedding.weight.detach()
    live = torch.ones(64, dtype=torch.bool)
    live[dead] = False
    assert torch.equal(after[live], before[live])
    for i in dead:  # each dead code is now one of the encoder outputs
        assert (after[i] == z_flat).all(dim=1).any()
    assert cb.restart_dead_codes(torch.ones(64), z_flat) == 0


@pytest.mark.parametrize("k", [1, 5, 64])
def test_codebook_usage_uniform(k):
    indices = torch.arange(k).repeat(7)
    counts, usage, perplexity = codebook_usage(indices, 64)
    assert counts.shape == (64,) and counts[:k].eq(7).all() and counts[k:].eq(0).all()
    assert usage == pytest.approx(k / 64)
    assert perplexity == pytest.approx(k, rel=1e-5)


def test_codebook_usage_skewed():
    _, usage, perplexity = codebook_usage(torch.tensor([0, 0, 0, 1]), 4)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert usage == 0.5 and perplexity == pytest.approx(math.exp(entropy), rel=1e-5)


# ----------------------------------------------------------------------------- learning

def test_tiny_vqgan_loss_goes_down(vq_tiny_cfg):
    """The training recipe in small: Adam on the autoencoder loss, dead codes restarted
    from encoder outputs every 10 steps (without restarts the codebook term swings)."""
    vq = tiny_vqgan(vq_tiny_cfg)
    tc = vq_tiny_cfg["training"]
    opt = torch.optim.Adam(vq.parameters(), lr=tc["learning_rate"], betas=tuple(tc["betas"]))
    x = images(4, vq_tiny_cfg)
    counts = torch.zeros(vq.num_codebook_vectors)
    losses = []
    for step in range(1, 31):
        x_rec, indices, q_loss = vq(x)
        loss, _ = generator_loss(x, x_rec, q_loss, None, None, 0.0, tc["l2_weight"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        counts += torch.bincount(indices.flatten(), minlength=len(counts))
        if step % 10 == 0:
            with torch.no_grad():
                z = vq.quant_conv(vq.encoder(x)).permute(0, 2, 3, 1).flatten(0, 2)  # (B*h*w, D)
            vq.codebook.restart_dead_codes(counts, z)
            counts.zero_()
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses
