"""Spreading independent forecasts (init times of a skill study or a backfill) over dask.distributed workers.

No home-made cluster: ``--workers N`` starts a local ``dask.distributed`` cluster (N processes, one thread
each), ``--scheduler ADDRESS`` joins an existing one (``dask scheduler`` / ``dask worker``, dask-jobqueue on
SLURM, ...). Tasks carry picklable recipes, never models: each worker process loads a checkpoint once and
keeps it (:func:`worker_cached`), keyed by path and sha256. Member-keyed randomness makes every forecast the
same number for number wherever it runs, so the serial and the distributed run give the same results.
Workers must see the paths the tasks name (checkpoint, input, outputs): a shared filesystem or URLs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, TypeVar

from dydiff_earth.errors import InputError

T = TypeVar("T")
R = TypeVar("R")

#: Per worker process: what :func:`worker_cached` built (models, opened inputs), by key.
_CACHE: dict[Hashable, Any] = {}


def check_options(workers: int | None, scheduler: str | None) -> None:
    """``--workers`` and ``--scheduler`` exclude each other; a local cluster needs at least one worker."""
    if workers is not None and scheduler is not None:
        raise InputError(
            "give --workers N (a local cluster) or --scheduler ADDRESS (an existing one), not both"
        )
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if scheduler is not None and not scheduler.strip():
        raise InputError("--scheduler needs an address such as tcp://10.0.0.5:8786")


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise InputError(
            "--workers and --scheduler need dask.distributed: pip install 'dydiff-earth[distributed]'"
        ) from None
    return distributed


@contextlib.contextmanager
def client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any | None]:
    """A ``distributed.Client`` on a local cluster of ``workers`` processes or at ``scheduler``; else None.

    A local cluster has one thread per worker: a forecast already uses the cores it is given, and a
    process per task keeps torch's intra-op threads from competing (dask sets ``OMP_NUM_THREADS=1`` in
    the workers it spawns). It is closed on exit; an existing cluster is left running. The client is not
    made dask's default: tasks go to the workers explicitly, and this process keeps computing its own
    chunks (truth, scores) itself.
    """
    check_options(workers, scheduler)
    if workers is None and scheduler is None:
        yield None
        return
    distributed = _distributed()
    if scheduler is not None:
        try:
            connected = distributed.Client(scheduler, timeout="30s", set_as_default=False)
        except OSError as exc:
            raise InputError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
        with connected:
            yield connected
        return
    import dask

    # dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in the workers it spawns, which turns off glibc's
    # dynamic mmap threshold: every large tensor is then mapped and unmapped afresh, and a forecast took
    # 2.6 x the CPU time of the same forecast in this process (measured, docs/scaling.md). Keep dask's
    # thread limits, not that (None unsets it, distributed.nanny._get_env_variables). An earlier cluster
    # of this process may also have left it in os.environ, which workers inherit.
    with (
        dask.config.set({f"distributed.nanny.pre-spawn-environ.{_TRIM}": None}),
        _without_environ(_TRIM),
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,  # a failed task is reported once, by the caller
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as local,
    ):
        yield local


_TRIM = "MALLOC_TRIM_THRESHOLD_"


@contextlib.contextmanager
def _without_environ(name: str) -> Iterator[None]:
    """``name`` out of ``os.environ`` for the duration (restored after)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def map_completed(
    func: Callable[[T], R], items: Sequence[T], cluster: Any | None = None
) -> Iterator[tuple[int, R | None, BaseException | None]]:
    """``(index, func(item), None)`` or ``(index, None, error)`` for every item, as each completes.

    Without a cluster, in this process in order; with one, on its workers in any order. A failure is
    yielded, not raised, so that the caller reports it and keeps the other results. ``func`` must be
    picklable for a cluster (a module-level function or a ``functools.partial`` of one).
    """
    if cluster is None:
        for i, item in enumerate(items):
            try:
                yield i, func(item), None
            except Exception as exc:
                yield i, None, exc
        return
    distributed = _distributed()
    # pure=False: equal arguments still get a task each (a retried init must run again).
    futures = {cluster.submit(_on_worker, func, item, pure=False): i for i, item in enumerate(items)}
    for future in distributed.as_completed(futures, loop=cluster.loop):
        i = futures[future]
        try:
            yield i, future.result(), None
        except Exception as exc:
            yield i, None, exc
        finally:
            future.release()


def _on_worker(func: Callable[[T], R], item: T) -> R:
    """``func(item)`` with the dask arrays it reads (the lazy input) computed in this task's thread.

    Inside a task dask computes on the cluster's client by default: every read of an input window went
    back through the scheduler, and the worker ran other tasks while this one waited.
    """
    import dask

    with dask.config.set(scheduler="synchronous"):
        return func(item)


def worker_cached(key: Hashable, build: Callable[[], T]) -> T:
    """``build()`` once per process (worker) and key, then the same object (a model loaded once)."""
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def describe(error: BaseException) -> str:
    """One line for a failed task: the error's type and first line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__


__all__ = ["check_options", "client", "describe", "map_completed", "worker_cached"]
