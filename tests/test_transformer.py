"""Stage 2 network: attention against a by-hand reference, fused == hand-written,
the lab's parameter names, the logits' shape and the packed weights (bf16, and fp32 where
the policy packs it)."""
import contextlib

import pytest
import torch

from models.Transformer import BidirectionalTransformer, MultiHeadAttention
from models.Transformer import attention, packed
from models.Transformer.packed import Linear, packed_weights
from runtime.precision import cpu_native_bf16, packed_linears

K, N, DIM, HEADS = 16, 12, 32, 4


def reference_attention(attn: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """Multi-head attention written out head by head from the module's weights."""
    hd = DIM // HEADS
    wq, wk, wv = attn.qkv.weight.chunk(3)  # each (DIM, DIM): rows = output features
    bq, bk, bv = attn.qkv.bias.chunk(3)
    heads = []
    for h in range(HEADS):
        rows = slice(h * hd, (h + 1) * hd)
        q = x @ wq[rows].t() + bq[rows]  # (B, N, hd)
        k = x @ wk[rows].t() + bk[rows]
        v = x @ wv[rows].t() + bv[rows]
        weights = torch.softmax(q @ k.transpose(1, 2) / hd ** 0.5, dim=-1)  # (B, N, N)
        heads.append(weights @ v)
    return attn.proj(torch.cat(heads, dim=-1))  # heads concatenated in order -> (B, N, DIM)


@pytest.mark.parametrize("fused", [False, True])
def test_attention_matches_reference(fused):
    torch.manual_seed(0)
    attn = MultiHeadAttention(DIM, HEADS, attn_drop=0.5, fused=fused).eval()
    x = torch.randn(3, N, DIM)
    with torch.no_grad():
        assert torch.allclose(attn(x), reference_attention(attn, x), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hand_written_chunks_give_the_values_of_one_pass(monkeypatch, dtype):
    """The hand-written path takes the (batch x head) slices a few at a time: 5 heads per
    chunk over 3 x 4 slices leaves a short last chunk; the output is bit-equal to one pass."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(DIM, HEADS, attn_drop=0.0).eval()
    x = torch.randn(3, N, DIM)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        whole = attn(x)
        monkeypatch.setattr(attention, "SCORES_PER_CHUNK", 5 * N * N)
        chunked = attn(x)
    assert chunked.shape == (3, N, DIM) and torch.equal(chunked, whole)
    assert torch.allclose(chunked.float(), reference_attention(attn, x),
                          atol=1e-5 if dtype == torch.float32 else 5e-2)


def test_fused_and_hand_written_agree():
    torch.manual_seed(0)
    model = BidirectionalTransformer(N, K, DIM, n_layers=2, hidden_dim=64, num_heads=HEADS).eval()
    tokens = torch.randint(0, K + 1, (3, N))
    with torch.no_grad():
        plain = model(tokens)
        for block in model.blocks:
            block.Attention.fused = True
        fused = model(tokens)
    assert torch.allclose(plain, fused, atol=1e-5)


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    attn = MultiHeadAttention(DIM, HEADS, attn_drop=0.5)
    x = torch.randn(2, N, DIM)
    attn.eval()
    assert torch.equal(attn(x), attn(x))
    attn.train()
    assert not torch.allclose(attn(x), attn(x))


def test_lab_parameter_names_and_shapes():
    model = BidirectionalTransformer(N, K, DIM, n_layers=2, hidden_dim=64, num_heads=HEADS)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["tok_emb.weight"] == (K + 1, DIM)  # K codes + [MASK]
    assert shapes["pos_emb"] == (N, DIM)
    assert shapes["bias"] == (N, K + 1)
    for name in ["blocks.0.Attention.qkv.weight", "blocks.0.Attention.proj.weight",
                 "blocks.0.LayerNorm1.weight", "blocks.0.LayerNorm2.weight",
                 "blocks.0.MLP.0.weight", "blocks.0.MLP.2.weight", "blocks.1.MLP.2.bias",
                 "Token_Prediction.0.weight", "Token_Prediction.2.weight", "LN.weight", "LN.bias"]:
        assert name in shapes, name
    assert shapes["blocks.0.MLP.0.weight"] == (64, DIM)
    assert not any(k.startswith("blocks.2.") for k in shapes)


def test_logits_shape_and_bidirectional():
    torch.manual_seed(0)
    model = BidirectionalTransformer(N, K, DIM, n_layers=2, hidden_dim=64, num_heads=HEADS).eval()
    tokens = torch.randint(0, K, (2, N))
    tokens[:, 1] = (tokens[:, 0] + 1) % K  # the swap below must change the input
    with torch.no_grad():
        logits = model(tokens)
        assert logits.shape == (2, N, K + 1)
        changed = tokens.clone()
        changed[:, -1] = K  # mask the last token: the first position must see it (no causal mask)
        assert not torch.allclose(model(changed)[:, 0], logits[:, 0])
        # positions matter: the model is not permutation-equivariant
        swapped = tokens[:, [1, 0] + list(range(2, N))]
        assert not torch.allclose(model(swapped)[:, 0], logits[:, 1])


def test_logits_at_chosen_positions_only():
    torch.manual_seed(0)
    model = BidirectionalTransformer(N, K, DIM, n_layers=2, hidden_dim=64, num_heads=HEADS).eval()
    tokens = torch.randint(0, K + 1, (3, N))
    only = torch.rand(3, N) < 0.3
    only[2] = False  # an image with nothing to predict
    with torch.no_grad():
        full, part = model(tokens), model.logits_at(tokens, only)
    assert part.shape == (only.sum(), K + 1)
    torch.testing.assert_close(part, full[only], atol=1e-6, rtol=1e-6)


needs_native_bf16 = pytest.mark.skipif(not cpu_native_bf16(), reason="no native bf16: packing is a no-op")


def packed_count(model) -> int:
    return sum(m.packed is not None for m in model.modules() if isinstance(m, Linear))


@needs_native_bf16
def test_packed_weights_give_the_autocast_logits():
    torch.manual_seed(0)
    model = BidirectionalTransformer(N, K, DIM, n_layers=2, hidden_dim=64, num_heads=HEADS).eval()
    tokens = torch.randint(0, K + 1, (3, N))
    only = torch.rand(3, N) < 0.5
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        plain, plain_only = model(tokens), model.logits_at(tokens, only)
        with packed_weights(model, rows=tokens.numel()):
            assert packed_count(model) == 2 * 4 + 1  # per block qkv, proj and 2 MLP; the head
            packed, packed_only = model(tokens), model.logits_at(tokens, only)
    assert packed_count(model) == 0  # unpacked on exit
    assert packed.dtype == plain.dtype
    assert torch.equal(packed, plain) and torch.equal(packed_only, plain_only)


@pytest.mark.parametrize("setting", ["fp32", "grad", "float16"])
def test_packing_only_for_cpu_inference_where_the_policy_packs(setting):
    model = BidirectionalTransformer(N, K, DIM, n_layers=1, hidden_dim=64, num_heads=HEADS)
    autocast = (contextlib.nullcontext() if setting == "fp32"
                else torch.autocast("cpu", torch.float16 if setting == "float16" else torch.bfloat16))
    grad = torch.enable_grad() if setting == "grad" else torch.inference_mode()
    fp32_packed = (setting == "fp32" and packed_linears(torch.device("cpu"), "fp32")  # AVX2 CPUs
                   and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
    with grad, autocast, packed_weights(model, rows=N):
        assert packed_count(model) == (4 + 1 if fp32_packed else 0)  # the block's 4 and the head
        model(torch.randint(0, K + 1, (1, N))).sum()  # runs either way



@pytest.mark.skipif(not hasattr(torch.ops.mkldnn, "_linear_pointwise"), reason="no oneDNN packed linear")
def test_packed_fp32_weights_give_the_fp32_logits(monkeypatch):
    """fp32 packing (the policy's choice on AVX2 CPUs, forced here): oneDNN's kernel, so the
    logits match nn.Linear's to rounding, not bit for bit."""
    monkeypatch.setattr(packed, "packed_linears", lambda device, precision: precision == "fp32")
    torch.manual_seed(0)
    model = BidirectionalTransformer(N, K, DIM, n_layers=2, hidden_dim=64, num_heads=HEADS).eval()
    tokens, only = torch.randint(0, K + 1, (3, N)), torch.rand(3, N) < 0.5
    with torch.inference_mode():
        plain = model.logits_at(tokens, only)
        with packed_weights(model, rows=tokens.numel()):
            assert packed_count(model) == 2 * 4 + 1
            fp32 = model.logits_at(tokens, only)
        with packed.unpacked(), packed_weights(model, rows=tokens.numel()):
            assert packed_count(model) == 0  # the plain path, on request
    assert fp32.dtype == torch.float32
    torch.testing.assert_close(fp32, plain, rtol=0, atol=1e-5)
