"""Run the benchmarks and write bench/results.md.

Each ``bench/bench_*.py`` module has ``run(quick: bool) -> str`` returning a
Markdown section (a heading, a table with ratios, notes). ``python -m bench``
runs them all; ``python -m bench latency pool`` runs the named ones;
``--quick`` uses smaller sizes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", default=str(HERE / "results.md"))
    args = parser.parse_args()
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
        mod = importlib.import_module(f"bench.bench_{n}")
        section = mod.run(quick=args.quick)
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
    out.write_text(header + "\n" + "\n".join(s.rstrip() + "\n" for s in sections))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
