"""Feature matching on our own PatchGAN: the discriminator's activations, a loss that is zero
on a perfect reconstruction and pulls only the reconstruction, and a train step that uses it
while the GAN is on and not before."""
import pytest
import torch
import yaml

import training_vqgan
from models.VQGAN import build_vqgan
from models.VQGAN.discriminator import Discriminator
from models.VQGAN.losses import feature_matching_loss
from utils import UserError

from test_compact_vqgan import tiny_compact_cfg


def test_discriminator_features_are_its_activations_and_logits_unchanged():
    torch.manual_seed(0)
    disc = Discriminator(3, 8, 2).eval()
    x = torch.randn(2, 3, 64, 64)
    logits, feats = disc(x, features=True)
    assert torch.equal(logits, disc(x))
    # one activation per LeakyReLU: after the stride-2 stem, the stride-2 layer, the stride-1 one
    assert [tuple(f.shape) for f in feats] == [(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 15, 15)]
    with torch.no_grad():
        assert torch.equal(feats[0], disc.model[1](disc.model[0](x)))  # the stem's LeakyReLU


def test_feature_matching_is_zero_on_equal_inputs_and_pulls_only_the_fake():
    torch.manual_seed(0)
    disc = Discriminator(3, 8, 2)
    real = torch.randn(2, 3, 64, 64)
    fake = real.clone().requires_grad_(True)
    assert feature_matching_loss(disc(fake, features=True)[1], disc(real, features=True)[1]) == 0
    real.requires_grad_(True)
    fake2 = (real.detach() + 0.5 * torch.randn_like(real)).requires_grad_(True)
    loss = feature_matching_loss(disc(fake2, features=True)[1], disc(real, features=True)[1])
    assert loss > 0
    loss.backward()
    assert fake2.grad.abs().sum() > 0 and real.grad is None  # the real side is a fixed target
    # by hand: mean over layers of the mean |f - r|
    with torch.no_grad():
        ff, fr = disc(fake2, features=True)[1], disc(real, features=True)[1]
        expected = sum((a - b).abs().mean() for a, b in zip(ff, fr)) / len(ff)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("gan_weight, expect_fm", [(0.0, False), (0.1, True)])
def test_train_step_adds_feature_matching_only_while_the_gan_is_on(gan_weight, expect_fm):
    torch.manual_seed(0)
    vq = build_vqgan(tiny_compact_cfg())
    disc = Discriminator(3, 8, 2)
    opt_ae = torch.optim.Adam(vq.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    trainable = []  # D's weights as the generator's loss is checked, just before its backward
    _, log = training_vqgan.train_step(vq, disc, vq.last_layer, opt_ae, opt_d, scaler, x, gan_weight,
                                       1.0, torch.device("cpu"), "fp32", fm_weight=1.0,
                                       check=lambda loss: trainable.append(
                                           any(p.requires_grad for p in disc.parameters())))
    assert ("fm" in log) == expect_fm
    # frozen for the generator's backward while the GAN is on, trainable again for D's step
    assert trainable == [not expect_fm] and all(p.requires_grad for p in disc.parameters())
    if expect_fm:
        assert log["fm"] > 0 and "d" in log


def test_fm_weight_must_not_be_negative(tmp_path):
    cfg = tiny_compact_cfg()
    cfg["training"]["fm_weight"] = -1.0
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="fm_weight"):
        training_vqgan.main(["--config", str(path), "--out", str(tmp_path / "run"), "--device", "cpu",
                             "--max-steps", "1"])
