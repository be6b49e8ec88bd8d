"""Work-dir safety: one run per work/output dir, and a SIGKILLed run resumes to the same outputs.

- A live run's lock refuses a second run on its work dir or output dir: exit 2, one line that
  names the holder (PID, host, start time, command), and nothing written.
- The lock dies with its process: after SIGKILL, the same command runs at once.
- A participant run killed (with its forkserver workers: the whole process group) once some
  nodes are done, then rerun, gives outputs identical to an uninterrupted run's, with no
  temporary left behind.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthquant import locking
from synthquant.cli import main
from synthquant.phantom import make_amyloid_cohort

ROOT = Path(__file__).resolve().parents[1]
RUN_ARGS = ["participant", "--methods", "mr", "--template-resolution", "3", "--nprocs", "1", "--omp-nthreads", "1",
            "--skip-bids-validation"]
HOLDER = ("import sys; from synthquant import locking; [locking.acquire(d) for d in sys.argv[1:]]; "
          "print('held', flush=True); sys.stdin.read()")


@pytest.fixture(scope="module")
def bids(tmp_path_factory) -> Path:
    return make_amyloid_cohort(tmp_path_factory.mktemp("safety") / "bids", n_subjects=1, preset="test", seed=0)


def _hold(*directories: Path) -> subprocess.Popen:
    """Another process (another run, as far as the lock can tell) holding the directories."""
    env = {k: v for k, v in os.environ.items() if k != locking.ENV_VAR}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, directories)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("held", ["work", "output"])
def test_second_run_is_refused_naming_the_holder(bids, tmp_path, capsys, held):
    work, out = tmp_path / "work", tmp_path / "out"
    holder = _hold(work if held == "work" else out)
    try:
        status = main([str(bids), str(out), *RUN_ARGS, "-w", str(work)])
    finally:
        holder.kill()
        holder.wait()
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    target = (work if held == "work" else out).resolve()
    assert line.startswith(f"synthquant: error: {target}: in use by another synthquant run (PID {holder.pid} on "
                           f"{socket.gethostname()}, started "), line
    assert "command: -c " in line and "Traceback" not in line
    # Refused before the first write: the running run's provenance is not overwritten.
    assert not (out / "logs" / "config.json").exists() and not (out / "dataset_description.json").exists()
    assert locking.held() == []


def test_lock_dies_with_a_sigkilled_holder(tmp_path):
    holder = _hold(tmp_path)
    with pytest.raises(locking.DirectoryInUse, match=f"PID {holder.pid} "):
        locking.acquire(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locking.locked(tmp_path) as taken:  # no stale lock: the kernel dropped it
        assert taken == [tmp_path.resolve()]
        assert json.loads((tmp_path / locking.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert (tmp_path / locking.LOCK_NAME).read_text() == ""  # released: names no holder


def test_children_run_inside_their_parents_lock(tmp_path):
    script = f"from synthquant import locking; locking.acquire({str(tmp_path)!r}); print('ok')"
    with locking.locked(tmp_path):
        child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert child.stdout.strip() == "ok", child.stderr
    assert locking.ENV_VAR not in os.environ


def test_stale_temporaries_of_a_dead_run_are_removed(tmp_path):
    from synthquant.image import atomic_output
    from synthquant.runner import remove_stale_temporaries

    derivative = tmp_path / "sub-01" / "pet" / "sub-01_trc-FBP_desc-static_pet.nii.gz"
    with atomic_output(derivative) as tmp:  # the naming a killed writer leaves behind
        tmp.write_bytes(b"half")
        stale = tmp.with_name(tmp.name.replace(f".{os.getpid()}.", ".4242."))
        stale.write_bytes(b"half")
    sidecar = tmp_path / ".sub-01_trc-FBP_desc-static_pet.json.4242.tmp.json"
    sidecar.write_text("{")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale, sidecar])
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [derivative.name]


def test_cached_results_an_older_synthquant_wrote_are_recomputed(tmp_path, monkeypatch):
    """A work dir from another version: a cached node whose result pickle names a class that no
    longer exists is deleted (to be recomputed) when its session's code stamp changed, and only
    then, and only in the sessions this run runs."""
    import pickle
    import types

    from nipype.utils.filemanip import savepkl

    from synthquant import runner

    vanishing = types.ModuleType("synthquant_vanished_module")
    exec("class OldOutputSpec:\n    pass\n", vanishing.__dict__)  # noqa: S102 - a throwaway class
    vanishing.OldOutputSpec.__module__ = vanishing.__name__
    monkeypatch.setitem(sys.modules, vanishing.__name__, vanishing)
    session = tmp_path / "work" / "synthquant_wf" / "sub_01_wf"
    stale, fresh = session / "report", session / "syn"
    stale.mkdir(parents=True)
    fresh.mkdir(parents=True)
    savepkl(str(stale / "result_report.pklz"), vanishing.OldOutputSpec())
    savepkl(str(fresh / "result_syn.pklz"), {"outputs": "readable"})
    monkeypatch.delitem(sys.modules, vanishing.__name__)  # the class is gone, as after an upgrade
    with pytest.raises(Exception):  # noqa: B017 - what Nipype would meet
        pickle.loads(gzip.decompress((stale / "result_report.pklz").read_bytes()).split(b"\n", 1)[1])

    work = tmp_path / "work"  # the graph's folder is WORK/synthquant_wf, the demo's one level deeper
    (session / runner.CODE_STAMP).write_text(json.dumps({"code": runner.code_stamp()}))
    assert runner.drop_unreadable_results(work, ["sub_01_wf"]) == []  # same code: no scan
    assert stale.exists()
    (session / runner.CODE_STAMP).write_text(json.dumps({"code": "an older synthquant"}))
    assert runner.drop_unreadable_results(work, ["sub_02_wf"]) == []  # another session's: not read
    assert runner.drop_unreadable_results(work, ["sub_01_wf"]) == [stale]
    assert not stale.exists() and fresh.exists()
    assert json.loads((session / runner.CODE_STAMP).read_text()) == {"code": runner.code_stamp()}


# --- SIGKILL and restart ----------------------------------------------------------------------------

def _command(bids: Path, root: Path) -> list[str]:
    return [sys.executable, str(ROOT / "run_workflow.py"), str(bids), str(root / "out"), *RUN_ARGS,
            "-w", str(root / "work")]


def _start(bids: Path, root: Path) -> subprocess.Popen:
    # Own session and process group: MultiProc's forkserver and workers die with the main process.
    log = open(root / f"log-{time.monotonic_ns()}.txt", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(_command(bids, root), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=root)


def _outputs(out: Path) -> dict[str, Path]:
    return {str(p.relative_to(out)): p for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != locking.LOCK_NAME}


def _comparable(path: Path, root: Path):
    """What must match between runs: image data, or text with this run's folders masked."""
    if path.name.endswith((".nii", ".nii.gz")):
        img = nib.load(path)
        return (img.get_data_dtype().str, img.shape, np.round(img.affine, 6).tolist(),
                np.asanyarray(img.dataobj).tobytes())
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if path.suffix in (".json", ".tsv", ".html", ".svg", ".txt", ".csv"):
        text = raw.decode().replace(str(root / "out"), "<out>").replace(str(root / "work"), "<work>")
        text = re.sub(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?", "<time>", text)  # timestamps, if any
        return json.loads(text) if path.suffix == ".json" else text
    return raw


def test_sigkill_then_rerun_gives_the_uninterrupted_outputs(bids, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    reference.mkdir()
    killed.mkdir()
    uninterrupted = _start(bids, reference)  # runs alongside (one process each)
    run = _start(bids, killed)
    # Kill once the static PET's derivatives are written (ds_static done) and before the report.
    marker = killed / "work" / "synthquant_wf" / "sub_01_wf" / "ds_static" / "result_ds_static.pklz"
    deadline = time.monotonic() + 300
    while not marker.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be killed"
    os.killpg(run.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    partial = _outputs(killed / "out")
    assert "sub-01.html" not in partial, "killed too late: the report was already written"
    assert any("desc-static_pet" in name for name in partial)

    finished = marker.parent.parent / "static_pet" / "result_static_pet.pklz"
    finished_at = finished.stat().st_mtime_ns
    rerun = subprocess.run(_command(bids, killed), capture_output=True, text=True, cwd=killed, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # The resumed run took the nodes finished before the kill from the cache.
    assert finished.stat().st_mtime_ns == finished_at
    assert uninterrupted.wait(timeout=600) == 0

    expected, got = _outputs(reference / "out"), _outputs(killed / "out")
    assert sorted(got) == sorted(expected)
    assert not [name for name in got if ".tmp" in name], "a temporary was left behind"
    different = [name for name in expected
                 if _comparable(expected[name], reference) != _comparable(got[name], killed)]
    assert different == []
