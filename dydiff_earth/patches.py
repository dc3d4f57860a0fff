"""Training windows and crops (`WindowStream`); inference tiles and their blending weights.

Not to be confused with a *sampler*, which in this codebase means the reverse diffusion process only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from dydiff_earth import diurnal, motion
from dydiff_earth.data import Fields, VariableSpec, denormalize, load_frames, window_starts
from dydiff_earth.errors import InputError
from dydiff_earth.motion import DEPARTURE_FRAMES

if TYPE_CHECKING:
    from dydiff_earth.covariates import Covariates

#: Rain-weighted crops: a pixel is rainy at or above this rate, in the variable's units (mm h-1 for
#: radar; the usual "rain / no rain" threshold of nowcasting verification).
RAIN_THRESHOLD = 0.1
#: Candidate crops drawn per sample before giving up and taking the rainiest one.
RAIN_CANDIDATES = 8
#: Acceptance probability of a dry candidate: dry scenes stay in the training set, just rarer.
RAIN_MIN_ACCEPT = 0.05
#: Rainy-pixel fraction at (and above) which a candidate is always accepted.
RAIN_FULL_FRACTION = 0.1


def _shard() -> tuple[int, int]:
    """This process's shard index and the shard count over distributed ranks x DataLoader workers."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


Crop = tuple[int, int, int]


def rain_weighted_choice(
    rng: np.random.Generator,
    draw: Callable[[np.random.Generator], Crop],
    rain_fraction: Callable[[Crop], float],
) -> Crop:
    """Rejection sampling of crops towards rain (see :class:`WindowStream`, ``rain_weighted``).

    Up to ``RAIN_CANDIDATES`` candidates are drawn; each is accepted with probability
    ``q + (1 - q) min(1, f / RAIN_FULL_FRACTION)``, ``q = RAIN_MIN_ACCEPT``, ``f`` its rain fraction; if
    none is, the rainiest is kept.
    """
    best, best_fraction = None, -1.0
    for _ in range(RAIN_CANDIDATES):
        candidate = draw(rng)
        fraction = rain_fraction(candidate)
        accept = RAIN_MIN_ACCEPT + (1 - RAIN_MIN_ACCEPT) * min(1.0, fraction / RAIN_FULL_FRACTION)
        if rng.random() < accept:
            return candidate
        if fraction > best_fraction:
            best, best_fraction = candidate, fraction
    assert best is not None
    return best


class IndexedStream(IterableDataset):
    """An iterable dataset whose sample ``i`` is a pure function ``sample(i)`` of its index.

    The global stream ``start_index, start_index + 1, ...`` (``length`` samples, or endless) is dealt out
    to shards (distributed rank x DataLoader worker) by ``i % n_shards``, so the union over shards is the
    single-process stream, without duplicates, and a resumed run continues it exactly.
    """

    length: int | None
    start_index: int

    def sample(self, i: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"an infinite {type(self).__name__} has no length")
        return self.length

    def __iter__(self) -> Iterator[dict]:
        shard, n_shards = _shard()
        i = self.start_index + shard
        while self.length is None or i < self.start_index + self.length:
            yield self.sample(i)
            i += n_shards


class WindowStream(IndexedStream):
    """Random (window, crop) samples of ``context + horizon`` consecutive frames, for training.

    Sample ``i`` of the global stream draws everything from ``numpy.random.default_rng([seed, i])``
    and is produced by shard ``i % n_shards``, where shards are (distributed rank, DataLoader worker)
    pairs; so the union over shards is exactly the single-process stream, without duplicates. Each
    sample reads only the chunks under its window and crop.

    Parameters
    ----------
    fields : Fields
        From `dydiff_earth.data.open_fields`.
    context, horizon : int
        Frames given to and predicted by the model; a window holds ``S = context + horizon`` frames,
        all within one time segment.
    patch : int or None
        Side of the square crop in grid cells; None for the full grid.
    seed : int
        Base seed of the stream.
    rain_weighted : bool
        Favour crops with precipitation: up to `RAIN_CANDIDATES` candidates are drawn and one is
        accepted with probability ``q + (1 - q) * min(1, f / RAIN_FULL_FRACTION)``, where
        ``q = RAIN_MIN_ACCEPT`` and ``f`` is the fraction of pixels of the last context frame at or
        above `RAIN_THRESHOLD` in any log1p channel (compared in normalised units); if none is
        accepted, the rainiest candidate is kept.
        An importance-sampling scheme in the spirit of Ravuri et al. (2021, DGMR).
    starts : sequence of int, optional
        Allowed window starts (e.g. a split by time); those whose window would cross a gap are dropped.
    length : int, optional
        Samples in the whole (all-shard) stream; None for an infinite stream.
    start_index : int
        Global index of the first sample, so that a resumed training run continues the same stream.

    Yields
    ------
    dict
        ``frames``: float32 tensor ``(S, C, P, P)`` normalised, NaN replaced by 0; ``valid``: float32
        ``(S, 1, P, P)``, 1 where every channel is finite; ``start``, ``y0``, ``x0``: int offsets of
        the window (time index) and crop (grid cells).
    """

    def __init__(
        self,
        fields: Fields,
        context: int,
        horizon: int,
        patch: int | None,
        *,
        seed: int = 0,
        rain_weighted: bool = False,
        starts: Sequence[int] | None = None,
        length: int | None = None,
        start_index: int = 0,
    ) -> None:
        super().__init__()
        if context < 1 or horizon < 0:
            raise InputError(f"context ({context}) must be >= 1 and horizon ({horizon}) >= 0")
        self.fields = fields
        self.context = context
        self.horizon = horizon
        self.seed = seed
        self.length = length
        self.start_index = start_index
        self.window = context + horizon
        self.starts = self._allowed_starts(starts)
        ny, nx = fields.shape
        if patch is not None and (patch < 1 or patch > min(ny, nx)):
            raise InputError(f"patch {patch} does not fit the grid {ny}x{nx}; choose 1..{min(ny, nx)}")
        self.size = (ny, nx) if patch is None else (patch, patch)
        self.rain_channels = [c for c, s in enumerate(fields.variables) if s.transform == "log1p"]
        if rain_weighted and not self.rain_channels:
            raise InputError("rain_weighted needs a precipitation-like (log1p) variable; turn it off")
        self.rain_weighted = rain_weighted
        # The threshold in each rain channel's normalised units, so crops are judged on loaded values.
        self.rain_levels = np.array(
            [s.normalised(RAIN_THRESHOLD) for s in fields.variables], dtype=np.float32
        )

    def _allowed_starts(self, starts: Sequence[int] | None) -> np.ndarray:
        valid = window_starts(self.fields, self.window)
        if starts is None:
            return np.asarray(valid)
        kept = np.intersect1d(np.asarray(starts, dtype=int), valid)
        if kept.size == 0:
            raise InputError(
                f"none of the {len(starts)} given window starts begins {self.window} consecutive frames "
                "inside one segment; widen the time split"
            )
        return kept

    def _draw(self, rng: np.random.Generator) -> tuple[int, int, int]:
        ny, nx = self.fields.shape
        start = int(self.starts[rng.integers(len(self.starts))])
        y0 = int(rng.integers(ny - self.size[0] + 1))
        x0 = int(rng.integers(nx - self.size[1] + 1))
        return start, y0, x0

    def _rain_fraction(self, start: int, y0: int, x0: int) -> float:
        t = start + self.context - 1
        frame = load_frames(
            self.fields, slice(t, t + 1), slice(y0, y0 + self.size[0]), slice(x0, x0 + self.size[1])
        )[0, self.rain_channels]
        wet = (frame >= self.rain_levels[self.rain_channels, None, None]).any(axis=0)
        return float(wet.mean())

    def _choose(self, rng: np.random.Generator) -> tuple[int, int, int]:
        if not self.rain_weighted:
            return self._draw(rng)
        return rain_weighted_choice(rng, self._draw, lambda c: self._rain_fraction(*c))

    def sample(self, i: int) -> dict:
        """Sample ``i`` of the global stream (a pure function of ``seed`` and ``i``)."""
        rng = np.random.default_rng([self.seed, i])
        start, y0, x0 = self._choose(rng)
        frames = load_frames(
            self.fields,
            slice(start, start + self.window),
            slice(y0, y0 + self.size[0]),
            slice(x0, x0 + self.size[1]),
        )
        finite = np.isfinite(frames)
        valid = finite.all(axis=1, keepdims=True).astype(np.float32)
        return {
            "frames": torch.from_numpy(np.where(finite, frames, np.float32(0))),
            "valid": torch.from_numpy(valid),
            "start": start,
            "y0": y0,
            "x0": x0,
        }


def rain_channel(variables: Sequence[VariableSpec]) -> int | None:
    """Index of the first precipitation-like (log1p) channel, which motion is estimated on; or None."""
    return next((c for c, s in enumerate(variables) if s.transform == "log1p"), None)


def window_motion(window: np.ndarray, variables: Sequence[VariableSpec], context: int) -> np.ndarray:
    """The motion field ``(2, H, W)`` of a normalised window's ``context`` first frames.

    On the first precipitation-like channel in mm h-1 (dBR, as STEPS), else on the first channel.
    """
    rain = rain_channel(variables)
    c = 0 if rain is None else rain
    frames = denormalize(window[:context, c : c + 1], [variables[c]])[:, 0]
    return motion.motion_field(frames, rain=rain is not None)


def departure_moments(departures: np.ndarray) -> np.ndarray:
    """Per-frame ``(count, sum of squares)`` of the finite values of ``(N, S, C, H, W)``: ``(2, S)``."""
    finite = np.isfinite(departures)
    squares = np.where(finite, departures, 0.0).astype(np.float64) ** 2
    return np.stack([finite.sum(axis=(0, 2, 3, 4)).astype(np.float64), squares.sum(axis=(0, 2, 3, 4))])


class DepartureWindowStream(IndexedStream):
    """Training windows as departures from the init frame (in the motion frame or on the grid), cropped.

    Every window of ``context + horizon`` frames (all starts inside one segment) is read on the full
    domain once. In the motion frame (``frame="lagrangian"``) its motion field is estimated from its
    context frames and all its frames advected into the frame of its init time
    (:func:`dydiff_earth.motion.to_motion_frame`; advection carries rain across crop borders, so the
    transform comes before the crop); with ``frame="persistence"`` the grid stays as observed. A frame's
    *departure* is its difference from the init frame in normalised units, divided by the departure scale
    of its position in the window (``scale``, the RMS departure over the training data): a model that
    predicts zero departures forecasts extrapolation (persistence on the grid).

    Sample ``i`` draws a window, a crop (rain-weighted as in :class:`WindowStream` when asked) and, with
    ``augment``, one of the 8 symmetries of the square (rotations by 90 degrees and flips, applied to the
    whole window, which is the same as transforming a rotated window with its rotated motion field) from
    ``numpy.random.default_rng([seed, i])``.

    Parameters
    ----------
    fields : Fields
    context, horizon, patch, seed, rain_weighted, starts, length, start_index
        As for :class:`WindowStream`.
    scale : np.ndarray, optional
        ``(S,)`` departure scale per window position; default: this stream's own (:attr:`moments`).
    augment : bool
        Draw a random symmetry for each sample (training); off for validation and with covariates, which
        tie a window to its place on Earth.
    frame : {"lagrangian", "persistence", "diurnal"}
        Departures in the motion frame, on the grid, or on the grid from persistence plus
        ``diurnal_change`` (normalised units, :func:`dydiff_earth.diurnal.mean_change`).
    covariates : Covariates, optional
        Fields of the grid and the init time (:mod:`dydiff_earth.covariates`) appended to the condition.

    Yields
    ------
    dict
        ``frames`` float32 ``(S, C, P, P)`` scaled departures (0 where invalid; exactly 0 at the init
        frame); ``valid`` float32 ``(S, 1, P, P)``; ``condition`` float32 ``(C + K, P, P)``, the normalised
        init frame (0 where missing) then the ``K`` covariates; ``start``, ``y0``, ``x0``.
    """

    def __init__(
        self,
        fields: Fields,
        context: int,
        horizon: int,
        patch: int | None,
        *,
        seed: int = 0,
        rain_weighted: bool = False,
        starts: Sequence[int] | None = None,
        length: int | None = None,
        start_index: int = 0,
        scale: np.ndarray | None = None,
        augment: bool = True,
        frame: str = "lagrangian",
        covariates: Covariates | None = None,
        diurnal_change: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if frame == "lagrangian" and context < 2:
            raise InputError(f"the motion frame needs at least 2 context frames for motion, not {context}")
        if (frame == "diurnal") != (diurnal_change is not None):
            raise InputError("the diurnal frame, and only it, takes a mean diurnal change")
        if frame not in DEPARTURE_FRAMES:
            raise InputError(f"departure frame must be {' or '.join(DEPARTURE_FRAMES)}, not {frame!r}")
        self.context, self.window, self.seed = context, context + horizon, seed
        self.length, self.start_index, self.augment = length, start_index, augment
        ny, nx = fields.shape
        if patch is not None and (patch < 1 or patch > min(ny, nx)):
            raise InputError(f"patch {patch} does not fit the grid {ny}x{nx}; choose 1..{min(ny, nx)}")
        self.size = (ny, nx) if patch is None else (patch, patch)
        self.rain_weighted, self.rain = rain_weighted, rain_channel(fields.variables)
        if rain_weighted and self.rain is None:
            raise InputError("rain_weighted needs a precipitation-like (log1p) variable; turn it off")
        spec = fields.variables[self.rain or 0]
        self.rain_level = spec.normalised(RAIN_THRESHOLD)
        allowed = window_starts(fields, self.window)
        self.starts = allowed if starts is None else [s for s in starts if s in set(allowed)]
        if not self.starts:
            raise InputError(f"no window of {self.window} consecutive frames among the given starts")
        init = context - 1
        windows = []
        for start in self.starts:
            window = load_frames(fields, slice(start, start + self.window))
            if frame == "lagrangian":
                velocity = window_motion(window, fields.variables, context)
                window = motion.to_motion_frame(window, velocity, init)
            windows.append(window)
        moved = np.stack(windows)  # (N, S, C, H, W) normalised, in the frame of departures
        self.init_frames = moved[:, init]
        times = fields.times
        if diurnal_change is not None:
            # Departures from persistence plus the mean diurnal change: subtract the change's path.
            for w, start in enumerate(self.starts):
                moved[w] -= diurnal.path(diurnal_change, times[start : start + self.window], init)
        self.covariates = (
            np.zeros((len(self.starts), 0, ny, nx), np.float32)
            if covariates is None
            else np.stack([covariates.at(times[s + init]) for s in self.starts])
        )
        self.departures = moved - moved[:, init : init + 1]
        #: ``(2, S)`` count and sum of squares of the finite departures, to pool a scale over stores
        self.moments = departure_moments(self.departures)
        self.scale = departure_scale([self.moments]) if scale is None else np.asarray(scale, np.float32)

    def _draw(self, rng: np.random.Generator) -> Crop:
        n, _, _, ny, nx = self.departures.shape
        w = int(rng.integers(n))
        return w, int(rng.integers(ny - self.size[0] + 1)), int(rng.integers(nx - self.size[1] + 1))

    def _rain_fraction(self, crop: Crop) -> float:
        w, y0, x0 = crop
        init = self.init_frames[w, self.rain, y0 : y0 + self.size[0], x0 : x0 + self.size[1]]
        return float(np.mean(init >= self.rain_level))

    def _crop(self, rng: np.random.Generator) -> Crop:
        if not self.rain_weighted:
            return self._draw(rng)
        return rain_weighted_choice(rng, self._draw, self._rain_fraction)

    def sample(self, i: int) -> dict:
        """Sample ``i`` of the global stream (a pure function of ``seed`` and ``i``)."""
        rng = np.random.default_rng([self.seed, i])
        w, y0, x0 = self._crop(rng)
        ys, xs = slice(y0, y0 + self.size[0]), slice(x0, x0 + self.size[1])
        dep = self.departures[w, :, :, ys, xs] / self.scale[:, None, None, None]
        cond = np.concatenate([self.init_frames[w, :, ys, xs], self.covariates[w, :, ys, xs]])
        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            dep, cond = (np.rot90(a, k, axes=(-2, -1)) for a in (dep, cond))
            if flip:
                dep, cond = dep[..., ::-1], cond[..., ::-1]
        finite = np.isfinite(dep)
        return {
            "frames": torch.from_numpy(np.where(finite, dep, np.float32(0)).astype(np.float32)),
            "valid": torch.from_numpy(finite.all(axis=1, keepdims=True).astype(np.float32)),
            "condition": torch.from_numpy(np.nan_to_num(cond).astype(np.float32)),
            "start": self.starts[w],
            "y0": y0,
            "x0": x0,
        }


def departure_scale(moments: Sequence[np.ndarray]) -> np.ndarray:
    """``(S,)`` RMS departure per window position pooled over streams' :attr:`DepartureWindowStream.moments`.

    The init frame's departure is zero by construction; its scale is set to 1 so nothing divides by 0.
    """
    count, squares = np.sum(moments, axis=0)
    rms = np.sqrt(squares / np.maximum(count, 1))
    return np.where(rms > 0, rms, 1.0).astype(np.float32)


class MixedStream(IndexedStream):
    """Several streams as one: sample ``i`` comes from stream ``j`` drawn with probability ``weights[j]``.

    The draw uses ``numpy.random.default_rng([seed, i, 1])`` and the chosen stream's own ``sample(i)``, so
    the mixture is as reproducible and resumable as its parts.
    """

    def __init__(
        self,
        streams: Sequence[IndexedStream],
        weights: Sequence[float],
        *,
        seed: int = 0,
        length: int | None = None,
        start_index: int = 0,
    ) -> None:
        super().__init__()
        if not streams or len(streams) != len(weights):
            raise InputError("a mixture needs one weight per stream and at least one stream")
        p = np.asarray(weights, dtype=np.float64)
        self.streams, self.p = list(streams), p / p.sum()
        self.seed, self.length, self.start_index = seed, length, start_index

    def sample(self, i: int) -> dict:
        """Sample ``i`` of the mixture."""
        j = int(np.random.default_rng([self.seed, i, 1]).choice(len(self.streams), p=self.p))
        return self.streams[j].sample(i)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles covering ``[0, length)``: evenly spread, at most ``tile - overlap`` apart.

    The first tile starts at 0 and the last ends flush with ``length``; ``tile >= length`` gives ``[0]``.
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise InputError(f"tile ({tile}) must be positive and overlap ({overlap}) in [0, tile)")
    if tile >= length:
        return [0]
    step = tile - overlap
    n = math.ceil((length - tile) / step) + 1
    # Even spacing (length - tile) / (n - 1) <= step; rounding keeps every gap <= step, an integer.
    return sorted({round(k * (length - tile) / (n - 1)) for k in range(n)})


def _ramp(n: int, overlap: int) -> np.ndarray:
    """Raised-cosine rise over ``overlap`` cells at both ends of ``n``, 1 between; > 0 everywhere."""
    i = np.arange(n, dtype=np.float64)
    if overlap == 0:
        return np.ones(n)
    edge = np.minimum(i, n - 1 - i) + 0.5  # distance to the nearer edge, in cells (half-cell centred)
    return np.where(edge < overlap, 0.5 - 0.5 * np.cos(np.pi * np.minimum(edge / overlap, 1.0)), 1.0)


def blend_weight(height: int, width: int, overlap: int) -> np.ndarray:
    """Weight of each cell of a tile when overlapping tiles are averaged.

    Parameters
    ----------
    height, width : int
        Tile shape in grid cells.
    overlap : int
        Cells over which the weight rises at each edge (raised cosine); 0 gives all ones.

    Returns
    -------
    np.ndarray
        float32, dims ``(height, width)``, strictly positive, 1 in the interior.
    """
    return np.outer(_ramp(height, overlap), _ramp(width, overlap)).astype(np.float32)


def tiles(shape: tuple[int, int], tile: int, overlap: int) -> list[tuple[slice, slice]]:
    """All ``(y, x)`` windows of tiles of side ``tile`` (clipped to the grid) covering ``shape``."""
    ny, nx = shape
    return [
        (slice(y0, y0 + min(tile, ny)), slice(x0, x0 + min(tile, nx)))
        for y0 in tile_starts(ny, tile, overlap)
        for x0 in tile_starts(nx, tile, overlap)
    ]
