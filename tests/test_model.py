"""The video UNet and its conditioning wrapper: shapes, initial output, sizes, gradients, and overfitting."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from dydiff_earth.config import DiffusionConfig, preset
from dydiff_earth.diffusion import diffusion_loss, make_schedule
from dydiff_earth.errors import InputError
from dydiff_earth.model import ConditionedDenoiser, VideoUNet, channels_last, deepen


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise_zero_layers(module: nn.Module, seed: int = 0) -> None:
    """Give zero-initialised weights small random values, so every path of the network carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def window(b: int, s: int, c: int, h: int, w: int, seed: int = 0) -> Tensor:
    return torch.randn(b, s, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_output_shape_and_zero_initial_output() -> None:
    torch.manual_seed(0)
    net = ConditionedDenoiser(preset("tiny"), channels=2, context=4)
    assert net.net.in_channels == 2 * 2 + 3
    x = window(2, 6, 2, 16, 16)
    out = net(x, torch.tensor([3, 700]), x[:, :4])
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))


def test_any_frame_count_and_larger_grid() -> None:
    torch.manual_seed(0)
    net = ConditionedDenoiser(preset("tiny"), channels=1, context=4)
    randomise_zero_layers(net)
    x = window(1, 10, 1, 32, 32)
    out = net(x, torch.tensor([10]), x[:, :4])
    assert out.shape == (1, 10, 1, 32, 32) and bool(out.isfinite().all())


def test_parameter_counts_per_preset() -> None:
    counts = {
        name: count(ConditionedDenoiser(preset(name), channels=1, context=4)) for name in ("tiny", "small")
    }
    assert counts["tiny"] < 1_000_000
    assert 1_000_000 < counts["small"] < 10_000_000
    paper = count(VideoUNet(preset("paper"), in_channels=5, out_channels=1))
    assert 30_000_000 < paper < 80_000_000


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    net = ConditionedDenoiser(preset("tiny"), channels=1, context=2)
    randomise_zero_layers(net)
    x = window(2, 4, 1, 8, 8)
    net(x, torch.tensor([5, 500]), x[:, :2]).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_temporal_convolution_is_the_conv3d(memory_format: torch.memory_format) -> None:
    # The temporal layer runs its (3, 1, 1) Conv3d as a (3, 1) 2-D convolution: same outputs and gradients.
    from dydiff_earth.model import TemporalConv

    torch.manual_seed(0)
    conv = nn.Conv3d(6, 5, (3, 1, 1), padding=(1, 0, 0))
    b, s = 3, 4
    x = torch.randn(b * s, 6, 7, 9).contiguous(memory_format=memory_format).requires_grad_(True)
    out = TemporalConv._temporal(conv, x, s)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, conv.weight, conv.bias], grad_out)
    ref = conv(x.reshape(b, s, 6, 7, 9).transpose(1, 2)).transpose(1, 2).reshape(b * s, 5, 7, 9)
    want = torch.autograd.grad(ref, [x, conv.weight, conv.bias], grad_out)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-4)
    # Frames of different windows do not mix: the first frame of window 1 ignores window 0's last.
    x2 = x.detach().clone()
    x2[s - 1] += 1.0
    assert torch.equal(TemporalConv._temporal(conv, x2, s)[s], TemporalConv._temporal(conv, x, s)[s])


def test_frames_interact_in_both_directions() -> None:
    # The temporal layers are bidirectional: the last frame informs the first and vice versa.
    torch.manual_seed(0)
    net = ConditionedDenoiser(preset("tiny"), channels=1, context=2)
    randomise_zero_layers(net)
    net.eval()
    x, t = window(1, 5, 1, 8, 8), torch.tensor([100])
    base = net(x, t, x[:, :2])
    for changed, watched in ((4, 0), (0, 4)):
        y = x.clone()
        y[:, changed] += 1.0
        assert not torch.allclose(net(y, t, x[:, :2])[:, watched], base[:, watched], atol=1e-6)


def test_valid_none_is_all_ones_and_bad_shapes_raise() -> None:
    torch.manual_seed(0)
    net = ConditionedDenoiser(preset("tiny"), channels=1, context=2)
    randomise_zero_layers(net)
    x, t = window(1, 4, 1, 8, 8), torch.tensor([100])
    torch.testing.assert_close(net(x, t, x[:, :2]), net(x, t, x[:, :2], torch.ones(1, 4, 1, 8, 8)))
    with pytest.raises(InputError):
        net(x, t, x[:, :3])
    with pytest.raises(InputError):
        net(window(1, 4, 1, 9, 8), t, window(1, 2, 1, 9, 8))


def fixed_window() -> Tensor:
    """One smooth window: a Gaussian blob moving across a 16x16 grid over 6 frames, z-scored."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    frames = torch.stack([torch.exp(-((x + 0.6 - 0.2 * s) ** 2 + y**2) / 0.1) for s in range(6)])[:, None]
    return ((frames - frames.mean()) / frames.std())[None]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run single-threaded: tiny convolutions gain nothing from threads and suffer on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("gamma_ratio", [0.5, 0.0])
def test_tiny_model_overfits_one_window(gamma_ratio: float) -> None:
    # Deterministic: seeded initialisation, training draws and evaluation draws. The evaluation loss starts
    # near 1 (a zero prediction of unit noise); it must fall 10x within 150 Adam steps (50 suffice here).
    torch.manual_seed(0)
    cfg = DiffusionConfig(gamma_ratio=gamma_ratio)
    schedule = make_schedule(cfg)
    net = ConditionedDenoiser(preset("tiny"), channels=1, context=4)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    train, held = fixed_window().expand(4, -1, -1, -1, -1), fixed_window().expand(16, -1, -1, -1, -1)

    def evaluate() -> float:
        with torch.no_grad():
            g = torch.Generator().manual_seed(123)
            return diffusion_loss(
                net, held, context=held[:, :4], schedule=schedule, cfg=cfg, generator=g
            ).item()

    start, g, losses = evaluate(), torch.Generator().manual_seed(1), []
    for step in range(1, 151):
        loss = diffusion_loss(net, train, context=train[:, :4], schedule=schedule, cfg=cfg, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            losses.append(evaluate())
            if losses[-1] < start / 10:
                break
    assert 0.5 < start < 2 and losses[-1] < start / 10, (start, losses)


@pytest.mark.parametrize("name", ["radar", "radar-fast", "radar-deep"])
def test_space_to_depth_stem_and_condition_channels(name: str) -> None:
    torch.manual_seed(0)
    cfg = preset(name)
    net = ConditionedDenoiser(cfg, channels=1, context=2, condition_channels=1)
    assert net.net.size_multiple == 16
    randomise_zero_layers(net)
    x = window(1, 4, 1, 32, 48)
    cond = torch.randn(1, 1, 32, 48)
    out = net(x, torch.tensor([500]), x[:, :2], None, cond)
    assert out.shape == x.shape
    # The condition reaches the output, and it is required when the model was built with one.
    assert not torch.equal(out, net(x, torch.tensor([500]), x[:, :2], None, torch.zeros_like(cond)))
    with pytest.raises(InputError, match="condition"):
        net(x, torch.tensor([500]), x[:, :2])
    with pytest.raises(InputError, match="divisible by 16"):
        net(window(1, 4, 1, 24, 48), torch.tensor([500]), x[:, :2, :, :24], None, cond[..., :24, :])


def test_channels_last_weights_change_only_the_rounding() -> None:
    torch.manual_seed(0)
    net = ConditionedDenoiser(preset("radar"), channels=1, context=2, condition_channels=1).eval()
    randomise_zero_layers(net)
    x, cond = window(1, 4, 1, 32, 48), torch.randn(1, 1, 32, 48)
    with torch.no_grad():
        before = net(x, torch.tensor([500]), x[:, :2], None, cond)
        channels_last(net)
        after = net(x, torch.tensor([500]), x[:, :2], None, cond)
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_a_deepened_network_computes_the_same_function(blocks: int) -> None:
    """Net2Net-style growth: every new stage starts as the identity, every old weight is kept."""
    torch.manual_seed(0)
    small = dataclasses.replace(
        preset("radar"), channels=(8, 16, 24), temporal_attention_levels=(1, 2), heads=2, groups=4
    )
    net = VideoUNet(small, in_channels=3, out_channels=1)
    randomise_zero_layers(net)
    grown = deepen(net, small.blocks_per_level + blocks)
    assert grown.cfg.blocks_per_level == 1 + blocks and count(grown) > count(net)
    x, t = window(2, 5, 3, 32, 32), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(grown(x, t), net(x, t), rtol=1e-5, atol=1e-5)
    # The new stages learn: the zero output layer of a new up stage gets a gradient at once.
    grown(x, t).square().mean().backward()
    new_out = grown.up[1][0].out_layers[-1].weight
    assert not new_out.any() and new_out.grad is not None and new_out.grad.abs().sum() > 0
    with pytest.raises(InputError, match=f"cannot deepen {1 + blocks} residual blocks per level to 1"):
        deepen(grown, 1)
