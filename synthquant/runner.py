"""Run the participant graph: Nipype set-up, progress lines, and the per-subject outcome.

A subject succeeds when every one of its derivatives sinks ran in this invocation; a
subject whose node crashed is reported in one line (the node and the error's last line,
with the crash file for the traceback) while the others complete.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def nipype_execution(work_dir: Path) -> dict:
    """Execution settings: crash files in the work dir, keep going past a crash, fast polling."""
    return {
            "crashdump_dir": str(work_dir / "crash"),
            "crashfile_format": "txt",
            "stop_on_first_crash": "false",
            "remove_unnecessary_outputs": "false",
            # NOTES: the 2 s default makes a cached rerun slow; every chain of small nodes waits
            # one poll per link (the cached rerun of _run_graph, with the heap frozen: 27 s at
            # 0.2 s, 11 s at 0.05 s; a poll round costs little once gc.collect is cheap).
            "poll_sleep_duration": "0.05",
            "hash_method": "timestamp",
            "check_version": "false",
    }


def configure_nipype(workflow, work_dir: Path) -> None:
    """Quiet, resumable Nipype: our own progress lines replace its log; crashes go to files.

    A workflow copies the global configuration when it is created, so the execution
    settings are set on the workflow itself too.
    """
    from nipype import config, logging  # noqa: PLC0415

    execution = nipype_execution(work_dir)
    workflow.config["execution"].update(execution)
    config.update_config({
        "execution": execution,
        "logging": {"workflow_level": "CRITICAL", "interface_level": "CRITICAL", "utils_level": "CRITICAL",
                    "log_to_file": "false"},
        "monitoring": {"enabled": "false"},
    })
    logging.update_logging(config)
    # MultiProc's workers come from a forkserver (run_graph): fresh interpreters that read
    # Nipype's configuration file at import, not this process's settings, and would log every
    # node at INFO. NIPYPE_CONFIG_DIR points them at the same quiet settings.
    config_dir = Path(work_dir) / "nipype_config"
    config_dir.mkdir(parents=True, exist_ok=True)
    lines = ["[logging]", "workflow_level = CRITICAL", "interface_level = CRITICAL", "utils_level = CRITICAL",
             "log_to_file = false", "", "[monitoring]", "enabled = false", ""]
    (config_dir / "nipype.cfg").write_text("\n".join(lines))
    os.environ["NIPYPE_CONFIG_DIR"] = str(config_dir)


@dataclass
class Progress:
    """Nipype status callback: one line per finished step, per session."""

    names: dict[str, str]              # sub-workflow name -> session key
    stream: object = None  # default: sys.stdout at print time (tests redirect it)
    started: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)   # session key -> node name

    def session_of(self, fullname: str) -> tuple[str | None, str]:
        for part in fullname.split("."):
            if part in self.names:
                return self.names[part], fullname.split(".")[-1]
        return None, fullname

    def __call__(self, node, status: str) -> None:
        key, step = self.session_of(node.fullname)
        if key is None or node.name.startswith(("inputnode", "outputnode")):
            return
        if status == "start":
            self.started[node.fullname] = time.monotonic()
            return
        seconds = time.monotonic() - self.started.pop(node.fullname, time.monotonic())
        if status == "end":
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {step} done ({seconds:.1f} s)", file=self.stream or sys.stdout, flush=True)
        elif status == "exception":
            self.failed.setdefault(key, step)
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {step} FAILED", file=self.stream or sys.stdout, flush=True)


def crash_reasons(work_dir: Path, since: float, names: dict[str, str]) -> dict[str, str]:
    """Session key -> "node: last error line (crash file)" from this run's crash files."""
    reasons = {}
    for crash in sorted((work_dir / "crash").glob("crash-*.txt")):
        if crash.stat().st_mtime < since:
            continue
        text = crash.read_text(errors="replace")
        node = re.search(r"^Node: (\S+)", text, re.M)
        if not node:
            continue
        key = next((names[p] for p in node.group(1).split(".") if p in names), None)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else "unknown error"
        last = re.sub(r"^[\w.]*(InputError|Error|Exception):\s*", "", last)
        if key and key not in reasons:
            reasons[key] = f"failed in {node.group(1).split('.')[-1]}: {last} (traceback: {crash})"
    return reasons


def sink_nodes(workflow) -> list:
    """The graph's derivatives sinks (nodes named ``ds_*``), through Nipype's public API."""
    return [workflow.get_node(name) for name in workflow.list_node_names()
            if name.rsplit(".", 1)[-1].startswith("ds_")]


def expected_outputs(workflow, names: dict[str, str]) -> dict[str, list[Path]]:
    """Session key -> the derivative files its sinks must write."""
    from synthquant.bids import derivative_path  # noqa: PLC0415

    expected: dict[str, list[Path]] = {key: [] for key in names.values()}
    for node in sink_nodes(workflow):
        key = next((names[p] for p in node.fullname.split(".") if p in names), None)
        for spec in node.inputs.specs:
            if "path" in spec:
                expected[key].append(Path(node.inputs.output_dir) / spec["path"])
                continue
            expected[key].append(derivative_path(Path(node.inputs.output_dir), spec["entities"], spec["datatype"],
                                                 spec["suffix"], spec["extension"]))
    return expected


def output_dirs(workflow) -> list[Path]:
    """The derivatives folders the graph's sinks write to."""
    return sorted({Path(node.inputs.output_dir) for node in sink_nodes(workflow)})


#: The temporary names of synthquant.image.atomic_output: ``.<name>.<pid>.tmp<suffix>``.
STALE_TEMPORARY = re.compile(r"^\..+\.\d+\.tmp(\.[\w.]+)?$")


def _writer_alive(name: str) -> bool:
    """Whether the process whose PID a temporary's name holds (``.<name>.<pid>.tmp``) still runs."""
    match = re.search(r"\.(\d+)\.tmp", name)
    if not match:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(output_dir: Path) -> list[Path]:
    """Delete the temporaries a killed run left in ``output_dir`` (call it under the lock).

    A derivative is written to a temporary name holding its writer's PID and renamed, so a
    killed run leaves at most a temporary, never a half-written derivative. Only temporaries
    whose writer is dead are removed: under ``--batch-by`` the subjects of one batch share the
    lock and write into the same folder at once.
    """
    stale = [path for path in Path(output_dir).rglob(".*.tmp*")
             if path.is_file() and STALE_TEMPORARY.match(path.name) and not _writer_alive(path.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


#: The stamp of the code that last ran a session's sub-workflow (drop_unreadable_results).
CODE_STAMP = "synthquant_code.json"


def code_stamp() -> str:
    """SHA-256 over this package's Python sources: changes with any edit or upgrade."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def drop_unreadable_results(graph_dir: Path, subgraphs) -> list[Path]:
    """Remove the cached nodes whose results this code can no longer read; return their folders.

    Nipype reuses a node whose inputs are unchanged without reading its ``result_*.pklz``; the
    next node then unpickles it, and a class renamed or moved since (a work dir from an older
    synthquant) fails every subject with "the results file ... does not contain any outputs".
    So each session's sub-workflow folder (``subgraphs``: their names, found up to two levels
    below ``graph_dir``) keeps the stamp of the code that last ran it; where the code differs,
    every cached result in that folder is loaded once and the unreadable nodes are deleted, to be
    recomputed. Only this run's own sessions are read: under ``--batch-by`` other subjects'
    processes write into the same work dir at the same time. Unchanged code costs one hash of
    the sources (milliseconds).
    """
    import logging  # noqa: PLC0415

    from nipype.utils.filemanip import loadpkl  # noqa: PLC0415

    from synthquant.image import atomic_write_text  # noqa: PLC0415

    stamp = code_stamp()
    graph_dir = Path(graph_dir)
    folders = [folder for name in subgraphs for pattern in (name, f"*/{name}")
               for folder in graph_dir.glob(pattern) if folder.is_dir()]
    dropped = []
    quiet = logging.getLogger("nipype.utils")  # it warns per unreadable file; we say it once
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        for folder in folders:
            try:
                previous = json.loads((folder / CODE_STAMP).read_text()).get("code")
            except (OSError, ValueError, AttributeError):
                previous = None
            if previous == stamp:
                continue
            for result in sorted(folder.rglob("result_*.pklz")):
                try:
                    loadpkl(result)
                except Exception:  # noqa: BLE001 - any unpickling failure means: recompute the node
                    shutil.rmtree(result.parent, ignore_errors=True)
                    dropped.append(result.parent)
            atomic_write_text(json.dumps({"code": stamp}) + "\n", folder / CODE_STAMP)
    finally:
        quiet.setLevel(level)
    return dropped


def run_graph(workflow, names: dict[str, str], *, plugin: str, plugin_args: dict, work_dir: Path) -> dict[str, str]:
    """Run the graph; return ``{session key: failure reason}`` for the sessions that failed.

    The work dir and the output dirs are locked for the run (synthquant.locking): a second run
    on either is refused in one line (InputError, exit 2) naming this one.
    """
    from synthquant import locking  # noqa: PLC0415

    try:
        outputs = output_dirs(workflow)
        with locking.locked(work_dir, *outputs):
            for folder in outputs:
                remove_stale_temporaries(folder)
            dropped = drop_unreadable_results(Path(workflow.base_dir or work_dir) / workflow.name, names)
            if dropped:
                print(f"work dir {work_dir}: {len(dropped)} cached step(s) were written by another synthquant "
                      "and cannot be read; they will be recomputed", flush=True)
            return _run_graph(workflow, names, plugin=plugin, plugin_args=plugin_args, work_dir=Path(work_dir))
    finally:
        locking.end_run()  # the CLI's holds from before its first write (locking.hold_for_run)


def _run_graph(workflow, names: dict[str, str], *, plugin: str, plugin_args: dict, work_dir: Path) -> dict[str, str]:
    configure_nipype(workflow, work_dir)
    progress = Progress(names)
    args = dict(plugin_args)
    if plugin in ("MultiProc", "Linear", "SLURM", "SGE", "PBS", "LSF", "Condor", "OAR", "IPython"):
        args.setdefault("status_callback", progress)
    if plugin == "MultiProc":
        # Workers come from a fresh forkserver, not a fork of this process: the CLI has already
        # used torch (the model check), and a forked child that then runs torch on the CPU
        # hangs in libgomp's thread-pool barrier (GNU OpenMP is not fork-safe; seen here).
        args.setdefault("mp_context", "forkserver")
    since = time.time() - 1
    graph_error = None
    # Nipype's MultiProc runs a full gc.collect() before every round of submissions. Over this
    # process's heap (torch, the BIDS index, the graph) one took 0.17 s: 27 of the 39 s of an
    # all-cached 6-subject, 5-method rerun, and a CPU-second in six taken from the nodes on 2
    # cores in the demo. Frozen, the heap that exists now (alive for the whole run anyway) is
    # left out of every collection; the rerun then took 11 s (6 s of CPU here).
    gc.freeze()
    try:
        workflow.run(plugin=plugin, plugin_args=args)
    except RuntimeError as err:  # some nodes crashed (found below), or the scheduler refused
        graph_error = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    finally:
        gc.unfreeze()
    reasons = crash_reasons(work_dir, since, names)
    failures = {}
    for key, files in expected_outputs(workflow, names).items():
        fresh = all(f.exists() and f.stat().st_mtime >= since for f in files)
        if not fresh:
            failures[key] = reasons.get(key) or (f"failed in {progress.failed[key]}" if key in progress.failed
                                                 else f"did not complete ({graph_error or 'see the work dir'})")
    return failures
