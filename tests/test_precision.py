"""The precision policy, on every kind of machine, with torch's hardware queries mocked."""
import pytest
import torch

from runtime import precision
from runtime.precision import (channels_last, choose_precision, cpu_native_bf16, fused_attention,
                               memory_format, packed_linears, resolve_precision)

CPU = torch.device("cpu")
# (ATen capability, oneDNN built, oneDNN bf16 check, AVX512-BF16 flag, AMX flag, machine)
MACHINES = {
    "sapphire rapids (AMX)": ("AVX512", True, True, True, True, "x86_64"),
    "zen 4 (AVX512-BF16)": ("AVX512", True, True, True, False, "x86_64"),
    "skylake (AVX512, no bf16)": ("AVX512", True, True, False, False, "x86_64"),
    "epyc (AVX2)": ("AVX2", True, False, False, False, "x86_64"),
    "AMX forced to AVX2 (ATEN_CPU_CAPABILITY=avx2)": ("AVX2", True, True, True, True, "x86_64"),
    "arm with bf16": ("DEFAULT", True, True, False, False, "aarch64"),
    "arm without bf16": ("DEFAULT", True, False, False, False, "aarch64"),
    # torch's macOS arm64 wheels have no oneDNN; M2 and later have the bf16 extension
    "apple silicon (no oneDNN)": ("DEFAULT", False, True, False, False, "arm64"),
    # torch 2.4 has no query for either flag (None: the query is absent)
    "sapphire rapids, torch 2.4": ("AVX512", True, True, None, None, "x86_64"),
}
EXPECTED = {"sapphire rapids (AMX)": "bf16", "zen 4 (AVX512-BF16)": "bf16",
            "skylake (AVX512, no bf16)": "fp32", "epyc (AVX2)": "fp32",
            "AMX forced to AVX2 (ATEN_CPU_CAPABILITY=avx2)": "fp32", "arm with bf16": "bf16",
            "arm without bf16": "fp32", "apple silicon (no oneDNN)": "fp32",
            "sapphire rapids, torch 2.4": "fp32"}


@pytest.fixture
def machine(monkeypatch):
    """Make torch report the named machine; each test starts with nothing said yet."""
    monkeypatch.setattr(precision, "_SAID", set())

    def use(name):
        cap, built, onednn, avx512_bf16, amx, arch = MACHINES[name]
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: cap)
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: built)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
        for query, flag in [("_is_avx512_bf16_supported", avx512_bf16), ("_is_amx_tile_supported", amx)]:
            if flag is None:
                monkeypatch.delattr(torch.cpu, query, raising=False)
            else:
                monkeypatch.setattr(torch.cpu, query, lambda flag=flag: flag, raising=False)
        monkeypatch.setattr(precision.platform, "machine", lambda: arch)
    return use


@pytest.mark.parametrize("name", MACHINES)
def test_auto_on_every_cpu(machine, name):
    machine(name)
    chosen, reason = choose_precision("auto", CPU)
    assert chosen == EXPECTED[name]
    assert cpu_native_bf16() == (chosen == "bf16")
    if name != "sapphire rapids, torch 2.4":
        assert reason.startswith("auto: the CPU has " + ("native" if chosen == "bf16" else "no native"))


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert choose_precision("auto", torch.device("cuda"))[0] == expected


@pytest.mark.parametrize("name", MACHINES)
@pytest.mark.parametrize("asked", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_is_kept(machine, name, asked):
    machine(name)
    assert choose_precision(asked, CPU) == (asked, "as configured")


def test_unknown_precision_is_a_user_error():
    with pytest.raises(precision.UserError, match="unknown precision 'int4'; choose one of auto"):
        choose_precision("int4", CPU)


def test_the_choice_and_its_reason_are_printed_once(machine, capsys):
    machine("epyc (AVX2)")
    assert resolve_precision("auto", CPU) == resolve_precision("auto", CPU) == "fp32"
    out = capsys.readouterr()
    assert out.out.count("precision: fp32 (auto: the CPU has no native bf16 (AVX2, no native bf16)") == 1
    assert out.err == ""


def test_explicit_bf16_without_native_bf16_runs_and_warns_once(machine, capsys):
    machine("epyc (AVX2)")
    assert [resolve_precision("bf16", CPU) for _ in range(3)] == ["bf16"] * 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: bf16 on this CPU (AVX2, no native bf16) "
                                               "is emulated and runs many times slower than fp32")


def test_a_torch_without_the_bf16_queries_says_so_and_keeps_fp32(machine, capsys):
    machine("sapphire rapids, torch 2.4")
    assert resolve_precision("auto", CPU) == "fp32"
    assert capsys.readouterr().out == (
        f"precision: fp32 (auto: torch {torch.__version__} cannot tell whether this AVX512 CPU "
        f"has native bf16; torch 2.5 or newer can)\n")
    assert resolve_precision("bf16", CPU) == "bf16"
    assert capsys.readouterr().err.startswith(
        f"warning: bf16 on this CPU (AVX512, bf16 unknown to torch {torch.__version__}) may be "
        f"emulated, and then runs many times slower than fp32")


def test_explicit_bf16_with_native_bf16_does_not_warn(machine, capsys):
    machine("sapphire rapids (AMX)")
    assert resolve_precision("bf16", CPU) == "bf16"
    assert capsys.readouterr().err == ""


def test_cpu_kind_names_the_vector_extension(machine):
    for name, kind in [("sapphire rapids (AMX)", "AMX, native bf16"),
                       ("zen 4 (AVX512-BF16)", "AVX512-BF16, native bf16"),
                       ("skylake (AVX512, no bf16)", "AVX512, no native bf16"),
                       ("epyc (AVX2)", "AVX2, no native bf16")]:
        machine(name)
        assert precision.cpu_kind() == kind


def test_kernels_follow_the_precision(machine):
    cuda = torch.device("cuda")
    machine("sapphire rapids (AMX)")
    assert fused_attention(CPU, "bf16", training=False)  # flash's kernels use the AMX tiles
    machine("zen 4 (AVX512-BF16)")
    assert not fused_attention(CPU, "bf16", training=False)  # 16 heads' scores at a time: 1.15x
    assert not fused_attention(CPU, "bf16", training=True)  # the flash backward is slower in bf16
    assert fused_attention(CPU, "fp32", training=False)  # 1.18x on AVX2, the same tokens
    assert fused_attention(CPU, "fp32", training=True)  # without dropout: 1.1-1.7x a layer
    assert not fused_attention(CPU, "fp32", training=True, attn_drop=0.1)  # the math path
    assert fused_attention(CPU, "fp32", training=False, attn_drop=0.1)  # no dropout in eval
    assert fused_attention(cuda, "bf16", training=True) and fused_attention(cuda, "fp16", training=False)
    assert not fused_attention(cuda, "fp32", training=False)


def test_packing_follows_the_policy(machine):
    from models.Transformer.packed import can_pack
    has_kernel = hasattr(torch.ops.mkldnn, "_linear_pointwise")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        machine("skylake (AVX512, no bf16)")  # oneDNN would emulate bf16 here: no packing
        assert not can_pack(CPU)
        machine("sapphire rapids (AMX)")
        assert can_pack(CPU) == has_kernel
    with torch.no_grad():  # fp32: packed where measured faster, on AVX2
        assert not can_pack(CPU)
        machine("epyc (AVX2)")
        assert can_pack(CPU) == has_kernel
    assert not can_pack(CPU)  # autograd on: never packed


@pytest.mark.parametrize("name, fp32, bf16", [("epyc (AVX2)", True, False),
                                              ("sapphire rapids (AMX)", False, True),
                                              ("skylake (AVX512, no bf16)", False, False),
                                              ("arm with bf16", False, False)])
def test_packed_linears_on_every_cpu(machine, name, fp32, bf16):
    machine(name)
    assert packed_linears(CPU, "fp32") == fp32 and packed_linears(CPU, "bf16") == bf16
    assert not packed_linears(torch.device("cuda"), "bf16")


def test_no_channels_last_without_onednn(machine):
    machine("apple silicon (no oneDNN)")  # no reorder to save; 0.89x a training step
    for training in (False, True):
        assert not channels_last(CPU, "fp32", training) and not channels_last(CPU, "bf16", training)
    assert memory_format(CPU, "fp32", training=True) == torch.contiguous_format


def test_channels_last_follows_the_precision():
    assert channels_last(CPU, "fp32")  # measured faster on AVX2 (benchmarks/bench_fast_paths.py)
    assert not channels_last(CPU, "bf16") and not channels_last(torch.device("cuda"), "fp32")


@pytest.mark.parametrize("name, bf16_training", [("epyc (AVX2)", False), ("sapphire rapids (AMX)", True),
                                                  ("skylake (AVX512, no bf16)", False)])
def test_channels_last_training_in_fp32_and_native_bf16(machine, name, bf16_training):
    machine(name)
    assert channels_last(CPU, "bf16", training=True) == bf16_training  # 1.74x a stage-1 step on AMX
    assert memory_format(CPU, "bf16", training=True) == (
        torch.channels_last if bf16_training else torch.contiguous_format)
    assert memory_format(CPU, "fp32", training=True) == torch.channels_last  # 1.13x on an AVX2 EPYC
    assert not channels_last(torch.device("cuda"), "bf16", training=True)
    assert not channels_last(torch.device("cuda"), "fp32", training=True)


@torch.inference_mode()
def test_channels_last_vqgan_gives_the_same_tokens_and_images():
    from models.VQGAN_Transformer import load_vqgan
    from utils import REPO_ROOT
    torch.manual_seed(0)
    nchw = load_vqgan(REPO_ROOT / "configs" / "VQGAN_tiny.yml")[0]
    nhwc = load_vqgan(REPO_ROOT / "configs" / "VQGAN_tiny.yml")[0]
    nhwc.load_state_dict(nchw.state_dict())
    nhwc.to(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    tokens = nchw.encode(images)[1]
    assert torch.equal(nhwc.encode(images)[1], tokens)
    assert nhwc.decode_indices(tokens).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc.decode_indices(tokens), nchw.decode_indices(tokens), rtol=0, atol=1e-5)
