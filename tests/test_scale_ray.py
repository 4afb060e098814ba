"""The Ray executor (issue 9, item 1): a local Ray cluster of two nodes (a head and a worker node, one CPU
each: two cells at once) runs a tiny grid through `attn-zoo run --executor ray --address ADDR` and stores
the same rows as the local executor; a rerun with the other executor finds everything done; a Ray worker
killed mid-cell makes Ray run the cell again, and the store holds it once. Without Ray installed the
executor says which extra to install. The cluster is started with the commands docs/scaling.md lists
(`ray start --head ... --block`, `ray start --address ... --block`), with token authentication on.

Runtime on 2 loaded CPU cores: about 60 s, most of it two real cells run twice (once per executor) and the
cluster's start (~8 s). Tests that need no Ray (messages, suite checks, artifact shipping) take ~1 s.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from _grid_fakes import ROOT, pid_alive, wait_for, write_suite

from attn_zoo.cli import main
from attn_zoo.errors import ConfigError
from attn_zoo.grid import Store, SuiteError, create_executor, load_suite, run_suite
from attn_zoo.grid.ray_executor import MARKER, run_on_node, unpack_artifacts

# Ray is imported by the cluster fixture, after the token settings are in the environment: Ray reads its
# authentication mode once, when it is first imported
HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray is an optional extra: pip install 'attn-zoo[ray]'")
RAY_CLI = Path(sys.executable).with_name("ray")

TINY = """
[suite]
name = "tiny_ray"
executor = {{ cpus = 1 }}

[model]
preset = "zoo_s32"
dims = [12, 24, 48, 96]
depths = [2, 2, 2, 2]
drop_path_rate = 0.0

[data]
source = "synthetic"
train_size = 64
test_size = 32

[train]
steps = 3
batch_size = 16

[budget]
metric = "none"

[measure]
latency = false
memory = false
efficiency = false
threads = 1

[grid]
mechanism = ["global", "swin"]
seed = [{seed}]

[mechanisms.swin]
window = 4
"""
# numbers that depend only on the configuration and the code: equal, bit for bit, whatever runs the cell
DETERMINISTIC = ("params", "macs", "flops", "attention_macs", "train_loss", "train_steps", "test_top1", "test_loss")


# -- without Ray ------------------------------------------------------------------------------------------
def test_without_ray_the_executor_names_the_extra_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'attn-zoo\[ray\]'"):
        create_executor("ray")
    suite = write_suite(tmp_path, seeds=1)
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--executor", "ray", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--executor ray needs Ray" in err and "attn-zoo[ray]" in err
    assert not (tmp_path / "o").exists()  # nothing written


def test_address_needs_the_ray_executor(tmp_path, capsys):
    suite = write_suite(tmp_path, seeds=1)
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--address", "10.0.0.1:6379"]) == 2
    assert "--address names a Ray cluster; it needs --executor ray, not 'local'" in capsys.readouterr().err


@needs_ray
def test_an_address_that_takes_no_connection_is_one_clear_error_not_minutes_of_retries():
    import ray

    if ray.is_initialized():
        pytest.skip("Ray is connected in this process already (the executor then keeps that connection)")
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(ConfigError, match=rf"cannot reach the Ray cluster at {address}: Connection refused"):
        create_executor("ray", address=address)
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("{ cpus = 0 }", r"\[suite.executor.cpus\] got 0 \(int\); allowed: .*a number > 0"),
        ("{ gpus = 1.5 }", r"\[suite.executor.gpus\] got 1.5 \(float\); allowed: .*above 1 a whole number"),
        ("{ gpus = -1 }", r"\[suite.executor.gpus\] got -1 \(int\); allowed: .*a number >= 0"),
        ("{ jobs = 0 }", r"\[suite.executor.jobs\] got 0 \(int\); allowed: cells at once"),
        ('{ cpus = "4" }', r"\[suite.executor.cpus\] got '4' \(str\)"),
        ("{ max_retries = -1 }", r"\[suite.executor.max_retries\] got -1 \(int\)"),
        ("{ gpu = 1 }", r"\[suite.executor.gpu\] unknown key; allowed: jobs, cpus, gpus, max_retries"),
    ],
)
def test_bad_resource_requests_are_one_clear_error(tmp_path, table, message):
    suite = write_suite(tmp_path, seeds=1)
    suite.write_text(suite.read_text().replace('description = "', f'executor = {table}\ndescription = "'))
    with pytest.raises(SuiteError, match=message):
        load_suite(suite)


def test_good_resource_requests_reach_the_executor_options(tmp_path):
    suite = write_suite(tmp_path, seeds=1)
    suite.write_text(
        suite.read_text().replace('description = "', 'executor = { cpus = 4, gpus = 0.5 }\ndescription = "')
    )
    assert dict(load_suite(suite).executor) == {"cpus": 4, "gpus": 0.5}


ARTIFACT_WORKER = r"""
import json, os, sys
spec, result, artifacts = sys.argv[1:4]
os.makedirs(artifacts, exist_ok=True)
path = os.path.join(artifacts, "sub", "map.bin")
os.makedirs(os.path.dirname(path), exist_ok=True)
open(path, "wb").write(b"\x00erf")
json.dump({"status": "ok", "metrics": {"x": 1.0}, "artifacts": {"erf": path, "outside": "/etc/hostname"}},
          open(result, "w"))
"""


def test_artifacts_travel_back_when_the_node_cannot_see_the_results_directory(tmp_path):
    """No shared file system (no marker): the cell writes on the node, the runner gets the files; with the
    marker the cell writes in place. Paths outside the cell's directory are never shipped or written."""
    command = [sys.executable, "-c", ARTIFACT_WORKER]
    spec = load_suite(write_suite(tmp_path, seeds=1)).cells[0].spec.to_dict()
    driver_dir = tmp_path / "results" / "artifacts" / "cell"
    result, shipped = run_on_node(spec, str(driver_dir), "session", command=command)
    assert result["status"] == "ok" and set(shipped) == {"erf"} and shipped["erf"] == ("sub/map.bin", b"\x00erf")
    assert not driver_dir.exists()  # nothing written here by the node
    result = unpack_artifacts(result, {**shipped, "evil": ("../../escape.bin", b"x")}, driver_dir)
    assert Path(result["artifacts"]["erf"]) == (driver_dir / "sub" / "map.bin").resolve()
    assert (driver_dir / "sub" / "map.bin").read_bytes() == b"\x00erf" and "evil" not in result["artifacts"]
    assert not (tmp_path / "results" / "escape.bin").exists()

    shared = tmp_path / "shared" / "cell"
    shared.mkdir(parents=True)
    (shared / MARKER).write_text("session")
    result, shipped = run_on_node(spec, str(shared), "session", command=command)
    assert shipped is None and Path(result["artifacts"]["erf"]) == shared / "sub" / "map.bin"


# -- a local two-node cluster -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(RAY_CLI), "start", *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    if not wait_for(lambda: "block forever" in log.read_text(errors="replace") or proc.poll() is not None, 120):
        proc.kill()
    if proc.poll() is not None:
        raise RuntimeError(f"`ray start {' '.join(args)}` failed: {log.read_text(errors='replace')[-2000:]}")
    return proc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``(address, env)`` of a Ray cluster of two one-CPU nodes on this machine, token authentication on;
    this process is connected to it. Stopped (SIGTERM to the two `ray start --block`) afterwards."""
    if not HAS_RAY:
        pytest.skip("Ray is an optional extra: pip install 'attn-zoo[ray]'")
    if not RAY_CLI.is_file():
        pytest.skip(f"the ray command is not next to this Python ({RAY_CLI})")
    tmp = tmp_path_factory.mktemp("ray")
    # Ray's own files (sockets: a short path) and its address file, away from /tmp/ray: a `ray.init()`
    # elsewhere on this machine must not find this cluster's address after the test has stopped it
    ray_dir = Path(tempfile.mkdtemp(prefix="azray", dir="/tmp"))
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, **auth, PYTHONPATH=pythonpath)
    address = f"127.0.0.1:{_free_port()}"
    procs = []
    saved = {k: os.environ.get(k) for k in auth}
    try:
        args = [*ARGS, f"--temp-dir={ray_dir}"]
        procs.append(_start(["--head", f"--port={address.split(':')[1]}", *args], env, tmp / "head.log"))
        procs.append(_start([f"--address={address}", *args], env, tmp / "worker.log"))
        os.environ.update(auth)
        imported = "ray" in sys.modules
        import ray

        if imported:  # imported before the token settings: make it read them again
            from ray._raylet import Config

            Config.initialize("")
        ray.init(address=address, log_to_driver=False)
        assert wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, 60), ray.nodes()
        yield address, env
    finally:
        if "ray" in sys.modules:
            with contextlib.suppress(Exception):
                sys.modules["ray"].shutdown()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        for proc in reversed(procs):  # the worker node first, then the head
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(ray_dir, ignore_errors=True)


# what docs/scaling.md shows, with --block so the test can stop exactly what it started
ARGS = ["--num-cpus=1", "--disable-usage-stats", "--block"]


def _rows(store: Path) -> dict[str, dict]:
    frame = Store(store, readonly=True).frame(status=None)
    return {row["cell_id"]: row for row in frame.to_dict("records")}


@needs_ray
@pytest.mark.slow
def test_a_two_node_cluster_stores_the_rows_of_the_local_executor(cluster, tmp_path):
    address, env = cluster
    suite = tmp_path / "tiny_ray.toml"
    suite.write_text(TINY.format(seed=0))
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    command = [sys.executable, "-m", "attn_zoo", "run", str(suite), "--executor", "ray", "--address", address]
    command += ["--out", str(ray_out), "--no-progress", "--no-plots", "--json"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["ok"] == 2

    args = ["run", str(suite), "--out", str(local_out), "--jobs", "2", "--no-progress", "--no-plots", "--json"]
    assert main(args) == 0
    by_ray, by_local = _rows(ray_out / "tiny_ray.sqlite"), _rows(local_out / "tiny_ray.sqlite")
    assert set(by_ray) == set(by_local) and len(by_ray) == 2
    for cell_id, row in by_ray.items():
        assert row["status"] == by_local[cell_id]["status"] == "ok"
        assert row["attempts"] == 1
        for name in DETERMINISTIC:
            assert row[name] == by_local[cell_id][name], (row["label"], name)

    # resume works across executors: the local store is complete for Ray, too
    assert main(["run", str(suite), "--out", str(local_out), "--executor", "ray", "--no-progress", "--no-plots"]) == 0
    assert [c["attempts"] for c in Store(local_out / "tiny_ray.sqlite").cells()] == [1, 1]


# the Ray worker's first run of the cell hangs until the test kills that worker; its second run finishes
LOST_WORKER = r"""
import json, os, sys, time
log, spec, result = sys.argv[1], sys.argv[2], sys.argv[3]
with open(log, "a") as f:
    f.write(f"{os.getppid()} {os.getpid()}\n")
if len(open(log).read().splitlines()) == 1:
    time.sleep(120)
json.dump({"status": "ok", "metrics": {"val_top1": 50.0}}, open(result, "w"))
"""


@needs_ray
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_a_worker_lost_mid_cell_is_run_again_and_stored_once(cluster, tmp_path):
    from attn_zoo.grid.ray_executor import RayExecutor

    suite = load_suite(write_suite(tmp_path, seeds=1, mechanisms=("global",)))
    log = tmp_path / "runs.log"
    executor = RayExecutor(max_retries=1, command=[sys.executable, "-c", LOST_WORKER, str(log)])
    store = tmp_path / "out" / "fake.sqlite"
    summary = {}
    thread = threading.Thread(
        target=lambda: summary.update(s=run_suite(suite, store, executor=executor, progress=False))
    )
    thread.start()
    try:
        assert wait_for(lambda: log.exists() and log.read_text().strip(), 120), "the cell never started"
        ray_worker, cell_process = map(int, log.read_text().split())
        os.kill(ray_worker, signal.SIGKILL)  # the Ray worker process running the cell, as if its node died
    finally:
        thread.join(180)
    assert not thread.is_alive() and summary["s"].ok == 1
    runs = log.read_text().splitlines()
    assert len(runs) == 2 and runs[1].split()[0] != str(ray_worker)  # Ray ran it again, in a new worker
    assert wait_for(lambda: not pid_alive(cell_process), 10), "the lost worker's cell process lives on"
    cells = Store(store).cells()
    assert len(cells) == 1 and cells[0]["status"] == "ok" and cells[0]["attempts"] == 1
    assert cells[0]["metrics"]["val_top1"] == 50.0


def test_the_test_cluster_commands_are_the_guides():
    """docs/scaling.md lists the commands this file runs."""
    guide = (ROOT / "docs" / "scaling.md").read_text()
    for line in (
        "ray start --head --port=6379 --num-cpus=1 --disable-usage-stats --block --temp-dir=$RAY_DIR &",
        "ray start --address=127.0.0.1:6379 --num-cpus=1 --disable-usage-stats --block --temp-dir=$RAY_DIR &",
        "attn-zoo run suite.toml --executor ray --address 127.0.0.1:6379 --out ray --no-progress --no-plots --json",
        "attn-zoo run suite.toml --out local --jobs 2 --no-progress --no-plots --json",
        "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$PWD/auth_token",
    ):
        assert line in guide, line
