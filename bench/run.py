"""Run the benchmarks and write their report.

Each module ``bench/bench_<name>.py`` defines ``run(quick: bool) -> str`` returning a Markdown section
(starting with a ``## `` heading) with medians and ratios; this script adds the machine and the date.

    python -m bench.run [--only NAME] [--quick] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import pkgutil
import platform
import subprocess
import sys
from pathlib import Path

import bench


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", help="run only bench_NAME (repeatable)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--write", type=Path, help="write the Markdown report here")
    args = parser.parse_args(argv)

    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    if args.only:
        names = [n for n in names if n.removeprefix("bench_") in args.only or n in args.only]
    sections = []
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.{name}")
        section = module.run(quick=args.quick)
        print(section, flush=True)
        sections.append(section.strip())

    header = (
        "# Benchmarks\n\n"
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC at revision {git_revision()} on: "
        f"{machine_description()}.\n\n"
        "Command: `make bench` (or `python -m bench.run --only NAME`). The machine is shared and noisy: "
        "figures are medians of repeated runs, and ratios are taken within the same run.\n"
    )
    report = header + "\n" + "\n\n".join(sections) + "\n"
    if args.write:
        if args.only and args.write.exists():
            report = merge(args.write.read_text(encoding="utf-8"), sections, header)
        args.write.write_text(report, encoding="utf-8")
        print(f"wrote {args.write}", file=sys.stderr)
    return 0


def merge(existing: str, sections: list[str], header: str) -> str:
    """Replace the sections that were re-run, keep the others as they were."""
    kept: dict[str, str] = {}
    order: list[str] = []
    for chunk in ("\n" + existing).split("\n## ")[1:]:
        title = chunk.split("\n", 1)[0]
        kept[title] = "## " + chunk.strip()
        order.append(title)
    for section in sections:
        title = section.removeprefix("## ").split("\n", 1)[0]
        if title not in kept:
            order.append(title)
        kept[title] = section
    return header + "\n" + "\n\n".join(kept[t] for t in order) + "\n"


if __name__ == "__main__":
    sys.exit(main())
