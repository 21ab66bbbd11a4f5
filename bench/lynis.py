#!/usr/bin/env python3
"""Benchmark: Lynis's hardening index of a stock machine and of the same
machine after siteops, side by side in one run.

Boots a fresh machine from the test image (default: the VM tier, Debian 13
with its own kernel, where sysctls, modules and auditd really apply; --tier
box: the Debian 12 nspawn box, faster, no kernel of its own), runs
`lynis audit system --quick`, then bootstrap, two sites with a Python app
deployed, and Lynis again. Prints both indexes, the suggestions that went
away, and those left. Under TCG emulation one Lynis run takes about 11
minutes. Needs root. Run: sudo python3 bench/lynis.py [--tier box]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/box"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/vm"))

from machine import Box, Machine, build_image  # noqa: E402

REPORT = "/var/log/lynis-report.dat"


def lynis(machine: Machine) -> tuple[int, dict[str, str], float]:
    """(hardening index, {test id: suggestion}, seconds) of one Lynis run."""
    start = time.monotonic()
    machine.sh("lynis audit system --quick --no-colors >/dev/null 2>&1", check=False,
               timeout=3600)
    seconds = time.monotonic() - start
    report = machine.sh(f"cat {REPORT}").stdout
    index, suggestions = 0, {}
    for line in report.splitlines():
        key, _, value = line.partition("=")
        if key == "hardening_index":
            index = int(value)
        elif key == "suggestion[]":
            test, text = (value.split("|") + [""])[:2]
            suggestions.setdefault(test, text)
    return index, suggestions, seconds


def start(tier: str) -> Machine:
    if tier == "box":
        return Box(build_image("bookworm")).start()
    from qemu import VM, build_image as vm_image
    return VM(vm_image()).start()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tier", choices=("vm", "box"), default="vm")
    args = p.parse_args()
    machine = start(args.tier)
    try:
        version = machine.sh("lynis --version").stdout.strip()
        stock, stock_tips, t1 = lynis(machine)
        machine.siteops("bootstrap")
        machine.two_sites({})
        after, after_tips, t2 = lynis(machine)
    finally:
        machine.stop()
    print(f"Lynis {version}, tier {args.tier} ({t1:.0f} s and {t2:.0f} s per run)")
    print(f"hardening index: stock {stock}, after siteops {after}")
    print("\nsuggestions gone after siteops:")
    for test in sorted(set(stock_tips) - set(after_tips)):
        print(f"  {test:10} {stock_tips[test]}")
    print("\nsuggestions left:")
    for test in sorted(after_tips):
        print(f"  {test:10} {after_tips[test]}")


if __name__ == "__main__":
    main()
