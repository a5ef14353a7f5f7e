"""`polytask parallel --backend dask|ray`: jobs on a real cluster's workers.

Most runs join the session's engines with ``--address`` (a LocalCluster and a
local Ray started by the fixtures of _engines.py, which the test process owns);
one run per engine starts its own cluster for the run (no ``--address``). The
output, joblog and exit status are compared with the same run on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from helpers import wait_until

PY = sys.executable
SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli(
    *argv: str, input: str | None = None, timeout: float = 120, **env_extra: str
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC, **env_extra)
    return subprocess.run(
        [PY, "-m", "polytask.cli", "parallel", *argv],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def joblog_rows(path: Path) -> list[tuple[str, ...]]:
    """Seq, Exitval, Signal, Command of each row (times and hosts differ)."""
    lines = path.read_text().splitlines()
    assert lines[0].startswith("Seq\tHost\tStarttime"), lines
    rows = []
    for line in lines[1:]:
        f = line.split("\t")
        rows.append((f[0], f[6], f[7], f[8]))
    return sorted(rows)


@pytest.fixture
def dask_address(dask_cluster: Any) -> str:
    address: str = dask_cluster.scheduler.address
    return address


@pytest.fixture
def ray_address(ray_session: Any) -> str:
    address: str = ray_session.address_info["gcs_address"]
    return address


#: Shell: the pid of the engine's worker process running the job. A Dask worker
#: starts the job's command itself; a Ray worker runs it from a child of its own.
WORKER = {"dask": "$PPID", "ray": "$(ps -o ppid= -p $PPID)"}


@pytest.fixture(params=["dask", "ray"])
def engine(request: pytest.FixtureRequest) -> list[str]:
    """The options that send the jobs to the session's cluster of each engine."""
    name = request.param
    address = request.getfixturevalue(f"{name}_address")
    return ["--backend", name, "--address", address]


def test_output_tag_joblog_and_status_as_local(engine: list[str], tmp_path: Path) -> None:
    cmd = ["-k", "--tag", "-j", "2"]
    job = "echo out {}; echo err {} >&2; echo seq $PARALLEL_SEQ; exit {}"
    local = cli(*cmd, "--joblog", str(tmp_path / "local.log"), job, ":::", "0", "1", "0", "2")
    remote = cli(
        *engine, *cmd, "--joblog", str(tmp_path / "remote.log"), job, ":::", "0", "1", "0", "2"
    )
    assert local.returncode == 2, local.stderr
    assert remote.returncode == local.returncode, remote.stderr
    assert remote.stdout == local.stdout
    assert "0\tout 0\n0\tseq 1\n1\tout 1\n" in remote.stdout
    assert sorted(remote.stderr.splitlines()) == sorted(local.stderr.splitlines())
    rows = joblog_rows(tmp_path / "remote.log")
    assert rows == joblog_rows(tmp_path / "local.log")
    assert [r[1] for r in rows] == ["0", "1", "0", "2"]


def test_keep_order_stdin_block_and_cwd(engine: list[str], tmp_path: Path) -> None:
    r = cli(*engine, "-k", "echo {}", ":::", *[str(i) for i in range(8)])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "".join(f"{i}\n" for i in range(8))
    # --pipe: each block goes to its job's stdin on the worker.
    r = cli(*engine, "--pipe", "-N2", "-k", "wc -l", input="a\nb\nc\nd\ne\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "2", "1"]
    # The job runs in the caller's folder when the worker has it (here: the same machine).
    env_cwd = subprocess.run(
        [PY, "-m", "polytask.cli", "parallel", *engine, "pwd", ":::", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=SRC),
    )
    assert env_cwd.stdout == f"{tmp_path}\n", env_cwd.stderr


def test_timeout_kills_the_command_and_the_worker_lives_on(
    engine: list[str], tmp_path: Path
) -> None:
    # Job 1 records its worker and its child, then waits for that child; job 2 (-j 1:
    # after job 1 ended) checks that the worker still runs (a Ray worker ends with its
    # driver, so this is checked while the run goes on).
    job = (
        f"if [ {{}} = 1 ]; then echo {WORKER[engine[1]]} > {tmp_path}/w; sleep 300 & echo $! > {tmp_path}/p;"
        f" echo before; wait; else kill -0 $(cat {tmp_path}/w) && echo worker alive; fi"
    )
    log = tmp_path / "log"
    r = cli(*engine, "-j", "1", "-k", "--timeout", "2", "--joblog", str(log), job, ":::", "1", "2")
    assert r.returncode == 1, r.stderr
    assert "timed out" in r.stderr
    assert r.stdout == "before\nworker alive\n"  # what job 1 wrote before it was killed
    assert [row[1:3] for row in joblog_rows(log)] == [("-1", "15"), ("0", "0")]
    sleeper = int((tmp_path / "p").read_text())
    wait_until(lambda: not psutil.pid_exists(sleeper), 10, what="the command's child to be gone")


def test_halt_now_ends_the_running_commands_on_the_workers(
    engine: list[str], tmp_path: Path
) -> None:
    # Job 1 runs a long child; job 2 fails once that child runs: --halt now ends job 1.
    p = tmp_path / "p"
    job = (
        f"if [ {{}} = 1 ]; then sleep 300 & echo $! > {p}.tmp; mv {p}.tmp {p}; wait;"
        f" else while [ ! -e {p} ]; do sleep 0.05; done; exit 3; fi"
    )
    r = cli(*engine, "-j", "2", "--halt", "now,fail=1", job, ":::", "1", "2")
    assert r.returncode == 3, r.stderr
    assert r.stdout == ""
    sleeper = int(p.read_text())
    wait_until(lambda: not psutil.pid_exists(sleeper), 15, what="job 1's child to be ended")


def test_jobs_in_flight_are_limited_by_j(engine: list[str], tmp_path: Path) -> None:
    # The session's clusters could run 2 (Ray) or 6 (Dask) at once; -j 1 runs one.
    lock = tmp_path / "lock"
    job = f"mkdir {lock} || echo overlap; sleep 0.3; rmdir {lock}; echo {{}}"
    r = cli(*engine, "-j", "1", job, ":::", "1", "2", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "1\n2\n3\n"


def test_sigterm_ends_the_run_and_its_commands(engine: list[str], tmp_path: Path) -> None:
    p = tmp_path / "p"
    job = f"sleep 300 & echo $! > {p}.tmp; mv {p}.tmp {p}; wait"
    proc = subprocess.Popen(
        [PY, "-m", "polytask.cli", "parallel", *engine, job, ":::", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=SRC),
    )
    try:
        wait_until(p.exists, 60, what="the job to start its child")
        proc.terminate()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 255, err
    sleeper = int(p.read_text())
    wait_until(lambda: not psutil.pid_exists(sleeper), 15, what="the job's child to be ended")


def test_retries_run_a_failing_job_again(engine: list[str], tmp_path: Path) -> None:
    count = tmp_path / "count"
    job = f"echo x >> {count}; test $(wc -l < {count}) -ge 3 && echo ok {{}}"
    log = tmp_path / "log"
    r = cli(*engine, "--retries", "3", "--joblog", str(log), job, ":::", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok 1\n"
    assert count.read_text() == "x\nx\nx\n"
    assert [row[1] for row in joblog_rows(log)] == ["0"]


def test_events_as_local(engine: list[str], tmp_path: Path) -> None:
    # The same event lines as a local run (the pid is the worker's business: null).
    events = tmp_path / "events"
    r = cli(*engine, "-k", "--events", str(events), "sh -c 'exit {}'", ":::", "0", "3")
    assert r.returncode == 1, r.stderr
    records = [json.loads(line) for line in events.read_text().splitlines()]
    kinds = sorted((rec["event"], rec.get("job")) for rec in records)
    assert kinds == [("done", None), ("exit", 1), ("exit", 2), ("spawn", 1), ("spawn", 2)]
    codes = {rec["job"]: rec["code"] for rec in records if rec["event"] == "exit"}
    assert codes == {1: 0, 2: 3}
    assert all(rec["pid"] is None for rec in records if rec["event"] == "spawn")


def test_timeout_event_as_local(engine: list[str], tmp_path: Path) -> None:
    events = tmp_path / "events"
    r = cli(*engine, "--timeout", "1", "--events", str(events), "sleep {}", ":::", "30")
    assert r.returncode == 1, r.stderr
    records = [json.loads(line) for line in events.read_text().splitlines()]
    assert [rec["event"] for rec in records] == ["spawn", "timeout", "exit", "done"]
    assert records[1]["timeout"] == 1.0


def test_program_not_found_as_local(engine: list[str]) -> None:
    r = cli(*engine, "-q", "no-such-program-xyz", ":::", "1")
    assert r.returncode == 1
    assert "no-such-program-xyz: command not found" in r.stderr


def test_bad_combinations_are_refused() -> None:
    for argv, text in (
        (["--address", "tcp://127.0.0.1:1", "echo", ":::", "1"], "--address goes with --backend"),
        (["--backend", "dask", "-u", "echo", ":::", "1"], "-u/--ungroup does not go"),
        (["--backend", "ray", "--pipe", "--cat", "cat {}"], "--cat does not go"),
        (["--backend", "dask", "--pipe", "--fifo", "cat {}"], "--fifo does not go"),
        (["--backend", "dask", "--pipe", "--tee", "cat", ":::", "1"], "--tee does not go"),
        (["--backend", "ray", "--pipe", "--roundrobin", "wc"], "--roundrobin does not go"),
        (["--backend", "dask", "--load", "100%", "echo", ":::", "1"], "--load does not go"),
        (["--backend", "ray", "--memfree", "1k", "echo", ":::", "1"], "--memfree does not go"),
        (["--backend", "spark", "echo", ":::", "1"], "invalid choice"),
    ):
        r = cli(*argv, input="")
        assert r.returncode == 255, (argv, r.stderr)
        assert text in r.stderr, r.stderr
        assert r.stdout == ""


def test_missing_engine_is_a_clear_error() -> None:
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "from polytask.cli._parallel import main\n"
        "sys.exit(main(['--backend', 'dask', 'echo', ':::', '1']))\n"
    )
    r = subprocess.run(
        [PY, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=SRC),
    )
    assert r.returncode == 255, r.stderr
    assert "--backend dask" in r.stderr
    assert "pip install 'polytask[dask]'" in r.stderr
    assert r.stdout == ""


def test_unreachable_address_is_a_clear_error() -> None:
    r = cli(
        "--backend",
        "dask",
        "--address",
        "tcp://127.0.0.1:9",  # discard port: nothing listens
        "echo",
        ":::",
        "1",
        timeout=120,
        # Dask's own connect limit (30 s by default) is not what is tested here.
        DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s",
    )
    assert r.returncode == 255
    assert "cannot use the dask cluster at 'tcp://127.0.0.1:9'" in r.stderr


@pytest.mark.parametrize("name", ["dask", "ray"])
def test_own_cluster_and_a_worker_that_dies(name: str, tmp_path: Path) -> None:
    """Without --address: a cluster for the run. A job that kills its worker fails with
    a message (no hang), its command's child is ended, the others run."""
    p = tmp_path / "p"
    job = (
        f"if [ {{}} = die ]; then sleep 300 & echo $! > {p}; kill -9 {WORKER[name]}; wait; fi;"
        " echo {}"
    )
    log = tmp_path / "log"
    r = cli("--backend", name, "-j", "1", "-k", "--joblog", str(log), job, ":::", "a", "die", "b")
    assert r.returncode == 1, r.stderr
    assert r.stdout == "a\nb\n"
    assert f"the {name} worker running it died" in r.stderr, r.stderr
    rows = joblog_rows(log)
    assert [row[1] for row in rows] == ["0", "255", "0"]
    sleeper = int(p.read_text())
    wait_until(lambda: not psutil.pid_exists(sleeper), 15, what="the dead job's child to end")
