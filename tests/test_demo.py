"""The demo's own plumbing (the whole demo runs in benchmarks/results/*_demo.txt, not here)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_parallel_cohort_writing_leaves_nipypes_forkserver_to_the_runner(tmp_path):
    """The demo writes its two cohorts in parallel before the participant level. Python has one
    forkserver per process, which keeps the environment of its start: had the cohorts started
    it, Nipype's MultiProc workers would miss NIPYPE_CONFIG_DIR (set later by the runner) and
    log every node at INFO. Checked in a fresh interpreter, where no test has started it yet."""
    script = textwrap.dedent(f"""
        import os
        from multiprocessing import forkserver
        from pathlib import Path
        from synthquant.cli import write_in_parallel

        if __name__ == "__main__":
            root = Path({str(tmp_path)!r})
            write_in_parallel([(os.makedirs, root / "a", {{}}), (os.makedirs, root / "b", {{"mode": 0o755}})], 2)
            print(sorted(p.name for p in root.iterdir()), forkserver._forkserver._forkserver_pid)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['a',", "'b']", "None"]
