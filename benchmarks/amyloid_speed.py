"""Per-node wall time and peak memory of one participant run, first run and cached rerun.

Runs one phantom subject through the amyloid workflow (method mr) with Nipype's Linear
plugin, so every node runs in this process and its peak resident memory can be sampled
(from /proc/self/statm every 20 ms; ANTs runs in-process through antspyx).

    python benchmarks/amyloid_speed.py --root /tmp/speed --template-resolution 1 --omp-nthreads 2

Goals on 2 cores: <= 120 s per subject with 1 mm normalisation; cached rerun <= 5 % of the first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
from pathlib import Path


class PeakMemory:
    """Samples this process's resident memory in a thread; ``reset`` starts a new peak."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        threading.Thread(target=self._sample, daemon=True).start()

    def rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self._page

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def reset(self) -> None:
        self.peak = self.rss()


def run_once(config, sessions, memory: PeakMemory) -> tuple[float, list[dict]]:
    from synthquant.bids import software_versions
    from synthquant.runner import Progress, run_graph
    from synthquant.workflows.base import init_participant_wf

    workflow, names, _ = init_participant_wf(config, sessions, {"SoftwareVersions": software_versions()})
    progress, rows, started = Progress(names), [], {}

    def record(node, status):
        progress(node, status)
        if status == "start":
            memory.reset()
            started[node.fullname] = time.perf_counter()
        elif status in ("end", "exception"):
            rows.append({"node": node.fullname.split(".", 2)[-1],
                         "seconds": time.perf_counter() - started.pop(node.fullname),
                         "peak_rss_gb": memory.peak / 1e9})

    start = time.perf_counter()
    failures = run_graph(workflow, names, plugin="Linear", plugin_args={"status_callback": record},
                         work_dir=config.work_dir)
    if failures:
        raise SystemExit(f"run failed: {failures}")
    return time.perf_counter() - start, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--preset", default="benchmark", choices=["benchmark", "demo", "test"])
    parser.add_argument("--template-resolution", type=float, default=1.0)
    parser.add_argument("--omp-nthreads", type=int, default=2)
    parser.add_argument("--subject", default="01")
    args = parser.parse_args()

    from synthquant.config import RunConfig, apply_threads

    apply_threads(args.omp_nthreads)
    import pandas as pd

    from synthquant.bids import discover
    from synthquant.phantom import make_amyloid_cohort

    bids = args.root / "bids"
    if not (bids / "dataset_description.json").exists():
        make_amyloid_cohort(bids, n_subjects=3, preset=args.preset, seed=0)
    shutil.rmtree(args.root / "work", ignore_errors=True)
    shutil.rmtree(args.root / "out", ignore_errors=True)
    config = RunConfig(bids_dir=bids, output_dir=args.root / "out", analysis_level="participant",
                       work_dir=args.root / "work", participant_labels=(args.subject,), methods=("mr",),
                       nprocs=1, omp_nthreads=args.omp_nthreads, template_resolution=args.template_resolution)
    sessions = discover(bids, (args.subject,)).amyloid
    memory = PeakMemory()
    first, rows_first = run_once(config, sessions, memory)
    cached, rows_cached = run_once(config, sessions, memory)

    # What a user sees: the whole command, Python start-up, imports and discovery included.
    import subprocess
    import sys

    command = [sys.executable, str(Path(__file__).resolve().parents[1] / "run_workflow.py"), str(bids),
               str(config.output_dir), "participant", "--participant-label", args.subject, "--methods", "mr",
               "-w", str(config.work_dir), "--template-resolution", f"{args.template_resolution:g}",
               "--nprocs", str(args.omp_nthreads), "--omp-nthreads", str(args.omp_nthreads),
               "--skip-bids-validation"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    cli_rerun = time.perf_counter() - start

    table = pd.DataFrame(rows_first).merge(pd.DataFrame(rows_cached), on="node", suffixes=("_first", "_cached"))
    pd.set_option("display.width", 160)
    print(f"\none subject ({args.preset} preset), SyN at {args.template_resolution:g} mm, "
          f"{args.omp_nthreads} ITK threads, Linear plugin")
    print(table.round(3).to_string(index=False))
    print(f"\nfirst run: {first:.1f} s wall (goal <= 120 s at 1 mm); cached rerun of the graph: {cached:.2f} s "
          f"(ratio {cached / first:.1%}, goal <= 5 %)")
    print(f"cached rerun of the whole command (start-up, imports, input checks): {cli_rerun:.1f} s "
          f"(ratio {cli_rerun / first:.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
