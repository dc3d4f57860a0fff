"""Writing and reading what users keep: forecasts (NetCDF/zarr), checkpoints; atomic publish."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import xarray as xr

from dydiff_earth.errors import InputError


def _fsync_tree(path: Path) -> None:
    """Flush a file, or every file of a directory tree, to disk before it is renamed into place."""
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove(path: Path) -> None:
    """Remove a file, link or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_writable(final: Path) -> None:
    """Create the output's directory and check that it takes files, before any work is spent on it."""
    existing = next(p for p in (final.parent, *final.parent.parents) if p.exists() or p == Path(p.anchor))
    if existing.exists() and not existing.is_dir():
        raise InputError(f"cannot write output {final}: {existing} is a file, not a directory")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise InputError(
            f"cannot create the directory of output {final}: {reason}; choose another output"
        ) from None
    if not os.access(final.parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write output {final}: directory {final.parent} is not writable")
    if final.exists() and not (final.is_file() or final.is_dir()):
        raise InputError(f"output {final} exists and is not a file or a directory; choose another output")


def exchange(a: Path, b: Path) -> bool:
    """Swap two directory trees in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    A reader of ``b`` sees the old tree or the new one, never no tree at all (the gap between the two
    renames of a move-aside-then-rename). Returns False where the kernel, C library or file system
    cannot exchange; the caller then falls back to two renames.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def link_tree(src: Path, dst: Path) -> None:
    """Recreate the directory tree ``src`` at ``dst`` with hard links to its files (copies where links fail).

    A copy-on-write clone of a zarr store: zarr replaces a file it rewrites (temporary + rename), so
    writing into the clone never changes a file of ``src`` that a reader may be reading.
    """
    for folder, _, files in os.walk(src):
        target = dst / Path(folder).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            try:
                os.link(Path(folder) / name, target / name)
            except OSError:
                shutil.copy2(Path(folder) / name, target / name)


@contextlib.contextmanager
def publish(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write into; rename it onto ``path`` only on success.

    Readers never see a partial file or store: the temporary name starts with ``.`` and ends in
    ``.tmp``, it is fsynced, then renamed (atomic on POSIX for a file; a directory store is swapped in
    with `exchange`, or where that is not possible the old one is moved aside first and removed after).
    On an exception the temporary is removed.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise InputError(f"{final} exists; choose another output or remove it")
    check_writable(final)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.is_dir() and not final.is_symlink():
            if exchange(tmp, final):
                shutil.rmtree(tmp, ignore_errors=True)  # the old store, now under the temporary name
            else:
                old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            remove(tmp)


# Consolidated metadata: every store written here also holds the metadata of all its arrays in its root
# zarr.json, so that one read sees one version of the store. Read array by array, a store grown by an
# append to a clone swapped in whole (feeds, radar ingest) can show a reader the old store's ``precip``
# and the new one's ``time``, which disagree in length. xarray reads consolidated metadata by default,
# so ``xr.open_zarr(path)`` gets the same guarantee (and no warning). zarr 3 warns that it is not yet
# part of the v3 specification; xarray and the cloud archives rely on it.
_CONSOLIDATION_WARNINGS = (
    "Consolidated metadata is currently not part",  # zarr, on every write
    "Failed to open Zarr store with consolidated metadata",  # xarray, reading a store without it
)


@contextlib.contextmanager
def consolidation_quiet() -> Iterator[None]:
    """Inside the block, zarr and xarray do not warn about consolidated metadata (see above)."""
    with warnings.catch_warnings():
        for message in _CONSOLIDATION_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


def to_zarr(ds: xr.Dataset, target: str | Path, **kwargs) -> None:
    """``ds.to_zarr(target, **kwargs)`` in zarr format 3 with consolidated metadata (on appends too)."""
    with consolidation_quiet():
        ds.to_zarr(target, zarr_format=3, consolidated=True, **kwargs)


def open_zarr(path: str | Path, **kwargs) -> xr.Dataset:
    """``xr.open_zarr``: from the consolidated metadata where the store has it, else array by array."""
    with consolidation_quiet():
        return xr.open_zarr(path, consolidated=None, **kwargs)


def write_zarr(ds: xr.Dataset, path: str | Path, *, encoding: dict | None = None) -> Path:
    """Write ``ds`` as a zarr format 3 store with consolidated metadata, published atomically."""
    final = Path(path)
    with publish(final) as tmp:
        # "w-", not "w": the temporary is new, and "w" clears a store by removing and recreating its
        # directory, a moment in which a killed writer's temporary has vanished.
        to_zarr(ds, tmp, mode="w-", encoding=encoding or {})
    return final


# --- checkpoints: safetensors weights + JSON metadata; loading never unpickles -----------------------------

CHECKPOINT_FORMAT = "dydiff-earth-checkpoint/1"
_META_KEY = "dydiff_earth"


def save_checkpoint(path: str | Path, tensors: dict, meta: dict) -> Path:
    """Write ``tensors`` (name -> torch.Tensor) and JSON-able ``meta`` as one safetensors file, atomically."""
    import json

    from safetensors.torch import save

    final = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, **meta}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    # Serialised here and written with open(), not safetensors' save_file, which creates files readable by
    # their owner only: a checkpoint gets the permissions of the user's umask like every other output.
    blob = save(contiguous, metadata={_META_KEY: json.dumps(payload)})
    with publish(final) as tmp:
        tmp.write_bytes(blob)
    return final


def load_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tensors, meta)``.

    A directory holding ``model.safetensors`` (+ optional ``config.json``) is accepted too. Anything
    that is not a safetensors file of this format (a pickle, a truncated file) is an ``InputError``.
    """
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    extra: dict = {}
    if p.is_dir():
        if (p / "config.json").is_file():
            extra = json.loads((p / "config.json").read_text())
        p = p / "model.safetensors"
    if not p.is_file():
        raise InputError(f"checkpoint {path} not found")
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"{path} is not a dydiff-earth checkpoint (safetensors; pickles are never loaded): {reason}"
        ) from None
    if _META_KEY not in header and not extra:
        raise InputError(f"{path} is a safetensors file without dydiff-earth metadata")
    meta = {**extra, **(json.loads(header[_META_KEY]) if _META_KEY in header else {})}
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    return tensors, meta


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (or of a directory's ``model.safetensors``), for provenance."""
    import hashlib

    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    digest = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- forecasts ---------------------------------------------------------------------------------------------

FORECAST_SUFFIXES = (".nc", ".zarr")


def write_forecast(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a forecast as compressed NetCDF-4 (``.nc``) or zarr format 3 (``.zarr``), published atomically.

    Data variables are stored as float32 with zlib (NetCDF) or zarr's default codec; a complete file
    appears under ``path`` only once it is fully written and flushed.
    """
    final = Path(path)
    if final.suffix not in FORECAST_SUFFIXES:
        raise InputError(f"output {final} must end in .nc (NetCDF) or .zarr")
    floats = [n for n, v in ds.data_vars.items() if v.dtype.kind == "f"]
    # Time coords are written in minutes since init: exact for radar cadences and readable by CF tools.
    time_enc = {"lead_time": {"units": "minutes", "dtype": "float64"}}
    if final.suffix == ".nc":
        encoding = {n: {"zlib": True, "complevel": 4, "dtype": "float32"} for n in floats}
        with publish(final) as tmp:
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding={**encoding, **time_enc})
        return final
    return write_zarr(ds, final, encoding={**{n: {"dtype": "float32"} for n in floats}, **time_enc})


def open_forecast(path: str | Path) -> xr.Dataset:
    """Open a forecast written by :func:`write_forecast`, lazily; a bad path is an ``InputError``."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"forecast {p} not found")
    try:
        if p.suffix == ".zarr" or p.is_dir():
            return open_zarr(p, decode_timedelta=True)
        return xr.open_dataset(p, decode_timedelta=True, chunks={})
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read forecast {p}: {first}") from None
