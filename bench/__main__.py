"""Run the benchmarks and write bench/results.md.

Each ``bench/bench_*.py`` module has ``run(quick: bool) -> str`` returning a
Markdown section (a heading, a table with ratios, notes). ``python -m bench``
runs them all; ``python -m bench latency pool`` runs the named ones;
``--quick`` uses smaller sizes. Each benchmark runs in a fresh interpreter, so
one cannot slow the next (the cluster engines leave threads behind, a pool
its warm caches). A full run (not ``--quick``, not ``--out``)
also copies the results into README.md between the bench markers, so the
README always quotes the latest measured run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
README = HERE.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def update_readme(results: str, readme: Path = README) -> bool:
    """Put ``results`` (bench/results.md less its title) between the README's markers."""
    text = readme.read_text()
    if START not in text or END not in text:
        return False
    body = results.split("\n", 1)[1].strip()
    # The README's own heading is "## Benchmarks": demote the sections under it.
    body = "\n".join("#" + line if line.startswith("## ") else line for line in body.splitlines())
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(f"{head}{START}\n{body}\n{END}{tail}")
    return True


def _run_isolated(name: str, quick: bool) -> str:
    """Run benchmark ``name`` in a child interpreter; its section, or why it failed."""
    with tempfile.TemporaryDirectory(prefix="bench-") as d:
        section = Path(d) / "section.md"
        cmd = [sys.executable, "-m", "bench", "--one", name, "--section", str(section)]
        proc = subprocess.run([*cmd, *(["--quick"] if quick else [])], cwd=HERE.parent)
        if proc.returncode != 0 or not section.exists():
            return f"## {name}: failed\n\nThe benchmark exited with status {proc.returncode}.\n"
        return section.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", default=str(HERE / "results.md"))
    # Internal: run one benchmark in this interpreter and write its section to a file.
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--section", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mod = importlib.import_module(f"bench.bench_{args.one}")
        Path(args.section).write_text(mod.run(quick=args.quick))
        return
    available = sorted(p.stem[len("bench_") :] for p in HERE.glob("bench_*.py"))
    names = args.names or available
    for n in names:
        if n not in available:
            parser.error(f"unknown benchmark {n!r}; choose from {available}")
    sections = []
    header = (
        f"# polytask benchmark results\n\n"
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; "
        f"every peer measured in the same run.\n"
    )
    for n in names:
        print(f"== {n}", flush=True)
        section = _run_isolated(n, args.quick)
        print(section, flush=True)
        sections.append(section)
    out = Path(args.out)
    if args.names and out.exists():
        # Keep the sections of benchmarks not run this time.
        old = out.read_text().split("\n## ")
        kept = {s.split("\n", 1)[0]: "## " + s for s in old[1:]}
        for s in sections:
            kept[s.split("\n", 1)[0].removeprefix("## ")] = s
        sections = list(kept.values())
    results = header + "\n" + "\n".join(s.rstrip() + "\n" for s in sections)
    out.write_text(results)
    print(f"wrote {out}")
    if not args.quick and out == HERE / "results.md" and update_readme(results):
        print(f"updated {README}")


if __name__ == "__main__":
    main()
