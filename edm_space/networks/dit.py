"""A diffusion transformer F(c_in x_hat, c_noise[, labels]) for [C, H, W] items (DiT with SD3's choices).

The item is cut into p x p patches, each a token (Peebles & Xie 2023, "DiT", Sec. 3.2);
tokens get a fixed 2-D sin-cos position embedding (MAE / DiT) or, with pos="rope",
axial rotary embeddings in the attention (Su et al. 2021; k-diffusion's HDiT, Crowson et
al. 2024); every block is conditioned by adaLN-Zero on the noise embedding plus the label
embedding (DiT Sec. 3.2); queries and keys are RMS-normalized per head (SD3, Esser et al.
2024, Sec. 5.3.2). The modulation and the output layer start at zero, so F = 0 at
initialisation and D = c_skip x_hat for every preset.

Reference shapes (DiT Table 1): DiT-S depth 12, width 384, heads 6; DiT-B depth 12,
width 768, heads 12 (patch 2 on 32x32x4 latents in the paper). The defaults here
(depth 4, width 128, heads 4, patch 2) are a CPU-sized model for 8x8 and 28x28 images.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, unknown
from .embedding import NOISE_MAX_FREQ_OPTION, LabelEmbedding, NoiseEmbedding, SinusoidalNoiseEmbedding
from ..registry import Option

POSITIONS = ("sincos", "rope")
# "dit": the conventions of DiT / MAE / diffusers (position embedding column first, output tokens read as (p, p, C));
# "legacy": those of runs written before (row first, (C, p, p)), which a run without a record of its convention has.
CONVENTIONS = ("dit", "legacy")
NOISE_EMBEDDINGS = ("fourier", "dit")
FREQUENCY_BASE = 10000.0  # of the sin-cos embedding (Vaswani et al. 2017) and of RoPE (Su et al. 2021, eq. 15)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), C p p]: token r*(W/p) + c holds patch (r, c), features ordered (C, p_row, p_col)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: torch.Tensor, patch: int, item_shape: Sequence[int], channels_last: bool = False) -> torch.Tensor:
    """[B, (H/p)(W/p), C p p] -> [B, C, H, W]: the inverse of `patchify`, whose token features are ordered (C, p, p);
    with channels_last the features are read as (p_row, p_col, C), as DiT's and diffusers' final layer writes them."""
    c, h, w = item_shape
    if channels_last:
        x = tokens.reshape(tokens.shape[0], h // patch, w // patch, patch, patch, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], c, h, w)
    x = tokens.reshape(tokens.shape[0], h // patch, w // patch, c, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(tokens.shape[0], c, h, w)


def frequencies(dim: int) -> torch.Tensor:
    """omega_i = 1 / 10000^(2i / dim), i = 0 .. dim/2 - 1 (Vaswani et al. 2017, Sec. 3.5), float64."""
    return FREQUENCY_BASE ** (-2.0 * torch.arange(dim // 2, dtype=torch.float64) / dim)


def grid_positions(rows: int, cols: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column index of every token, in patchify's token order (row-major), float64."""
    row, col = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij")
    return row.reshape(-1), col.reshape(-1)


def sincos_position_embedding(width: int, rows: int, cols: int, column_first: bool = True) -> torch.Tensor:
    """The fixed 2-D sin-cos embedding [rows*cols, width] (MAE, He et al. 2022; DiT Sec. 3.2).

    The first half of the features encodes the column (MAE's get_2d_sincos_pos_embed, whose meshgrid puts
    w first; DiT and diffusers alike), the second half the row, each as [sin(pos * omega_i), cos(pos * omega_i)]
    with omega_i = 1 / 10000^(2i / (width/2)). column_first=False is the row-first order of legacy runs.
    """
    row, col = grid_positions(rows, cols)
    omega = frequencies(width // 2)

    def axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    first, second = (col, row) if column_first else (row, col)
    return torch.cat([axis(first), axis(second)], dim=1)


def axial_rope_angles(head_dim: int, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """Rotation angles [tokens, head_dim/2] of axial RoPE: half the pairs turn with the row, half with the column.

    Each axis owns head_dim/2 dimensions, i.e. head_dim/4 rotation pairs at the
    frequencies omega_i = 1 / 10000^(2i / (head_dim/2)) (RoFormer eq. 15 per axis; HDiT).
    """
    omega = frequencies(head_dim // 2)
    return torch.cat([row[:, None] * omega, col[:, None] * omega], dim=1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., tokens, head_dim] by `angles` [tokens, head_dim/2] (RoFormer eq. 34).

    Within each axis's half of head_dim, dimension j pairs with j + head_dim/4 (the
    rotate-half layout), and the pair turns by its angle.
    """
    quarter = x.shape[-1] // 4
    first, second = x.unflatten(-1, (2, 2, quarter)).unbind(-2)  # [..., tokens, axis, quarter] each
    angles = angles.unflatten(-1, (2, quarter)).to(x.dtype)
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([first * cos - second * sin, first * sin + second * cos], dim=-2).flatten(-3)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (1 + scale) + shift with per-item shift and scale broadcast over tokens (DiT Sec. 3.2)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention with optional per-head RMS norm of queries and keys and optional RoPE."""

    def __init__(self, width: int, heads: int, qk_norm: bool = True):
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        # SD3 (Esser et al. 2024, Sec. 5.3.2): RMSNorm on q and k keeps the logits bounded.
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(width, width)

    def queries_keys_values(self, h: torch.Tensor, angles: Optional[torch.Tensor] = None):
        """q, k, v [B, heads, tokens, head_dim], with q and k normalized and rotated as the attention uses them."""
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        return q, k, v

    def logits(self, h: torch.Tensor, angles: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The attention logits q.k / sqrt(head_dim) [B, heads, tokens, tokens] for the block input h (after adaLN)."""
        q, k, _ = self.queries_keys_values(h, angles)
        return q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)

    def forward(self, h: torch.Tensor, angles: Optional[torch.Tensor] = None) -> torch.Tensor:
        q, k, v = self.queries_keys_values(h, angles)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(logits) v, scale 1/sqrt(head_dim)
        return self.proj(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-Zero (DiT Fig. 3): gated attention, then a gated MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attention = Attention(width, heads, qk_norm)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        # Shift, scale and gate for each branch; zero at init, so the block starts as the identity.
        self.modulation = nn.Linear(width, 6 * width)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, angles: Optional[torch.Tensor] = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(cond)).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attention(modulate(self.norm1(x), shift1, scale1), angles)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """Diffusion transformer F(c_in x_hat, c_noise[, labels]) for items [C, H, W]; H and W must divide by `patch`.

    Options: depth (blocks), width (token features), heads (width must divide by it),
    patch (pixels per side of a token), mlp_ratio (MLP hidden width / width),
    pos ("sincos": additive 2-D sin-cos embedding, width divisible by 4; "rope": axial
    rotary embedding in attention, head dim divisible by 4), qk_norm (RMS-normalize
    queries and keys per head), label_dim (number of classes; 0 = unconditional),
    convention ("dit" or "legacy", see CONVENTIONS), noise_embedding ("fourier": NoiseEmbedding;
    "dit": DiT's sinusoidal timestep embedding of noise_scale * c_noise, SinusoidalNoiseEmbedding),
    noise_max_freq (the top frequency of the "fourier" embedding; 1 for VP's and DDPM's index-like c_noise),
    adaln_zero (modulation and output layers start at zero, DiT's adaLN-Zero; false: Xavier like the rest).
    DiT-S is depth=12, width=384, heads=6; DiT-B is depth=12, width=768, heads=12. A run with
    pos="sincos", qk_norm=false, mlp_ratio=4, noise_embedding="dit" exports to diffusers' DiTTransformer2DModel.
    """

    #: networks.recorded_defaults: new runs record convention "dit"; runs that predate the record are "legacy".
    RECORDED_DEFAULTS = {"convention": ("dit", "legacy")}
    # Bounds of the options (edm_space.registry), checked before the network is built.
    OPTIONS = {"depth": Option.integer(1, 1024), "width": Option.integer(1, 1 << 16), "heads": Option.integer(1, 1024),
               "patch": Option.integer(1, 1024), "mlp_ratio": Option.number(0.0, 64.0, open_low=True), "pos": Option.name(*POSITIONS, label="position encoding pos"),
               "qk_norm": Option.flag(), "label_dim": Option.integer(0, 1 << 20),
               "convention": Option.name(*CONVENTIONS, label="convention"), "noise_embedding": Option.name(*NOISE_EMBEDDINGS, label="noise_embedding"),
               "noise_scale": Option.number(0.0, open_low=True), "noise_max_freq": NOISE_MAX_FREQ_OPTION}

    def __init__(
        self,
        item_shape: Sequence[int],
        depth: int = 4,
        width: int = 128,
        heads: int = 4,
        patch: int = 2,
        mlp_ratio: float = 4.0,
        pos: str = "sincos",
        qk_norm: bool = True,
        label_dim: int = 0,
        convention: str = "dit",
        noise_embedding: str = "fourier",
        noise_scale: float = 1.0,
        adaln_zero: bool = True,
        noise_max_freq: float = NoiseEmbedding.MAX_FREQ,
    ):
        super().__init__()
        if convention not in CONVENTIONS:
            raise unknown("DiT convention", convention, CONVENTIONS)
        if noise_embedding not in NOISE_EMBEDDINGS:
            raise unknown("DiT noise_embedding", noise_embedding, NOISE_EMBEDDINGS)
        if not isinstance(adaln_zero, bool):
            raise ConfigError(f"DiT adaln_zero = {adaln_zero!r} is invalid; it must be true or false")
        self.item_shape = tuple(item_shape)
        channels, height, width_px = self.item_shape
        if patch < 1 or height % patch or width_px % patch:
            raise ConfigError(f"image size {height}x{width_px} must divide by the patch size {patch}")
        if heads < 1 or width % heads:
            raise ConfigError(f"width {width} must divide by heads {heads}")
        if pos not in POSITIONS:
            raise unknown("position encoding pos", pos, POSITIONS)
        if pos == "sincos" and width % 4:
            raise ConfigError(f"width {width} must divide by 4 for pos='sincos' (a sin and a cos per row and per column)")
        if pos == "rope" and (width // heads) % 4:
            raise ConfigError(f"head dim {width // heads} (width {width} / heads {heads}) must divide by 4 for pos='rope'")
        self.patch, self.pos, self.label_dim = patch, pos, label_dim
        rows, cols = height // patch, width_px // patch

        self.convention, self.noise_embedding, self.mlp_ratio, self.qk_norm = convention, noise_embedding, mlp_ratio, qk_norm
        self.embed = NoiseEmbedding(width, max_freq=noise_max_freq) if noise_embedding == "fourier" else SinusoidalNoiseEmbedding(width, noise_scale)
        self.label = LabelEmbedding(label_dim, width) if label_dim else None
        self.inp = nn.Linear(channels * patch * patch, width)  # a stride-p convolution, on patchified tokens
        if pos == "sincos":
            self.register_buffer("position", sincos_position_embedding(width, rows, cols, convention == "dit").float(), persistent=False)
        else:
            self.register_buffer("rope_angles", axial_rope_angles(width // heads, *grid_positions(rows, cols)).float(), persistent=False)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, channels * patch * patch)
        self._initialize(adaln_zero)

    def _initialize(self, adaln_zero: bool = True) -> None:
        """Xavier-uniform linear layers in the blocks and patch embedding; with adaLN-Zero (DiT Sec. 3.2) the
        modulation and output layers at 0, else Xavier-uniform like the rest (DiT's "adaLN" ablation)."""
        for module in [self.inp, *self.blocks.modules(), *([] if adaln_zero else [self.out_modulation, self.out])]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if adaln_zero:
            for layer in [*(block.modulation for block in self.blocks), self.out_modulation, self.out]:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def conditioning(self, c_noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The vector every block is modulated by: noise embedding + label embedding (null label if None)."""
        cond = self.embed(c_noise)
        if self.label is not None:  # labels=None is the null label: the learned bias alone
            cond = cond + self.label(labels, cond.shape[0])
        return cond

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        cond = self.conditioning(c_noise, labels)
        h = self.inp(patchify(x, self.patch))
        angles = None
        if self.pos == "sincos":
            h = h + self.position.to(h.dtype)
        else:
            angles = self.rope_angles
        for block in self.blocks:
            h = block(h, cond, angles)
        shift, scale = self.out_modulation(F.silu(cond)).chunk(2, dim=1)
        return unpatchify(self.out(modulate(self.out_norm(h), shift, scale)), self.patch, self.item_shape, self.convention == "dit")
