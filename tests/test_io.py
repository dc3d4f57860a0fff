"""Tests of dydiff_earth.io's publishing: stores swapped in whole while a reader reads them; checkpoints."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
import xarray as xr
from _store_reader import reading

from dydiff_earth import io, testing


def test_exchange_swaps_two_trees(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("a")
    (b / "f").write_text("b")
    if not io.exchange(a, b):
        pytest.skip("this kernel or file system cannot exchange directories")
    assert (a / "f").read_text() == "b" and (b / "f").read_text() == "a"


def test_link_tree_clones_with_hard_links(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "x" / "c").mkdir(parents=True)
    (src / "zarr.json").write_text("{}")
    (src / "x" / "c" / "0").write_bytes(b"\0" * 8)
    io.link_tree(src, tmp_path / "dst")
    for rel in ("zarr.json", "x/c/0"):
        assert (tmp_path / "dst" / rel).stat().st_ino == (src / rel).stat().st_ino


def test_a_reader_never_sees_a_partial_append(tmp_path: Path) -> None:
    """Appends to a hard-linked clone swapped in whole: a reader sees the old store or the new one.

    Appending in place instead fails here: a reader catches the time coordinate one frame longer than
    the variable ("conflicting sizes for dimension 'time'") in several of its reads.
    """
    frames = testing.tiny_field(12, size=(32, 32))
    store = tmp_path / "feed.zarr"
    encoding = {"time": {"units": "seconds since 1970-01-01", "dtype": "int64"}}
    io.write_zarr(frames.isel(time=slice(0, 1)), store, encoding=encoding)
    with reading(store) as (reads, failures):
        for i in range(1, 12):
            frame = frames.isel(time=slice(i, i + 1)).drop_vars(["latitude", "longitude"])
            with io.publish(store) as tmp:
                io.link_tree(store, tmp)
                io.to_zarr(frame, tmp, append_dim="time", mode="a")
    assert failures == []
    assert len(reads) >= 3 and reads == sorted(reads)
    with xr.open_zarr(store, consolidated=False) as ds:
        xr.testing.assert_equal(ds.load(), frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feed.zarr"]  # no temporaries left


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_checkpoint_gets_the_permissions_of_the_umask(tmp_path: Path, umask: int) -> None:
    """Like every other output (safetensors' own writer makes files readable by their owner only)."""
    old = os.umask(umask)
    try:
        path = io.save_checkpoint(tmp_path / "m.safetensors", {"w": torch.arange(3.0)}, {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    tensors, meta = io.load_checkpoint(path)
    assert tensors["w"].tolist() == [0.0, 1.0, 2.0] and meta["x"] == 1
