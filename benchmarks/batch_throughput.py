"""Throughput of ``--batch-by site`` (pydra over sites and subjects, Nipype within a subject).

A 12-subject phantom cohort (test preset, three sites) runs through the CLI with method mr and
SyN at 3 mm, once with ``--nprocs 1`` and once with ``--nprocs 2`` (each in fresh output and
work dirs), and each is then rerun as the same command, which pydra's cache should answer
without starting any subject. Every run is a fresh process, timed from start to exit.

    python benchmarks/batch_throughput.py --root /tmp/batch_throughput \
        --save benchmarks/results/2026-11-23_batch_throughput.txt

Reads: ``speedup`` = wall(1 process) / wall(2 processes), at most 2 on 2 cores (the subjects
are independent, each subject's graph is mostly serial); ``rerun_ratio`` = cached rerun /
first run (start-up, discovery and pydra's cache look-up only). ``subject_s`` is the mean time
of one subject, ``concurrency`` the subjects' summed time per wall second (how many ran at
once), ``cores_used`` the CPU seconds of all the run's processes per wall second (how many
cores it got). On a machine shared with other work the speedup is bounded by the cores left
free, not by the batch: then two subjects run at once but each takes twice as long.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


class SessionCPU:
    """CPU seconds (user + system) of every process in a session, sampled from /proc.

    The workers of a run are not all reaped by their parents (a forkserver's children are
    not), so ``getrusage(RUSAGE_CHILDREN)`` misses most of them; the last half second of each
    process is missed here instead.
    """

    def __init__(self, session: int, interval: float = 0.5):
        self.session, self.interval, self.seen = session, interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.is_set():
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) == self.session:  # fields from "state": session is the 6th of stat
                    self.seen[(stat.parent.name, fields[19])] = (int(fields[11]) + int(fields[12])) / tick
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.seen.values())


def subject_seconds(output: str) -> list[float]:
    """The time of each subject the run computed (its progress lines)."""
    return [float(m) for m in re.findall(r"sub-\w+ (?:done|FAILED) \(\d+ session\(s\)\) in (\d+) s", output)]


def run_cli(args: list[str], log: Path, timeout: float) -> tuple[float, float, int, str]:
    """Run ``run_workflow.py ARGS`` in a fresh process, its output streamed to ``log``;
    ``(wall seconds, CPU seconds, exit status, output)``; exit status 124 past ``timeout`` seconds."""
    started = time.perf_counter()
    with open(log, "w") as stream:
        # Its own session: its processes are counted, and a run past its time is ended with all of them.
        process = subprocess.Popen([sys.executable, str(ROOT / "run_workflow.py"), *args], stdout=stream,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        cpu = SessionCPU(process.pid)
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = 124
    return time.perf_counter() - started, cpu.stop(), status, log.read_text()


def cached_subjects(stdout: str) -> int:
    lines = [line for line in stdout.splitlines() if "already done (pydra cache):" in line]
    return len(lines[0].split("):", 1)[1].split(",")) if lines else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--save", type=Path, default=None, help="also write the report to this file")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per run (default 3600)")
    args = parser.parse_args(argv)

    root = args.root.resolve()
    bids = root / "bids"
    header = (f"# python benchmarks/batch_throughput.py --root {args.root} --subjects {args.subjects} "
              f"--nprocs {' '.join(map(str, args.nprocs))}   ({time.strftime('%Y-%m-%d %H:%M')}, "
              f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.1f}: shared machine)")
    lines = [header]
    if not (bids / "dataset_description.json").exists():
        from synthquant.phantom import make_amyloid_cohort

        started = time.perf_counter()
        make_amyloid_cohort(bids, n_subjects=args.subjects, preset="test", seed=args.seed)
        lines.append(f"phantom cohort: {args.subjects} subjects, test preset, 3 sites "
                     f"({time.perf_counter() - started:.0f} s to write)")
    sites = pd.read_csv(bids / "participants.tsv", sep="\t")["site"].value_counts().sort_index()
    lines.append("subjects per site: " + ", ".join(f"{site} {n}" for site, n in sites.items()))
    print("\n".join(lines), flush=True)

    rows = []
    for nprocs in args.nprocs:
        out, work = root / f"out_nprocs{nprocs}", root / f"work_nprocs{nprocs}"
        for folder in (out, work):
            shutil.rmtree(folder, ignore_errors=True)
        cli = [str(bids), str(out), "participant", "--batch-by", "site", "--methods", "mr",
               "--template-resolution", "3", "--nprocs", str(nprocs), "-w", str(work), "--skip-bids-validation"]
        first, cpu, status, output = run_cli(cli, root / f"nprocs{nprocs}_first.log", args.timeout)
        rerun, _, rerun_status, stdout = run_cli(cli, root / f"nprocs{nprocs}_rerun.log", args.timeout)
        subjects = subject_seconds(output)
        rows.append({"nprocs": nprocs, "exit": status, "first_s": first, "subjects_per_hour": 3600 * args.subjects / first,
                     "subject_s": sum(subjects) / max(1, len(subjects)), "concurrency": sum(subjects) / first,
                     "cpu_s": cpu, "cores_used": cpu / first, "rerun_s": rerun, "rerun_exit": rerun_status,
                     "rerun_from_cache": cached_subjects(stdout), "rerun_ratio": rerun / first})
        lines.append(f"--nprocs {nprocs}: first run {first:.0f} s (exit {status}), cached rerun {rerun:.1f} s "
                     f"(exit {rerun_status}, {cached_subjects(stdout)} of {args.subjects} subjects from pydra's "
                     "cache)")
        print(lines[-1], flush=True)

    table = pd.DataFrame(rows)
    report = ["", table.round(3).to_string(index=False)]
    by_procs = table.set_index("nprocs")["first_s"]
    if 1 in by_procs and 2 in by_procs:
        report.append(f"\nspeedup 2 processes vs 1: {by_procs[1] / by_procs[2]:.2f}x (ideal 2.00x on 2 cores)")
    ratios = ", ".join(f"{ratio:.3f} (nprocs {n})" for n, ratio in zip(table["nprocs"], table["rerun_ratio"]))
    report.append(f"cached rerun / first run: {ratios}")
    report.append(f"load average at end: {os.getloadavg()[0]:.1f}")
    print("\n".join(report), flush=True)
    if args.save:
        args.save.write_text("\n".join(lines + report) + "\n")
    return 0 if (table["exit"] == 0).all() and (table["rerun_exit"] == 0).all() else 1


if __name__ == "__main__":
    sys.exit(main())
