"""The approximate int8 path: every Linear of the transformer becomes a dynamic int8 linear,
the logits stay close to fp32's, and the CLI allows it on CPU fp32 only."""
import pytest
import torch

from inpainting import load_maskgit
from models.Transformer import BidirectionalTransformer
from models.Transformer.int8 import quantize_linears
from models.Transformer.packed import Linear
from utils import UserError


def tiny_transformer(seed: int = 0) -> BidirectionalTransformer:
    torch.manual_seed(seed)
    return BidirectionalTransformer(num_image_tokens=16, num_codebook_vectors=32, dim=64,
                                    n_layers=2, hidden_dim=128, num_heads=4).eval()


@torch.inference_mode()
def test_int8_linears_stay_close_to_fp32():
    reference, quantized = tiny_transformer(), quantize_linears(tiny_transformer())
    assert not any(isinstance(m, Linear) for m in quantized.modules())
    tokens = torch.randint(0, 33, (2, 16), generator=torch.Generator().manual_seed(1))
    expected, got = reference(tokens), quantized(tokens)
    assert got.shape == expected.shape and not torch.equal(got, expected)  # approximate
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.parametrize("device, precision", [("cpu", "bf16"), ("cuda", "fp32")])
def test_int8_is_a_cpu_fp32_path(device, precision):
    with pytest.raises(UserError, match="--int8 is a CPU fp32 path"):
        load_maskgit("unused.pt", device=device, precision=precision, int8=True)
