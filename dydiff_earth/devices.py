"""Ensemble members across devices: ``forecast --devices cuda:0,cuda:1`` (or ``all``).

Members are independent given the context: member ``k`` draws its noise from its own generator
(``forecast.member_generator(seed, init_time, k)``) whichever device samples it, so splitting members
over devices gives the numbers of one device of the same kind. Each device holds one copy of the model
and samples a contiguous block of members in its own thread (CUDA kernels release the GIL, so the
devices run at once); the blocks are concatenated in member order. CPU "devices" (``cpu,cpu``, for tests)
take their blocks in turn.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from dydiff_earth.config import ForecastConfig
from dydiff_earth.errors import InputError
from dydiff_earth.forecast import DiffusionForecaster, LoadedModel, ProgressFn


def parse_devices(text: str) -> list[torch.device]:
    """``"cpu"``, ``"cuda:0,cuda:1"``, ``"cpu,cpu"`` or ``"all"`` (every CUDA device, else the CPU).

    A device may repeat (several streams of work on one device). An unavailable or unknown device is an
    ``InputError``.
    """
    from dydiff_earth.train import resolve_device

    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise InputError("--devices needs a device list such as cuda:0,cuda:1, or all")
    if names == ["all"]:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device(f"cuda:{i}") for i in range(count)] or [torch.device("cpu")]
    devices = [resolve_device(name) for name in names]
    for device in devices:
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(
                f"device {device} asked for but this machine has {torch.cuda.device_count()} GPUs"
            )
    return devices


def split_members(n_members: int, parts: int) -> list[range]:
    """Contiguous, near-equal blocks of ``range(n_members)``, the first ones larger; none empty."""
    size, extra = divmod(n_members, parts)
    blocks, start = [], 0
    for i in range(parts):
        stop = start + size + (i < extra)
        if stop > start:
            blocks.append(range(start, stop))
        start = stop
    return blocks


def _on(model: LoadedModel, device: torch.device) -> LoadedModel:
    """``model`` with its network on ``device`` (itself when it is already there)."""
    current = next(model.denoiser.parameters()).device
    if current == device:
        return model
    return dataclasses.replace(model, denoiser=copy.deepcopy(model.denoiser).to(device).eval())


class _Shard(DiffusionForecaster):
    """Samples the members ``first, first + 1, ...`` of a larger ensemble: their generators, their numbers."""

    def __init__(self, model: LoadedModel, config: ForecastConfig, device: torch.device, first: int) -> None:
        super().__init__(model, config, device=device)
        self.first_member = first


class MultiDeviceForecaster(DiffusionForecaster):
    """A :class:`~dydiff_earth.forecast.DiffusionForecaster` whose members are sampled on several devices.

    Everything but the sampling (context, motion frame, labels) is the base class's; ``sample`` gives
    each device a block of members (:func:`split_members`) and concatenates them in member order.
    """

    def __init__(
        self,
        model: LoadedModel,
        config: ForecastConfig = ForecastConfig(),  # noqa: B008 (frozen, hence safe as a default)
        *,
        devices: Sequence[torch.device | str],
        progress: ProgressFn | None = None,
    ) -> None:
        if not devices:
            raise InputError("--devices needs at least one device")
        self.devices = [torch.device(d) for d in devices]
        super().__init__(model, config, device=self.devices[0], progress=progress)
        # One copy of the model per distinct device, shared by the blocks that run there.
        self.models = {d: _on(model, d) for d in dict.fromkeys(self.devices)}

    def sample(
        self,
        ctx: np.ndarray,
        valid: np.ndarray,
        init: np.datetime64,
        lead_times: int,
        n_members: int,
        seed: int,
        extra: Sequence[np.ndarray] | None = None,
    ) -> np.ndarray:
        blocks = split_members(n_members, len(self.devices))
        counts = [[0, 0] for _ in blocks]  # done, total of each block
        lock = threading.Lock()

        def run(i: int, block: range) -> np.ndarray:
            device = self.devices[i]
            shard = _Shard(self.models[device], self.config, device, block.start)

            def tick(done: int, total: int) -> None:
                with lock:
                    counts[i] = [done, total]
                    if self.progress is not None and all(t for _, t in counts):
                        self.progress(sum(d for d, _ in counts), sum(t for _, t in counts))

            shard.progress = tick
            return shard.sample(ctx, valid, init, lead_times, len(block), seed, extra)

        if all(d.type == "cpu" for d in self.devices):
            # The CPU's cores are shared already: blocks one after the other (threads would only fight
            # over the cores); the same numbers either way.
            return np.concatenate([run(i, block) for i, block in enumerate(blocks)])
        with ThreadPoolExecutor(len(blocks), thread_name_prefix="dydiff-device") as pool:
            parts = [pool.submit(run, i, block) for i, block in enumerate(blocks)]
            return np.concatenate([part.result() for part in parts])


__all__ = ["MultiDeviceForecaster", "parse_devices", "split_members"]
