"""The video UNet that predicts the noise of a window of frames, and its conditioning wrapper.

The network is a 2-D UNet applied to every frame (residual blocks with GroupNorm, SiLU and an additive
diffusion-step embedding), with temporal layers after every residual block that let frames talk: a residual
block of 1-D convolutions across frames at every level and self-attention across frames at the levels in
``ModelConfig.temporal_attention_levels``. Spatial self-attention runs at the coarsest level. The
network knows nothing of schedules; :class:`ConditionedDenoiser` maps ``(x_noisy, t, context, valid)`` to
what it sees.

Shapes: windows are ``(B, S, C, H, W)``; inside the network frames are folded into the batch,
``(B * S, C, H, W)``, and unfolded by the temporal layers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dydiff_earth.config import ModelConfig
from dydiff_earth.errors import InputError

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count ``<= groups`` that divides ``channels``."""
    g = math.gcd(channels, groups)
    return nn.GroupNorm(g, channels)


def _zero(module: ModuleT) -> ModuleT:
    """Zero a layer's parameters so that a residual branch starts as the identity (Ho et al. 2020 code)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def sinusoidal_embedding(x: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style sinusoidal embedding of positions ``x`` ``(N,)`` (any real values), ``(N, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """Per-frame residual block: GroupNorm, SiLU, 3x3 conv, plus the step embedding, twice."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(_norm(cin, groups), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(
            _norm(cout, groups), nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(cout, cout, 3, padding=1))
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, emb: Tensor, frames: int) -> Tensor:
        """``x`` ``(B*S, Cin, H, W)``, ``emb`` ``(B*S, E)`` -> ``(B*S, Cout, H, W)``."""
        h = self.in_layers(x) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class TemporalConv(nn.Module):
    """Residual block of 1-D convolutions across frames (kernel 3, zero padding) at every pixel.

    Shaped like :class:`ResBlock` with the 3x3 convolutions replaced by ``(3, 1, 1)`` ones, as the temporal
    mixing layers of video diffusion models (Blattmann et al. 2023); it sees the step embedding because the
    temporal correlation of Dynamical Diffusion's noise changes with the step.
    """

    def __init__(self, channels: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = _norm(channels, groups), _norm(channels, groups)
        self.conv1 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, channels))
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))

    def forward(self, x: Tensor, emb: Tensor, frames: int) -> Tensor:
        """``(B*S, C, H, W)``, ``emb`` ``(B*S, E)`` -> ``(B*S, C, H, W)``."""
        h1 = self._temporal(self.conv1, F.silu(self.norm1(x)), frames) + self.emb(emb)[:, :, None, None]
        h2 = self._temporal(self.conv2, self.dropout(F.silu(self.norm2(h1))), frames)
        return x + h2

    @staticmethod
    def _temporal(conv: nn.Conv3d, x: Tensor, frames: int) -> Tensor:
        """Apply a ``(3, 1, 1)`` Conv3d to ``(B*S, C, H, W)`` viewed as ``(B, C, S, H, W)``.

        Run as the 2-D convolution it is, a ``(3, 1)`` kernel over ``(frames, pixels)``, with the Conv3d's
        own weights: on CPU with one thread PyTorch sends a Conv3d of this shape to a slow generic kernel
        (a quarter of a radar network call), where oneDNN takes the 2-D one. For channels-last ``x`` (the
        forecast's layout) the views cost no copy.
        """
        n, c, h, w = x.shape
        windows = x.reshape(n // frames, frames, c, h * w).permute(0, 2, 1, 3)
        y = F.conv2d(windows, conv.weight.squeeze(-1), conv.bias, padding=(1, 0))
        return y.permute(0, 2, 1, 3).reshape(n, conv.out_channels, h, w)


class _Attention(nn.Module):
    """Pre-norm transformer layer over token sequences: multi-head self-attention, then a 4x MLP.

    Both residual branches end in a zero-initialised projection, so the layer starts as the identity.
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise InputError(f"{channels} channels cannot be split into {heads} attention heads")
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels))
        self.mlp = nn.Sequential(
            nn.LayerNorm(channels),
            nn.Linear(channels, 4 * channels),
            nn.GELU(),
            _zero(nn.Linear(4 * channels, channels)),
        )

    def transform(self, tokens: Tensor, pos: Tensor | None = None) -> Tensor:
        """``(N, L, C)`` tokens -> ``(N, L, C)``; ``pos`` ``(L, C)`` is added to the normalised tokens."""
        n, length, c = tokens.shape
        h = self.norm(tokens) if pos is None else self.norm(tokens) + pos
        q, k, v = self.qkv(h).reshape(n, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, c)
        tokens = tokens + self.proj(out)
        return tokens + self.mlp(tokens)


class SpatialAttention(_Attention):
    """Transformer layer over the pixels of each frame."""

    def forward(self, x: Tensor, emb: Tensor, frames: int) -> Tensor:
        """``(B*S, C, H, W)`` -> ``(B*S, C, H, W)``."""
        n, c, h, w = x.shape
        tokens = self.transform(x.reshape(n, c, h * w).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(n, c, h, w)


class TemporalAttention(_Attention):
    """Bidirectional transformer layer across the frames at each pixel, with a frame-index code."""

    def forward(self, x: Tensor, emb: Tensor, frames: int) -> Tensor:
        """``(B*S, C, H, W)`` -> ``(B*S, C, H, W)``."""
        n, c, h, w = x.shape
        # Attention is blind to order; the sinusoidal frame index tells it which frame is which lead time.
        pos = sinusoidal_embedding(torch.arange(frames, device=x.device), c).to(x.dtype)
        tokens = x.reshape(n // frames, frames, c, h * w).permute(0, 3, 1, 2).reshape(-1, frames, c)
        out = self.transform(tokens, pos).reshape(n // frames, h * w, frames, c).permute(0, 2, 3, 1)
        return out.reshape(n, c, h, w)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor, frames: int) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H/2, W/2)``."""
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor, frames: int) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, C, 2H, 2W)``."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.ModuleList):
    """Layers applied in order, each called as ``layer(x, emb, frames)``."""

    def forward(self, x: Tensor, emb: Tensor, frames: int) -> Tensor:
        """``(B*S, C, H, W)`` -> ``(B*S, C', H', W')``."""
        for layer in self:
            x = layer(x, emb, frames)
        return x


class VideoUNet(nn.Module):
    """A UNet over frames with temporal convolution at every level and temporal attention where configured.

    Parameters
    ----------
    cfg : ModelConfig
        ``channels`` per level (level 0 finest), ``blocks_per_level`` residual blocks per level on the way
        down (one more on the way up, for the skip from the downsampling), ``temporal_attention_levels``,
        ``spatial_attention`` (coarsest level and middle), ``heads``, ``groups``, ``time_embed_dim``,
        ``dropout``.
    in_channels, out_channels : int
        Channels per frame of the input and output.
    """

    def __init__(self, cfg: ModelConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if not cfg.channels or cfg.blocks_per_level < 1:
            raise InputError("a model needs at least one level and one residual block per level")
        if cfg.space_to_depth < 1:
            raise InputError(f"space_to_depth must be a positive integer, not {cfg.space_to_depth}")
        self.cfg, self.in_channels, self.out_channels = cfg, in_channels, out_channels
        chans, emb_dim, f2 = cfg.channels, cfg.time_embed_dim, cfg.space_to_depth**2
        self.time_embed = nn.Sequential(nn.Linear(chans[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_conv = nn.Conv2d(in_channels * f2, chans[0], 3, padding=1)
        self.down, skips, cur = nn.ModuleList(), [chans[0]], chans[0]
        for level, c in enumerate(chans):
            for _ in range(cfg.blocks_per_level):
                self.down.append(self._stage(level, cur, c))
                cur = c
                skips.append(cur)
            if level < len(chans) - 1:
                self.down.append(Stage([Downsample(cur)]))
                skips.append(cur)
        self.middle = self._stage(len(chans) - 1, cur, cur)
        self.middle.append(ResBlock(cur, cur, emb_dim, cfg.groups, cfg.dropout))
        self.up = nn.ModuleList()
        for level in reversed(range(len(chans))):
            for block in range(cfg.blocks_per_level + 1):
                stage = self._stage(level, cur + skips.pop(), chans[level])
                cur = chans[level]
                if level > 0 and block == cfg.blocks_per_level:
                    stage.append(Upsample(cur))
                self.up.append(stage)
        # Zero output: the untrained denoiser predicts no noise, a neutral start for training.
        self.output = nn.Sequential(
            _norm(cur, cfg.groups), nn.SiLU(), _zero(nn.Conv2d(cur, out_channels * f2, 3, padding=1))
        )

    def _stage(self, level: int, cin: int, cout: int) -> Stage:
        """Residual block, temporal convolution, then the attention this level gets."""
        cfg = self.cfg
        layers: list[nn.Module] = [
            ResBlock(cin, cout, cfg.time_embed_dim, cfg.groups, cfg.dropout),
            TemporalConv(cout, cfg.time_embed_dim, cfg.groups, cfg.dropout),
        ]
        if cfg.spatial_attention and level == len(cfg.channels) - 1:
            layers.append(SpatialAttention(cout, cfg.heads))
        if level in cfg.temporal_attention_levels:
            layers.append(TemporalAttention(cout, cfg.heads))
        return Stage(layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Apply the network.

        Parameters
        ----------
        x : Tensor
            ``(B, S, Cin, H, W)``; ``H`` and ``W`` divisible by :attr:`size_multiple`.
        t : Tensor
            ``(B,)`` diffusion steps (float or long).

        Returns
        -------
        Tensor
            ``(B, S, Cout, H, W)``.
        """
        b, s, c, h, w = x.shape
        stem = self.cfg.space_to_depth
        factor = self.size_multiple
        if c != self.in_channels or h % factor or w % factor:
            raise InputError(
                f"expected (B, S, {self.in_channels}, H, W) with H and W divisible by {factor}; "
                f"got {tuple(x.shape)}"
            )
        emb = self.time_embed(sinusoidal_embedding(t.reshape(b), self.cfg.channels[0]).to(x.dtype))
        emb = emb.repeat_interleave(s, dim=0)
        # Space to depth (Shi et al. 2016): each stem x stem block of pixels becomes channels of one pixel.
        hidden = self.input_conv(F.pixel_unshuffle(x.reshape(b * s, c, h, w), stem))
        skips = [hidden]
        for stage in self.down:
            hidden = stage(hidden, emb, s)
            skips.append(hidden)
        hidden = self.middle(hidden, emb, s)
        for stage in self.up:
            hidden = stage(torch.cat([hidden, skips.pop()], dim=1), emb, s)
        return F.pixel_shuffle(self.output(hidden), stem).reshape(b, s, self.out_channels, h, w)

    @property
    def size_multiple(self) -> int:
        """``H`` and ``W`` of an input must be multiples of this (the stem and every downsampling)."""
        return self.cfg.space_to_depth * 2 ** (len(self.cfg.channels) - 1)


class ConditionedDenoiser(nn.Module):
    """The :data:`~dydiff_earth.diffusion.Denoiser` around a :class:`VideoUNet` (cf. EDM's ``EDMPrecond``).

    Every frame is given to the network as ``2C + 3 + K`` channels: the noisy frame, the clean context frame
    (zeros for target frames), a context mask, a first-target-frame mask, the validity mask and ``K``
    conditioning fields shared by all frames (in the motion frame, the init frame itself, since the
    window holds only departures from it).

    Parameters
    ----------
    cfg : ModelConfig
    channels : int
        ``C``, variables per frame.
    context : int
        ``P``, context frames at the start of every window.
    condition_channels : int
        ``K``, conditioning fields per window (0: none).
    """

    def __init__(self, cfg: ModelConfig, channels: int, context: int, condition_channels: int = 0) -> None:
        super().__init__()
        self.channels, self.context, self.condition_channels = channels, context, condition_channels
        self.net = VideoUNet(cfg, 2 * channels + 3 + condition_channels, channels)

    def forward(
        self,
        x_noisy: Tensor,
        t: Tensor,
        context: Tensor,
        valid: Tensor | None = None,
        condition: Tensor | None = None,
    ) -> Tensor:
        """Predict the noise of a window.

        Parameters
        ----------
        x_noisy : Tensor
            ``(B, S, C, H, W)`` noisy window, ``S >= P``.
        t : Tensor
            ``(B,)`` diffusion steps.
        context : Tensor
            ``(B, P, C, H, W)`` clean context frames.
        valid : Tensor, optional
            ``(B, S, 1, H, W)``, 1 where the data are valid; all ones when omitted.
        condition : Tensor, optional
            ``(B, K, H, W)`` conditioning fields; required when ``K > 0``.

        Returns
        -------
        Tensor
            ``(B, S, C, H, W)`` predicted noise ``eps_hat``.
        """
        b, s, c, h, w = x_noisy.shape
        p = self.context
        if c != self.channels or s < p or context.shape != (b, p, c, h, w):
            raise InputError(
                f"expected x_noisy (B, S>={p}, {self.channels}, H, W) and context (B, {p}, C, H, W); "
                f"got {tuple(x_noisy.shape)} and {tuple(context.shape)}"
            )
        frame = torch.arange(s, device=x_noisy.device)[None, :, None, None, None]
        ones = x_noisy.new_ones(b, s, 1, h, w)
        clean = torch.cat([context.to(x_noisy.dtype), x_noisy.new_zeros(b, s - p, c, h, w)], dim=1)
        valid = ones if valid is None else valid.to(x_noisy.dtype)
        inputs = [x_noisy, clean, ones * (frame < p), ones * (frame == p), valid]
        k = self.condition_channels
        if k:
            if condition is None or condition.shape != (b, k, h, w):
                got = None if condition is None else tuple(condition.shape)
                raise InputError(f"expected condition (B, {k}, H, W) = {(b, k, h, w)}; got {got}")
            inputs.append(condition.to(x_noisy.dtype)[:, None].expand(b, s, k, h, w))
        return self.net(torch.cat(inputs, dim=2), t)


def deepen(net: VideoUNet, blocks_per_level: int) -> VideoUNet:
    """The same function as ``net``, computed by a UNet with more residual stages per level.

    Growing a trained network (Net2Net's deeper operator, Chen et al. 2016) lets a fine-tune spend new
    capacity without relearning the old. On the way down every level gets its new stages after its own;
    their skips equal the output of the level's last old stage, the skip its first up stage took. On the way
    up the new stages follow the level's first stage, and each one's skip projection passes the hidden
    channels through and drops the skip. Every new branch ends in a zero-initialised layer (residual
    blocks, temporal convolutions, attention), so each new stage starts as the identity and learns from
    there.
    """
    cfg, old_blocks = net.cfg, net.cfg.blocks_per_level
    if blocks_per_level < old_blocks:
        raise InputError(f"cannot deepen {old_blocks} residual blocks per level to {blocks_per_level}")
    grown = VideoUNet(
        dataclasses.replace(cfg, blocks_per_level=blocks_per_level), net.in_channels, net.out_channels
    )
    extra, levels = blocks_per_level - old_blocks, len(cfg.channels)
    for name in ("time_embed", "input_conv", "middle", "output"):
        getattr(grown, name).load_state_dict(getattr(net, name).state_dict())
    old = new = 0
    for level in range(levels):  # down: the level's stages, then its downsampling
        kept = old_blocks + (level < levels - 1)
        for i in range(kept):
            grown.down[new + i + (i >= old_blocks) * extra].load_state_dict(net.down[old + i].state_dict())
        old, new = old + kept, new + kept + extra
    for level in range(levels):  # up: the level's first stage, the new ones, the other old ones
        old, new = level * (old_blocks + 1), level * (blocks_per_level + 1)
        for i in range(old_blocks + 1):
            grown.up[new + i + (i > 0) * extra].load_state_dict(net.up[old + i].state_dict())
        for i in range(1, extra + 1):
            stage = grown.up[new + i]
            assert isinstance(stage, Stage) and isinstance(stage[0], ResBlock)
            skip = stage[0].skip
            assert isinstance(skip, nn.Conv2d) and skip.bias is not None
            with torch.no_grad():
                skip.weight.zero_()
                skip.bias.zero_()
                skip.weight[:, : skip.out_channels, 0, 0] = torch.eye(skip.out_channels)
    return grown


def channels_last(module: nn.Module) -> nn.Module:
    """Store the weights of every 2-D convolution in ``module`` channels-last (the temporal Conv3d
    weights keep their layout); the numbers stay those of the network, up to rounding."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.to(memory_format=torch.channels_last)
    return module


__all__ = ["ConditionedDenoiser", "VideoUNet", "channels_last", "deepen", "sinusoidal_embedding"]
