"""Peak memory of a command and every process it starts, Ray's included: sampled from `/proc`.

`/usr/bin/time -v` reports the largest *single* process, and Ray's workers are children of the raylet rather than
of the driver, so neither the driver's rusage nor a process-tree walk sees a verl run whole. Instead the command runs
with a fresh tag in the environment variable `MARKER_ENV`; Ray's GCS, raylet and workers inherit the driver's
environment, so every process carrying the tag belongs to the run. Every `--interval` seconds the script sums, over
those processes, the resident set (RSS) and the proportional set (PSS, `/proc/<pid>/smaps_rollup`: pages shared
between processes counted once in total), and reports the peaks:

    python benchmarks/peak_memory.py [--interval 2] [--json FILE] -- bash recipes/smollm2_cpu/run_smollm2_cpu.sh

PSS is the better figure for "how much memory does the run need": summed RSS counts shared library pages once per
process. Sampling can miss a spike shorter than the interval. The command's exit code is passed through.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid

MARKER_ENV = "VERL_MEDS_MEMORY_RUN"
"""Environment variable that tags the measured processes."""


def marked_pids(tag: str) -> list[int]:
    """`list[int]`: live processes (other than this one) whose environment holds `MARKER_ENV=tag`."""
    needle = f"{MARKER_ENV}={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def process_kib(pid: int) -> tuple[int, int]:
    """`(rss_kib, pss_kib)` of one process from `smaps_rollup`; `(0, 0)` when it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        return 0, 0
    return rss, pss


class Sampler(threading.Thread):
    """Background thread: sums RSS and PSS over the tagged processes every `interval_seconds`; keeps the peaks."""

    def __init__(self, tag: str, interval_seconds: float) -> None:
        super().__init__(daemon=True)
        self.tag = tag
        self.interval_seconds = interval_seconds
        self.stop_event = threading.Event()
        self.peak = {"rss_total_kib": 0, "pss_total_kib": 0, "rss_max_process_kib": 0, "processes_at_pss_peak": 0}
        self.samples = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            sizes = [process_kib(pid) for pid in marked_pids(self.tag)]
            rss_total = sum(r for r, _ in sizes)
            pss_total = sum(p for _, p in sizes)
            self.peak["rss_total_kib"] = max(self.peak["rss_total_kib"], rss_total)
            self.peak["rss_max_process_kib"] = max([self.peak["rss_max_process_kib"], *(r for r, _ in sizes)])
            if pss_total > self.peak["pss_total_kib"]:
                self.peak["pss_total_kib"] = pss_total
                self.peak["processes_at_pss_peak"] = len(sizes)
            self.samples += 1
            self.stop_event.wait(self.interval_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--json", help="also write the peaks to this file")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    tag = uuid.uuid4().hex
    sampler = Sampler(tag, args.interval)
    sampler.start()
    started = time.time()
    code = subprocess.call(command, env={**os.environ, MARKER_ENV: tag})
    sampler.stop_event.set()
    sampler.join()
    report = {
        "command": command,
        "exit_code": code,
        "wall_seconds": round(time.time() - started, 1),
        "samples": sampler.samples,
        "interval_seconds": args.interval,
        **{k.replace("_kib", "_gib"): round(v / 2**20, 2) for k, v in sampler.peak.items() if k.endswith("_kib")},
        "processes_at_pss_peak": sampler.peak["processes_at_pss_peak"],
    }
    print(json.dumps(report, indent=2), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return code


if __name__ == "__main__":
    sys.exit(main())
