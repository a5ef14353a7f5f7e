"""`polytask parallel` against `xargs -P` and GNU parallel: many tiny jobs.

Every tool runs the same N jobs of ``true`` at 2 at a time, its inputs one a
line on stdin, in one process started fresh (start-up included, as a user
sees it). The runs of the tools are interleaved and repeated (each round in
another order), and each tool's best run is kept, so a busy moment of the
machine hurts every tool alike; the median over the rounds of polytask's time
over xargs' (same round) is reported too, as the machine is shared.
Per-job overhead is the wall time divided by N. Start-up of
``polytask parallel --help`` is measured apart (target < 150 ms).

polytask runs with its bytecode cached, as in an installed package: where
PYTHONDONTWRITEBYTECODE is set (this would recompile every module at every
start), the runs use a private PYTHONPYCACHEPREFIX, warmed by one untimed
run; the uncached ``--help`` time is reported too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _polytask() -> list[str]:
    script = Path(sys.executable).with_name("polytask")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "polytask.cli"]


def _gnu_parallel() -> tuple[str | None, str]:
    """The path of GNU parallel, installing it quietly when missing; else (None, why)."""
    found = shutil.which("parallel")
    if found is None:
        attempts = [["apt-get", "install", "-y", "-qq", "parallel"]]
        if os.geteuid() != 0:
            attempts = [["sudo", "-n", *a] for a in attempts]
        for argv in attempts:
            try:
                subprocess.run(
                    argv,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=300,
                    env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired):
                continue
        found = shutil.which("parallel")
        if found is None:
            return None, "not installed (apt-get install parallel failed or not allowed)"
    try:
        version = subprocess.run(
            [found, "--version"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None, "not runnable"
    if "GNU parallel" not in version:
        return None, f"{found} is not GNU parallel (moreutils?)"
    return found, version.splitlines()[0]


def _cached_env(d: str) -> dict[str, str] | None:
    """An environment in which Python caches bytecode (None: it already does)."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return None
    env = dict(os.environ, PYTHONPYCACHEPREFIX=os.path.join(d, "pycache"))
    del env["PYTHONDONTWRITEBYTECODE"]
    return env


def _wall(
    argv: list[str], stdin_path: str | None = None, env: dict[str, str] | None = None
) -> float:
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        t0 = time.perf_counter()
        r = subprocess.run(
            argv,
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=600,
            env=env,
        )
        elapsed = time.perf_counter() - t0
    finally:
        if stdin_path:
            stdin.close()  # type: ignore[union-attr]
    if r.returncode != 0:
        raise RuntimeError(f"{argv} failed ({r.returncode}): {r.stderr[-500:]!r}")
    return elapsed


def run(quick: bool = False) -> str:
    n = 200 if quick else 1000
    repeats = 2 if quick else 7
    gnu, gnu_note = _gnu_parallel()
    ours_argv = [*_polytask(), "parallel", "-j", "2", "true"]
    tools: list[tuple[str, list[str] | None, str]] = [
        ("polytask parallel -j 2", ours_argv, ""),
        ("xargs -P 2 -n 1", ["xargs", "-P", "2", "-n", "1", "true"], ""),
        (
            "GNU parallel -j 2",
            [gnu, "--will-cite", "-j", "2", "true"] if gnu else None,
            gnu_note,
        ),
    ]
    best: dict[str, float] = {}
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as d:
        inputs = os.path.join(d, "inputs")
        Path(inputs).write_text("".join(f"{i}\n" for i in range(n)))
        env = _cached_env(d)
        _wall(ours_argv, inputs, env)  # warms the bytecode cache (untimed)
        for r in range(repeats):
            # Each round in another order: no tool always runs just after GNU parallel.
            for label, argv, _note in tools[r % len(tools) :] + tools[: r % len(tools)]:
                if argv is None:
                    continue
                t = _wall(argv, inputs, env if label.startswith("polytask") else None)
                best[label] = min(best.get(label, t), t)
                times.setdefault(label, []).append(t)
        help_argv = [*_polytask(), "parallel", "--help"]
        help_runs = [_wall(help_argv, env=env) for _ in range(5 if quick else 15)]
        uncached = min(_wall(help_argv) for _ in range(5)) if env is not None else None
        bare = min(_wall([sys.executable, "-c", "pass"], env=env) for _ in range(5))
        imp = min(_wall([sys.executable, "-c", "import polytask"], env=env) for _ in range(5))
    help_ms = min(help_runs) * 1e3

    ours = best["polytask parallel -j 2"] / n * 1e3
    xargs = best["xargs -P 2 -n 1"] / n * 1e3
    gnu_ms = best.get("GNU parallel -j 2")
    lines = [
        "## polytask parallel: 1,000 jobs of `true` at -j 2"
        if not quick
        else f"## polytask parallel: {n} jobs of `true` at -j 2",
        "",
        f"{n} jobs of `true`, inputs on stdin, 2 at a time; the best of {repeats} interleaved "
        "runs of each tool (in turn first), start-up included. Per-job overhead = wall time / jobs.",
        "",
        "| tool | wall s | per job ms | vs polytask |",
        "|---|---:|---:|---:|",
    ]
    for label, argv, note in tools:
        if argv is None:
            lines.append(f"| {label} | – | – | {note} |")
            continue
        wall = best[label]
        per = wall / n * 1e3
        lines.append(f"| {label} | {wall:.2f} | {per:.2f} | {per / ours:.2f}x |")
    lines += [
        "",
        f"Start-up: `polytask parallel --help` {help_ms:.0f} ms (best of {len(help_runs)}); "
        f"of it `python -c pass` {bare * 1e3:.0f} ms and `import polytask` "
        f"{(imp - bare) * 1e3:.0f} ms. Target < 150 ms: {'met' if help_ms < 150 else 'not met'}."
        + (
            ""
            if uncached is None
            else f" Bytecode cached (PYTHONDONTWRITEBYTECODE is set here: uncached, "
            f"`--help` takes {uncached * 1e3:.0f} ms)."
        ),
        "",
        f"Per-job overhead: polytask {ours:.2f} ms, xargs {xargs:.2f} ms "
        f"(target ≤ xargs: {'met' if ours <= xargs else 'not met'}, "
        f"{ours / xargs:.2f}x xargs)",
    ]
    if gnu_ms is not None:
        g = gnu_ms / n * 1e3
        lines[-1] += (
            f"; GNU parallel {g:.2f} ms (target ≥ 4x lower: "
            f"{'met' if g >= 4 * ours else 'not met'}, {g / ours:.1f}x lower)."
        )
    else:
        lines[-1] += f"; GNU parallel {gnu_note}."
    rounds = sorted(
        a / b
        for a, b in zip(times["polytask parallel -j 2"], times["xargs -P 2 -n 1"], strict=True)
    )
    lines += [
        f"Round by round (the median of {len(rounds)}), polytask took "
        f"{rounds[len(rounds) // 2]:.2f}x the time of xargs.",
        f"Without its start-up, polytask's per-job cost is "
        f"{(best['polytask parallel -j 2'] - help_ms / 1e3) / n * 1e3:.2f} ms.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
