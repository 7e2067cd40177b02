"""Stage 1: the VQGAN tokenizers (encoder, codebook, decoder) and their training losses.

`VQGAN` has the lab's module tree (its pretrained VQGAN.pt loads with strict=True);
`CompactVQGAN` is the CPU recipe's own architecture. A config picks one with
`architecture:` (absent means the lab's); `conditional: true` adds the mask-conditioned
decoder branch of conditional.py to either, `fuse_pixels: true` its pixel-space fusion,
`hole_guide: true` its hole-filled input with hole-cell fusion and `hole_residual: true` the
filled mismatch with the known pixels in the output's holes.
"""
from runtime.checkpoints import load_checkpoint
from utils import UserError
from .codebook import Codebook, codebook_usage
from .compact import CompactVQGAN
from .conditional import BRANCH, BRANCH_OPTIONS, load_tokenizer_weights, same_tokens
from .factorized_codebook import FactorizedCodebook
from .vqgan import VQGAN

ARCHITECTURES = {"vqgan": VQGAN, "compact": CompactVQGAN}


def build_vqgan(cfg: dict, where: str = "VQGAN config"):
    """The tokenizer a config describes: `VQGAN` or `CompactVQGAN`."""
    arch = cfg.get("architecture", "vqgan")
    if arch not in ARCHITECTURES:
        raise UserError(f"{where}: unknown architecture '{arch}'; choose one of "
                        f"{', '.join(ARCHITECTURES)}")
    for key in ("conditional", "l2_normalize", *BRANCH_OPTIONS):
        if not isinstance(cfg.get(key, False), bool):
            raise UserError(f"{where}: {key} = {cfg[key]!r} must be true or false")
    return ARCHITECTURES[arch].from_config(cfg, where)


def read_conditional_checkpoint(path) -> dict:
    """A conditional VQGAN checkpoint (training_conditional.py's, holding 'model' with the
    branch's `cond.*` weights and its 'config'), or a one-line UserError saying how to get one."""
    ck = load_checkpoint(path)
    if not (isinstance(ck, dict) and isinstance(ck.get("config"), dict) and ck["config"].get("conditional")
            and isinstance(ck.get("model"), dict) and any(k.startswith(BRANCH) for k in ck["model"])):
        raise UserError(f"{path} holds no conditional decoder (no cond.* weights); train one with "
                        f"training_conditional.py --init <the VQGAN checkpoint>, or leave out the "
                        f"conditional flag")
    return ck


def load_conditional_vqgan(path, tokenizer) -> tuple[VQGAN | CompactVQGAN, dict]:
    """(the conditional VQGAN of checkpoint `path` in eval mode, its config), checked to
    share `tokenizer`'s encoder side, so that the tokens mean to it what they mean to the
    transformer."""
    ck = read_conditional_checkpoint(path)
    vq = build_vqgan(ck["config"], str(path))
    load_tokenizer_weights(vq, ck["model"], path)
    if not same_tokens(vq, tokenizer):
        raise UserError(f"{path}'s encoder and codebook differ from the transformer's VQGAN, so its "
                        f"tokens mean other images; fine-tune the conditional decoder from that VQGAN "
                        f"(training_conditional.py --init <its checkpoint>)")
    return vq.eval().requires_grad_(False), ck["config"]


__all__ = ["VQGAN", "CompactVQGAN", "Codebook", "FactorizedCodebook", "build_vqgan",
           "codebook_usage", "load_conditional_vqgan", "read_conditional_checkpoint"]
