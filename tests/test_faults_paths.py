"""Nothing is written outside the results directory and the cache directory (issue 21): a suite's data root
is only read, relative data paths resolve against the suite file, ``..`` is refused in one line, and every
writer passes the one check of :mod:`attn_zoo.paths` and writes atomically."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from attn_zoo.cli import main
from attn_zoo.data import pathfinder as pf
from attn_zoo.grid import SuiteError, load_suite
from attn_zoo.paths import OutputError, allow_writes, atomic_output, cache_dir, restore_roots, writable

PATHFINDER_SUITE = """
[suite]
name = "pf"
[model]
preset = "zoo_s32"
img_size = 32
[data]
source = "pathfinder"
root = {root}
train_size = 8
test_size = 8
[train]
steps = 1
batch_size = 4
[budget]
metric = "none"
[measure]
latency = false
count = false
threads = 1
[grid]
mechanism = ["global"]
"""


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


def write_pf_suite(directory: Path, root: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pf.toml"
    path.write_text(PATHFINDER_SUITE.format(root=f'"{root}"'))
    return path


def test_a_relative_data_root_resolves_against_the_suite_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = load_suite(write_pf_suite(tmp_path / "suites", "data/pf"))
    assert suite.cells[0].spec.data.root == str(tmp_path / "suites" / "data" / "pf")
    absolute = load_suite(write_pf_suite(tmp_path / "s2", str(tmp_path / "abs")))
    assert absolute.cells[0].spec.data.root == str(tmp_path / "abs")  # absolute paths stay as written
    typed = load_suite(tmp_path / "suites" / "pf.toml", {"data.root": "mine"})  # a command line's: the cwd's
    assert typed.cells[0].spec.data.root == str(tmp_path / "mine")


@pytest.mark.parametrize("root", ["../x", "a/../../x", "..", "ok/.."])
def test_dotdot_in_a_data_root_is_refused_in_one_line(tmp_path, root):
    path = write_pf_suite(tmp_path / "suites", root)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    text = str(info.value)
    assert text.startswith(f"{path}: [data.root] ") and "'..' is not allowed" in text and "\n" not in text


def test_pathfinder_reads_a_root_and_writes_only_to_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTN_ZOO_CACHE", str(tmp_path / "cache"))
    elsewhere = tmp_path / "elsewhere"
    # a root that does not exist is not created: the split is generated and cached in the cache directory
    images, _ = pf.load_or_generate(cache_dir() / "pathfinder", "test", 8, 32, "easy", 0, [elsewhere])
    assert not elsewhere.exists()
    assert [p.name for p in (tmp_path / "cache" / "pathfinder").iterdir()] == [
        f"pathfinder-v{pf.GENERATOR_VERSION}-easy-r32-n8-s0-test.npz"
    ]
    # a valid file in the root is read, never rewritten, and the cache is not touched
    pf.load_or_generate(elsewhere, "val", 8, 32, "easy", 0)
    before = {p: p.read_bytes() for p in elsewhere.iterdir()}
    again, _ = pf.load_or_generate(tmp_path / "cache2", "val", 8, 32, "easy", 0, [elsewhere])
    assert {p: p.read_bytes() for p in elsewhere.iterdir()} == before and not (tmp_path / "cache2").exists()
    assert again.shape == (8, 32, 32) and np.array_equal(images, pf.load_or_generate(None, "test", 8, 32, "easy", 0)[0])
    # a damaged file in the root is not repaired there: the cache gets the good copy
    damaged = next(elsewhere.iterdir())
    damaged.write_bytes(b"junk")
    pf.load_or_generate(tmp_path / "cache3", "val", 8, 32, "easy", 0, [elsewhere])
    assert damaged.read_bytes() == b"junk" and len(list((tmp_path / "cache3").iterdir())) == 1


def test_a_run_with_a_data_root_outside_the_results_writes_nothing_there(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    elsewhere, out, cache = tmp_path / "abs" / "elsewhere", tmp_path / "results", tmp_path / "cache"
    suite = write_pf_suite(tmp_path / "suites", str(elsewhere))
    args = ["run", str(suite), "--out", str(out), "--cache-dir", str(cache), "--executor", "inline"]
    assert main([*args, "--no-progress", "--no-plots"]) == 0, capsys.readouterr().err
    assert not (tmp_path / "abs").exists()
    new = files_under(tmp_path) - files_under(tmp_path / "suites") - {tmp_path / "suites"}
    stray = sorted(str(p) for p in new if not (p.is_relative_to(out) or p.is_relative_to(cache)))
    assert not stray
    assert len(list((cache / "pathfinder").glob("*.npz"))) == 2  # train and test splits, cached once
    assert "ATTN_ZOO_CACHE" not in os.environ or os.environ["ATTN_ZOO_CACHE"] != str(cache)  # this run's only


def test_the_cache_directory_follows_the_flag_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTN_ZOO_CACHE", str(tmp_path / "env"))
    assert cache_dir(tmp_path / "flag") == tmp_path / "flag"
    assert cache_dir() == tmp_path / "env"
    monkeypatch.delenv("ATTN_ZOO_CACHE")
    assert cache_dir().name == "attn_zoo"


# -- every writer passes the one check --------------------------------------------------------------------
def _figure(path: Path) -> None:
    from matplotlib.figure import Figure

    from attn_zoo.report.style import save

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    save(fig, path)


def _html(path: Path) -> None:
    from attn_zoo.grid import Store
    from attn_zoo.report.html import write_html_report

    allow_writes(path.parent.parent / "store")
    write_html_report(Store(path.parent.parent / "store" / "s.sqlite"), path, [])


def _checkpoint(path: Path) -> None:
    from attn_zoo.train.checkpoint import save_checkpoint

    save_checkpoint(path, {"step": 1, "w": torch.zeros(2)})


def _pathfinder_cache(path: Path) -> None:
    pf.load_or_generate(path.parent, "test", 4, 32, "easy", 0)


def _erf_map(path: Path) -> None:
    from attn_zoo.measure.erf import measure_erf

    model = torch.nn.Conv2d(1, 4, 3, padding=1)
    measure_erf(model, img_size=8, in_chans=1, n_images=1, features=model, save_to=path)


def _examples_png(path: Path) -> None:
    pf.save_examples_png(path, n=2, resolution=32)


def _csv(path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text("a,b\n1,2\n")


def _ray_artifacts(path: Path) -> None:
    from attn_zoo.grid.ray_executor import unpack_artifacts

    result = unpack_artifacts({"status": "ok"}, {"erf": (path.name, b"map")}, path.parent)
    assert result["artifacts"] == {"erf": str(path.resolve())}


WRITERS = {
    "figure": (_figure, "f.png"),
    "html": (_html, "report.html"),
    "checkpoint": (_checkpoint, "c.ckpt"),
    "pathfinder_cache": (_pathfinder_cache, None),
    "examples_png": (_examples_png, "ex.png"),
    "csv": (_csv, "rows.csv"),
    "erf_map": (_erf_map, "erf.npy"),
    "cell_artifacts_from_ray": (_ray_artifacts, "erf.npy"),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_refuses_a_path_outside_the_allowed_directories(tmp_path, writer):
    fn, name = WRITERS[writer]
    inside, outside = tmp_path / "out" / "sub", tmp_path / "elsewhere"
    with restore_roots():
        allow_writes(tmp_path / "out")
        with pytest.raises(OutputError, match="outside the directories this command writes"):
            fn(outside / (name or "x"))
        assert not outside.exists()
        fn(inside / (name or "x"))
    written = [p for p in inside.iterdir() if p.is_file()]
    assert written and all(p.stat().st_size > 0 and not p.name.startswith(".") for p in written)
    assert (name is None) or [p.name for p in written] == [name]  # no temporary file left beside it


def test_writable_follows_symlinks_and_collapses_dotdot(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with restore_roots():
        allow_writes(tmp_path / "out")
        assert writable(tmp_path / "out" / "a" / "b.png") == tmp_path / "out" / "a" / "b.png"
        for bad in (tmp_path / "out" / ".." / "x", tmp_path / "out" / "link" / "x"):
            with pytest.raises(OutputError):
                writable(bad)


def test_a_full_disk_leaves_no_truncated_figure_and_says_so_in_one_line(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    real = Figure.savefig

    def fill(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", fill)
    target = tmp_path / "figs" / "a.png"
    with pytest.raises(OutputError) as info:
        _figure(target)
    assert str(info.value) == f"cannot write {str(target)!r}: No space left on device"
    assert list((tmp_path / "figs").iterdir()) == []  # neither the figure nor a temporary file
    monkeypatch.setattr(Figure, "savefig", real)
    target.parent.rmdir()
    target.parent.write_text("a file where the directory goes")
    with pytest.raises(OutputError, match="it is an existing file, not a directory"):
        _figure(target)


def _fake_store(tmp_path: Path) -> Path:
    from _grid_fakes import fake_runner, write_suite

    from attn_zoo.grid import load_suite, run_suite

    store = tmp_path / "out" / "fake.sqlite"
    run_suite(load_suite(write_suite(tmp_path, seeds=2)), store, runner=fake_runner, progress=False)
    return store


def test_report_on_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    from matplotlib.figure import Figure

    store = _fake_store(tmp_path)

    def fill(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", fill)
    figs = tmp_path / "figs"
    assert main(["report", str(store), "--out", str(figs), "--html"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attn-zoo: error: cannot write '{figs}/") and err.endswith(": No space left on device\n")
    assert err.count("\n") == 1 and list(figs.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a small tmpfs needs root")
def test_report_on_a_really_full_filesystem(tmp_path, capsys):
    store = _fake_store(tmp_path)
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        with contextlib.suppress(OSError), open(mnt / "filler", "wb") as f:  # fill it, then leave a few bytes
            while True:
                f.write(b"x" * 1024)
                f.flush()
        (mnt / "filler").write_bytes((mnt / "filler").read_bytes()[:-2048])
        assert main(["report", str(store), "--out", str(mnt / "r")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.endswith(": No space left on device\n"), err
        assert [p.name for p in mnt.rglob("*") if p.is_file()] == ["filler"]  # no truncated PNG, no temporary file
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
