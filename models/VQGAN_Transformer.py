"""MaskGit: a frozen VQGAN tokenizer plus the bidirectional transformer over its tokens."""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from runtime.checkpoints import load_checkpoint
from utils import UserError, check_positive, check_probability, load_config, require_keys, resolve_path
from .compositing import harmonic_fill, poisson_blend
from .decoding import iterative_decode, token_unknown_from_pixels
from .schedules import gamma_func
from .Transformer import BidirectionalTransformer
from .VQGAN import build_vqgan, load_conditional_vqgan
from .VQGAN.conditional import load_tokenizer_weights

MODEL_KEYS = ["VQ_Configs", "num_image_tokens", "num_codebook_vectors", "choice_temperature",
              "gamma_type", "Transformer_param"]
TRANSFORMER_KEYS = ["num_image_tokens", "num_codebook_vectors", "dim", "n_layers", "hidden_dim"]
TRANSFORMER_OPTIONAL = ["num_heads", "attn_drop", "dropout", "fused_attention"]
# how a masked image becomes the tokens decoding starts from (`masked_tokens`) when the
# config does not say: the lab's way, the masked image encoded as given and every token
# that touches a hole re-predicted. Our recipes fill the holes first (README: lab-mode FID
# 36.3 against 51.7 on cat faces, the same checkpoints).
HOLE_FILLS = ("harmonic", "none")
HOLE_FILL, MIN_KNOWN, REENCODE = "none", 1.0, 0


def load_vqgan(config_path, ckpt_path=None) -> tuple[nn.Module, dict]:
    """Build a VQGAN (the lab's or a CompactVQGAN, as the config says) and load its weights.
    Returns (model in eval mode, its config).

    Accepts our training checkpoints (a dict holding 'model' and 'config', which wins
    over `config_path`, which may then be None) and the lab's plain state_dict VQGAN.pt
    (built from `config_path`);
    a plain checkpoint into a conditional config names the branch's new keys.
    """
    config_path = resolve_path(config_path) if config_path else None
    ckpt_path = resolve_path(ckpt_path) if ckpt_path else None
    state = load_checkpoint(ckpt_path) if ckpt_path else None
    if state is not None and "model" in state and "config" in state:
        cfg, state = state["config"], state["model"]
    elif config_path is None:
        raise UserError(f"{ckpt_path or 'no VQGAN checkpoint given'}: no VQGAN config to build it from "
                        f"(a plain state_dict such as the lab's VQGAN.pt carries none); give its config, "
                        f"e.g. configs/VQGAN.yml")
    else:
        cfg = load_config(config_path)
    model = build_vqgan(cfg, where=str(config_path or ckpt_path))
    if state is not None:
        load_tokenizer_weights(model, state, ckpt_path)
    return model.eval().requires_grad_(False), cfg


def build_transformer(params: dict, where: str) -> BidirectionalTransformer:
    require_keys(params, TRANSFORMER_KEYS, f"{where} Transformer_param")
    unknown = set(params) - set(TRANSFORMER_KEYS) - set(TRANSFORMER_OPTIONAL)
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(sorted(unknown))} in {where} Transformer_param")
    return BidirectionalTransformer(**params)


class MaskGit(nn.Module):
    def __init__(self, configs: dict, where: str = "MaskGit config"):
        """`configs` is the `model_param` section; the VQGAN comes from its VQ_Configs
        (VQ_CKPT_path null gives an untrained VQGAN, for tests)."""
        super().__init__()
        require_keys(configs, MODEL_KEYS, where)
        vq = configs["VQ_Configs"]
        require_keys(vq, ["VQ_config_path", "VQ_CKPT_path"], f"{where} VQ_Configs")
        self.vq_ckpt = vq["VQ_CKPT_path"]
        vqgan, self.vq_config = load_vqgan(vq["VQ_config_path"], self.vq_ckpt)
        self.vqgan = vqgan
        self.conditional_vqgan = None  # a mask-conditioned decoder of the same tokens, when attached
        self.num_image_tokens = configs["num_image_tokens"]
        self.mask_token_id = configs["num_codebook_vectors"]
        self.choice_temperature = configs["choice_temperature"]
        self.temperature = configs.get("temperature", 1.0)  # token sampling; 0 = most likely
        check_positive({"temperature": self.temperature,
                        "choice_temperature": self.choice_temperature}, where, strict=False)
        self.gamma = self.gamma_func(configs["gamma_type"])
        self.set_token_rule(configs.get("hole_fill", HOLE_FILL), configs.get("min_known", MIN_KNOWN), where,
                            configs.get("reencode", REENCODE))
        self.transformer = build_transformer(configs["Transformer_param"], where)
        grid = vqgan.latent_resolution
        if (vqgan.num_codebook_vectors != self.mask_token_id
                or grid * grid != self.num_image_tokens
                or self.transformer.mask_token_id != self.mask_token_id
                or self.transformer.num_image_tokens != self.num_image_tokens):
            raise UserError(f"{where}: the VQGAN gives {grid}x{grid} tokens from "
                            f"{vqgan.num_codebook_vectors} codes, but the transformer expects "
                            f"{self.num_image_tokens} tokens from {self.mask_token_id} codes")

    gamma_func = staticmethod(gamma_func)

    def set_token_rule(self, hole_fill: str, min_known: float, where: str, reencode: int = REENCODE) -> None:
        """How `masked_tokens` reads a masked image: `hole_fill` "harmonic" encodes it with
        each hole filled by the harmonic function of its edge (the paint in the holes never
        reaches the encoder, whose receptive field reaches past a token's own patch), "none"
        encodes it as given (the lab's way); a token is kept when at least `min_known` of its
        patch's pixels are known (1: every token that touches a hole is re-predicted).
        After decoding, `inpaint` runs `reencode` passes of `reencode_pass`, each encoding
        the image again with its holes filled by the decode; 0 is the lab's way."""
        if hole_fill not in HOLE_FILLS:
            raise UserError(f"{where}: hole_fill {hole_fill!r} is not one of {', '.join(HOLE_FILLS)}")
        check_positive({"min_known": min_known}, where)  # with the next: a fraction in (0, 1]
        check_probability({"min_known": min_known}, where)
        if isinstance(reencode, bool) or not isinstance(reencode, int) or reencode < 0:
            raise UserError(f"{where}: reencode {reencode!r} must be a whole number of passes >= 0")
        self.hole_fill, self.min_known, self.reencode = hole_fill, float(min_known), reencode

    def train(self, mode: bool = True):
        super().train(mode)
        self.vqgan.eval()  # stage 1 stays frozen
        if self.conditional_vqgan is not None:
            self.conditional_vqgan.eval()
        return self

    def attach_conditional_vqgan(self, ckpt_path) -> None:
        """Decode through the conditional VQGAN of `ckpt_path` (training_conditional.py) when
        asked; a one-line UserError unless it is one and shares this model's tokenizer."""
        self.conditional_vqgan, _ = load_conditional_vqgan(ckpt_path, self.vqgan)

    @torch.inference_mode()
    def decode_tokens(self, indices: torch.Tensor, condition=None) -> torch.Tensor:
        """indices (B, N) in [0, K) -> images (B, 3, R, R) normalised: by the plain VQGAN, or
        with `condition` = (images (B, 3, R, R) normalised, known (B, 1, R, R) 1 = known) by
        the attached conditional VQGAN from those images' known pixels."""
        if condition is None:
            return self.vqgan.decode_indices(indices)
        if self.conditional_vqgan is None:
            raise UserError("conditional decoding needs a conditional VQGAN; pass --conditional-vqgan CKPT")
        return self.conditional_vqgan.decode_indices(indices, *condition)

    @torch.no_grad()
    def encode_to_z(self, x: torch.Tensor):
        """x (B, 3, R, R) normalised -> z_q (B, D, r, r), indices (B, r*r) in [0, K)."""
        z_q, indices, _ = self.vqgan.encode(x)
        return z_q, indices

    def forward(self, indices: torch.Tensor, masking: str = "maskgit", generator=None,
                region: torch.Tensor | None = None):
        """Masked visual token modelling on indices (B, N) in [0, K).

        'maskgit': per sample r ~ U(0, 1), ceil(gamma(r) * M) random tokens masked out of
        the M tokens of `region` (B, N) bool (default: all N), and the loss counts masked
        tokens only. A region shaped like an inpainting hole trains exactly the situation
        decoding starts from. 'bernoulli': each token masked with p = 0.5, loss on every
        token (the variant common in lab reports).
        Returns (logits (T, K+1), target (T,), counted (B, N) bool): the T tokens the loss
        counts, in row-major order. Logits are computed at those tokens only: with MaskGIT
        masking a third of the prediction head's and the cross-entropy's work (more inside
        hole regions) would go to tokens the loss never reads.
        """
        b, n = indices.shape
        dev = indices.device
        if masking == "maskgit":
            if region is None:
                region = torch.ones(b, n, dtype=torch.bool, device=dev)
            size = region.sum(-1)  # (B,)
            r = torch.rand(b, device=dev, generator=generator)
            n_mask = torch.minimum(torch.ceil(self.gamma(r) * size).long().clamp_min(1), size)
            scores = torch.rand(b, n, device=dev, generator=generator).masked_fill(~region, 2.0)
            rank = scores.argsort(dim=-1).argsort(dim=-1)  # tokens outside the region rank last
            masked = rank < n_mask.unsqueeze(-1)  # (B, N)
        elif masking == "bernoulli":
            masked = torch.rand(b, n, device=dev, generator=generator) < 0.5
        else:
            raise UserError(f"unknown masking '{masking}'; choose maskgit or bernoulli")
        inputs = torch.where(masked, self.mask_token_id, indices)
        if masking == "bernoulli":  # every token counts: the full forward, rows in order
            logits = self.transformer.logits_at(inputs).flatten(0, 1)
            return logits, indices.flatten(), torch.ones_like(masked)
        return self.transformer.logits_at(inputs, masked), indices[masked], masked

    @staticmethod
    def loss(logits, target, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy of logits (T, K+1) against target (T,); 0 when T = 0."""
        ce = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing,
                             reduction="sum")
        return ce / max(len(target), 1)

    def decoding(self, temperature: float | None = None,
                 choice_temperature: float | None = None) -> tuple[float, float]:
        """(temperature, choice_temperature) for decoding: each the config's unless given."""
        return (self.temperature if temperature is None else temperature,
                self.choice_temperature if choice_temperature is None else choice_temperature)

    @torch.inference_mode()
    def inpaint(self, images: torch.Tensor, known: torch.Tensor, total_iter: int,
                generators: list[torch.Generator], gamma=None, sweet_spot: int = -1,
                record: bool = False, autocast=None, temperature: float | None = None,
                choice_temperature: float | None = None, conditional: bool = False):
        """Fill the holes of `images` (B, 3, R, R) normalised, `known` (B, 1, R, R) 1 = known:
        encode them, mask the tokens that touch a hole, and `complete` those.

        Returns what `complete` returns, after `self.reencode` passes of `reencode_pass`
        (then the tokens are the last pass's). `autocast` (a context factory, e.g. bf16)
        covers the VQGAN encode too. `conditional` decodes through the attached conditional
        VQGAN, which keeps the known pixels of `images` itself.
        """
        tokens = self.masked_tokens(images, known, autocast)
        condition = (images, known) if conditional else None
        out, final, history = self.complete(tokens, total_iter, generators, gamma, sweet_spot, record,
                                            autocast, temperature, choice_temperature, condition)
        for _ in range(self.reencode):
            out, final = self.reencode_pass(out, images, known, autocast, condition)
        return out, final, history

    @torch.inference_mode()
    def reencode_pass(self, decoded: torch.Tensor, images: torch.Tensor, known: torch.Tensor,
                      autocast=None, condition=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode `images` (B, 3, R, R) normalised with their holes (`known` (B, 1, R, R) 0)
        filled by `decoded`, Poisson-blended so the fill meets the known pixels without a
        seam, and decode every token again. Returns (images (B, 3, R, R) normalised, tokens
        (B, N)). The encoder sees the known pixels next to the decode's guess instead of a
        smooth fill, so the tokens of the known region come out nearer the image's own; the
        output is still all VQGAN decode, no pixel is pasted into it."""
        autocast = autocast or contextlib.nullcontext
        filled = poisson_blend(decoded, images, known, pixel_range=None)  # linear: commutes with the normalisation
        with autocast():
            _, tokens = self.encode_to_z(filled)
            out = self.decode_tokens(tokens, condition)
        return out.float(), tokens

    @torch.inference_mode()
    def masked_tokens(self, images: torch.Tensor, known: torch.Tensor, autocast=None) -> torch.Tensor:
        """The token ids (B, N) of `images`, with [MASK] (K) at every token that the token
        rule (`set_token_rule`) re-predicts under `known` (B, 1, R, R), 1 = known."""
        if self.hole_fill == "harmonic":  # linear, so it commutes with the normalisation
            images = harmonic_fill(images.float(), 1 - known.float())
        with (autocast or contextlib.nullcontext)():
            _, indices = self.encode_to_z(images)
        unknown = token_unknown_from_pixels(known, self.vqgan.latent_resolution, self.min_known)
        return torch.where(unknown, self.mask_token_id, indices)

    @torch.inference_mode()
    def complete(self, tokens: torch.Tensor, total_iter: int, generators: list[torch.Generator],
                 gamma=None, sweet_spot: int = -1, record: bool = False, autocast=None,
                 temperature: float | None = None, choice_temperature: float | None = None,
                 condition=None):
        """Decode the [MASK] positions of `tokens` (B, N) iteratively and the tokens to images.

        Returns (images (B, 3, R, R) normalised, final tokens (B, N), history of
        (masked tokens, sampled tokens) per step when `record`). `autocast` (a context
        factory, e.g. bf16) covers the transformer and the VQGAN decode. `gamma`,
        `temperature` and `choice_temperature` default to the config's; `condition` is as
        for `decode_tokens`.
        """
        autocast = autocast or contextlib.nullcontext
        temperature, choice_temperature = self.decoding(temperature, choice_temperature)
        final, history = iterative_decode(self.transformer, tokens, total_iter, gamma or self.gamma,
                                          choice_temperature, generators, sweet_spot, record,
                                          autocast, temperature)
        with autocast():
            out = self.decode_tokens(final, condition)
        return out.float(), final, history
