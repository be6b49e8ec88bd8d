"""``--batch-by site``: the participant level as a pydra 1.0 workflow over sites, then subjects.

Layering (DESIGN "Execution")::

    pydra  batch_wf  ── split over sites ──> site_wf ── split over the site's subjects ──> run_subject
                                               │                                               │
                                               └──── site_tables (combine subjects) <──────────┘
           group_tables (combine sites)

pydra schedules whole subjects; it never sees a Nipype node. ``run_subject`` is one ordinary
participant run restricted to that subject (``cli.participant_graph`` and ``runner.run_graph``,
the calls ``cli.run_participant`` makes), so its derivatives, sidecars, error lines and Nipype
cache are those of ``run_workflow.py BIDS OUT participant --participant-label L``. Two caches,
both under the work dir:

- ``WORK/synthquant_wf/...``: Nipype's node cache, the same one a plain participant run uses,
  so a subject resumes node by node after a crash or a kill;
- ``WORK/pydra/``: pydra's task cache. A subject task is keyed by the run configuration, the
  label and a stamp of its input files (path, size, mtime), so a rerun of the same command
  skips finished subjects without starting their Nipype graphs, and a replaced input file
  reruns that subject. A failed subject is forgotten (its task's and the workflows' cache
  entries are removed), so the next run retries it.

Workers: ``cf`` runs subjects in local processes (``--nprocs`` is shared out: up to that many
subjects at once, each subject's Nipype plugin gets the rest); ``slurm`` submits one job per
subject (pydra's slurm worker; it needs SLURM accounting for ``sacct``, and the work dir on a
file system the nodes share). ``--plugin-args`` keys ``sbatch_args`` (e.g. ``"-p short --mem=8G"``;
``--cpus-per-task=NPROCS`` is added unless given) and ``max_jobs`` (jobs in flight) go to the
slurm worker, not to the subjects' Nipype plugin.

Outputs beyond a participant run: ``OUTPUT/group/site-<label>_amyloid_suvr.tsv`` and
``site-<label>_myelin_stats.tsv`` (the group tables' columns, that site's rows; ``<label>`` is
the site with non-alphanumerics removed, ``na`` for ``n/a``), and the group tables
(:func:`synthquant.group.run_group`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

from pydra.compose import python, workflow

from synthquant.config import RunConfig
from synthquant.errors import InputError

#: pydra's cache, inside the work dir.
PYDRA_CACHE = "pydra"
#: ``--plugin-args`` keys read by the slurm worker of the batch, not by the subjects' Nipype plugin.
SLURM_KEYS = ("sbatch_args", "max_jobs")


def say(message: str) -> None:
    from synthquant.cli import say as cli_say

    cli_say(f"batch: {message}")


# --- configuration passed to the tasks ------------------------------------------------------

def config_from_json(text: str) -> RunConfig:
    """The inverse of :meth:`RunConfig.to_json` (paths and tuples restored)."""
    values = json.loads(text)
    for spec in fields(RunConfig):
        value = values.get(spec.name)
        if value is None:
            continue
        if "Path" in str(spec.type):
            values[spec.name] = Path(value)
        elif str(spec.type).startswith("tuple"):
            values[spec.name] = tuple(value)
    return RunConfig(**values)


def site_label(site: str) -> str:
    """The site as a file-name label: letters and digits only (``n/a`` -> ``na``)."""
    return re.sub(r"[^A-Za-z0-9]", "", str(site)) or "na"


def subject_resources(config: RunConfig, n_subjects: int) -> tuple[int, int, int]:
    """``(subjects at once, Nipype processes per subject, threads per process)``.

    Locally ``--nprocs`` is shared out: whole subjects run side by side first (their nodes
    are mostly serial), and a subject's graph gets what is left. A slurm job per subject gets
    ``--nprocs`` of its own.
    """
    if config.batch_worker == "slurm":
        return n_subjects, config.nprocs, config.omp_nthreads
    at_once = max(1, min(config.nprocs, n_subjects))
    per_subject = max(1, config.nprocs // at_once)
    return at_once, per_subject, min(config.omp_nthreads, per_subject)


def subject_config(config: RunConfig, per_subject: int, omp_nthreads: int) -> RunConfig:
    """The configuration every subject task starts from (its label is added in the task).

    Batch-only settings are cleared so that they do not enter the pydra cache key; the BIDS
    validator ran once, before the batch.
    """
    plugin_args = {k: v for k, v in config.plugin_args.items() if k != "n_procs"}
    if config.batch_worker == "slurm" and not config.plugin.upper().startswith("SLURM"):
        plugin_args = {k: v for k, v in plugin_args.items() if k not in SLURM_KEYS}
    return replace(config, participant_labels=(), batch_by=None, batch_worker="cf", skip_bids_validation=True,
                   nprocs=per_subject, omp_nthreads=omp_nthreads, plugin_args=plugin_args)


def input_stamp(config: RunConfig, subject: str, *, amyloid: bool, myelin: bool) -> str:
    """SHA-256 of what a subject's run reads: its BIDS folder, participants.tsv, its lesion
    masks, the models, PET templates and HC norms (path, size, mtime), and the version.

    A subject task's pydra key includes it: pydra itself sees only strings, so without it a
    replaced input file would be skipped as done.
    """
    from synthquant import __version__
    from synthquant.bids import lesion_root

    roots = [config.bids_dir / f"sub-{subject}", config.bids_dir / "participants.tsv", config.models_dir]
    if amyloid:
        roots.append(config.pet_templates)
    if myelin:
        roots += [lesion_root(config.bids_dir, config.lesion_dir) / f"sub-{subject}", config.hc_norm]
    digest = hashlib.sha256(f"synthquant {__version__}\n".encode())
    for root in roots:
        if root is None or not Path(root).exists():
            continue
        files = sorted(p for p in Path(root).rglob("*") if p.is_file()) if Path(root).is_dir() else [Path(root)]
        for path in files:
            stat = path.stat()
            digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# --- the tasks --------------------------------------------------------------------------------

def run_subject_graph(config: RunConfig) -> tuple[list[str], dict[str, str]]:
    """One participant run as ``cli.run_participant`` makes it: ``(sessions done, {session: reason})``.

    The failures include the sessions that discovery refused.
    """
    from synthquant.cli import participant_graph
    from synthquant.runner import run_graph

    graph, names, refused = participant_graph(config)
    failures = dict(refused)
    if names:
        plugin_args = ({"n_procs": config.nprocs, **config.plugin_args} if config.plugin == "MultiProc"
                       else dict(config.plugin_args))
        failures.update(run_graph(graph, names, plugin=config.plugin, plugin_args=plugin_args,
                                  work_dir=config.work_dir))
    return [key for key in names.values() if key not in failures], failures


def run_subject(config_json: str, subject: str, site: str, stamp: str) -> dict:
    """pydra task: one subject's participant level; never raises, so its site goes on.

    ``stamp`` (:func:`input_stamp`) is not read: it is part of the task's cache key.
    """
    from synthquant.config import apply_threads

    config = replace(config_from_json(config_json), participant_labels=(subject,))
    apply_threads(config.omp_nthreads, config.seed)  # before anything imports ants, in this process
    started = time.monotonic()
    try:
        done, failures = run_subject_graph(config)
    except InputError as err:
        done, failures = [], {f"sub-{subject}": str(err)}
    except Exception as err:  # noqa: BLE001 - one subject's bug must not stop its site
        done, failures = [], {f"sub-{subject}": f"{type(err).__name__}: {err}".splitlines()[0]}
    seconds = time.monotonic() - started
    state = f"FAILED ({len(failures)} session(s))" if failures else f"done ({len(done)} session(s))"
    say(f"site {site}: sub-{subject} {state} in {seconds:.0f} s")
    return {"subject": subject, "site": site, "done": done, "failures": failures, "seconds": seconds,
            "finished": time.time(), "cache_dir": os.getcwd()}  # pydra runs a task in its cache dir


def write_site_tables(output_dir: str, site: str, runs_amyloid: bool, runs_myelin: bool) -> dict[str, str]:
    """``group/site-<label>_{amyloid_suvr,myelin_stats}.tsv``: the group tables' rows of one site."""
    from synthquant.group import collect_amyloid, collect_myelin
    from synthquant.image import atomic_write_text
    from synthquant.quantify import format_table

    group_dir, label = Path(output_dir) / "group", site_label(site)
    written = {}
    for name, wanted, collect in (("amyloid_suvr", runs_amyloid, collect_amyloid),
                                  ("myelin_stats", runs_myelin, collect_myelin)):
        if not wanted:
            continue
        table = collect(output_dir)
        rows = table[table["site"].fillna("n/a").astype(str) == site].copy()
        if rows.empty:
            continue
        rows["n_voxels"] = rows["n_voxels"].astype(int)  # as run_group writes it
        written[name] = str(atomic_write_text(format_table(rows), group_dir / f"site-{label}_{name}.tsv"))
    return written


def site_tables(output_dir: str, site: str, outcomes: list, runs_amyloid: bool, runs_myelin: bool) -> dict:
    """pydra task: combine one site's subjects into its tables."""
    tables = write_site_tables(output_dir, site, runs_amyloid, runs_myelin)
    failed = sum(1 for outcome in outcomes if outcome["failures"])
    wrote = ", ".join(str(Path(p).relative_to(output_dir)) for p in tables.values()) or "no table (no rows)"
    say(f"site {site}: {len(outcomes) - failed} of {len(outcomes)} subject(s) succeeded; wrote {wrote}")
    return {"site": site, "tables": tables, "outcomes": outcomes}


def group_tables(output_dir: str, bids_dir: str, sites: list) -> dict:
    """pydra task: the group tables (``synthquant.group.run_group``) once every site is done."""
    from synthquant.group import run_group

    try:
        written = {name: str(path) for name, path in run_group(Path(output_dir), Path(bids_dir)).items()}
    except InputError as err:  # no subject has succeeded: nothing to gather
        written = {"error": str(err)}
    return {"group": written, "sites": sites, "finished": time.time()}


RunSubject = python.define(run_subject, outputs=["outcome"])
SiteTables = python.define(site_tables, outputs=["site_result"])
GroupTables = python.define(group_tables, outputs=["summary"])


@workflow.define(outputs=["site_result"])
def SiteWorkflow(site: str, subjects: list, stamps: list, config_json: str, output_dir: str, runs_amyloid: bool,
                 runs_myelin: bool):
    """One site: its subjects split (each a participant run), then combined into the site tables."""
    subject = workflow.add(
        RunSubject(config_json=config_json, site=site).split(("subject", "stamp"), subject=subjects, stamp=stamps)
        .combine("subject"), name="run_subject")
    tables = workflow.add(SiteTables(output_dir=output_dir, site=site, outcomes=subject.outcome,
                                     runs_amyloid=runs_amyloid, runs_myelin=runs_myelin), name="site_tables")
    return tables.site_result


@workflow.define(outputs=["summary"])
def BatchWorkflow(sites: list, subjects: list, stamps: list, config_json: str, output_dir: str, bids_dir: str,
                  runs_amyloid: bool, runs_myelin: bool):
    """Split over sites (each a :func:`SiteWorkflow`), then combine the sites into the group tables."""
    site = workflow.add(
        SiteWorkflow(config_json=config_json, output_dir=output_dir, runs_amyloid=runs_amyloid,
                     runs_myelin=runs_myelin)
        .split(("site", "subjects", "stamps"), site=sites, subjects=subjects, stamps=stamps).combine("site"),
        name="site_wf")
    group = workflow.add(GroupTables(output_dir=output_dir, bids_dir=bids_dir, sites=site.site_result),
                         name="group_tables")
    return group.summary


# --- the command ------------------------------------------------------------------------------

@dataclass
class BatchPlan:
    """What discovery found: subjects by site, and the sessions refused (already reported)."""

    sites: dict[str, list[str]]          # site -> subject labels (sorted)
    refused: dict[str, str]
    amyloid_subjects: set[str]
    myelin_subjects: set[str]


def plan_batch(config: RunConfig) -> BatchPlan:
    """Discover both arms (``cli.discover_sessions``), check the models once, and group
    the subjects by site. Bad input fails here (exit 2) or refuses its session, in one line."""
    from synthquant.cli import (
        check_dvr_model,
        check_hc_norms,
        check_pet_templates,
        check_synthesis,
        discover_sessions,
    )

    amyloid, myelin, refused = discover_sessions(config)
    # A missing model or template is one line and exit 2 here, not the same failure per subject.
    synth_model, synth_device = check_synthesis(config, amyloid)
    check_pet_templates(config, amyloid)
    check_dvr_model(config, myelin, synth_device if synth_model else None)
    if myelin:
        check_hc_norms(config)

    sites: dict[str, list[str]] = {}
    site_of_subject: dict[str, str] = {}
    for inputs in [*amyloid, *myelin]:  # a subject's site is that of its first session
        site_of_subject.setdefault(inputs.subject, inputs.site)
    for subject, site in sorted(site_of_subject.items()):
        sites.setdefault(site, []).append(subject)
    labels: dict[str, str] = {}
    for site in sites:
        other = labels.setdefault(site_label(site), site)
        if other != site:
            raise InputError(config.bids_dir / "participants.tsv",
                             f"sites {other!r} and {site!r} give the same table name site-{site_label(site)}")
    return BatchPlan(sites=dict(sorted(sites.items())), refused=refused,
                     amyloid_subjects={i.subject for i in amyloid}, myelin_subjects={i.subject for i in myelin})


def pydra_worker(config: RunConfig, at_once: int):
    """The pydra worker: ``cf`` (local processes) or ``slurm`` (one job per task).

    Locally each task runs in a fresh interpreter (``spawn``, one task per process), as a slurm
    job would: it inherits this process's stdout and environment as they are now, never a
    fork of a process that may have used torch's OpenMP pool (see synthquant.runner), and a
    subject's graph is built from the code on disk when it starts, not from modules imported
    by an earlier subject (a Nipype connect function's source is read from the file then;
    a package changed during a long batch made that source, and pickled results, disagree).
    """
    if config.batch_worker == "slurm":
        from pydra.workers.slurm import Worker as SlurmWorker

        sbatch_args = str(config.plugin_args.get("sbatch_args", ""))
        if not re.search(r"(^|\s)(-c\s*\d|--cpus-per-task)", sbatch_args):
            sbatch_args = f"{sbatch_args} --cpus-per-task={config.nprocs}".strip()
        return SlurmWorker(sbatch_args=sbatch_args)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from pydra.workers.cf import Worker as ConcurrentFuturesWorker

    worker = ConcurrentFuturesWorker(n_procs=at_once)
    worker.pool.shutdown()  # its default pool forks; no process was started yet
    worker.pool = ProcessPoolExecutor(at_once, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)
    return worker


def forget_failures(cache_root: Path, outcomes: list[dict]) -> None:
    """Remove the failed subjects' task results and every workflow result from pydra's cache,
    so the next run retries those subjects (the others' task results stay: no recomputation)."""
    failed = [outcome for outcome in outcomes if outcome["failures"]]
    if not failed:
        return
    for outcome in failed:
        task_dir = Path(outcome["cache_dir"])
        if task_dir.parent == cache_root and task_dir.name.startswith("python-"):
            shutil.rmtree(task_dir, ignore_errors=True)
    for workflow_dir in cache_root.glob("workflow-*"):
        shutil.rmtree(workflow_dir, ignore_errors=True)


def run_lock(config: RunConfig):
    """Hold the work and output dirs for the whole batch (synthquant.locking, where present).

    The subject tasks' own participant runs then take them as the holder's children (the lock
    module passes its holds down through the environment), instead of refusing each other.
    """
    try:
        from synthquant.locking import locked
    except ImportError:  # a tree without run locks
        return contextlib.nullcontext()
    return locked(config.work_dir, config.output_dir)


def run_batch(config: RunConfig) -> int:
    """``--batch-by site``: run the participant level over sites and subjects; return the exit status."""
    plan = plan_batch(config)
    with run_lock(config):  # before the first write; the workers start inside it
        return _run_batch(config, plan)


def _run_batch(config: RunConfig, plan: BatchPlan) -> int:
    from synthquant.bids import write_dataset_description
    from synthquant.cli import EXIT_OK, EXIT_SUBJECT_FAILED
    from synthquant.image import atomic_write_text

    subjects = [s for members in plan.sites.values() for s in members]
    config.output_dir.mkdir(parents=True, exist_ok=True)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(config.output_dir, config.bids_dir)
    if not subjects:
        say("no subject to run")
        return EXIT_SUBJECT_FAILED
    at_once, per_subject, omp_nthreads = subject_resources(config, len(subjects))
    base = subject_config(config, per_subject, omp_nthreads)
    config_json = base.to_json()
    stamps = {s: input_stamp(base, s, amyloid=s in plan.amyloid_subjects, myelin=s in plan.myelin_subjects)
              for s in subjects}
    cache_root = config.work_dir / PYDRA_CACHE
    say(f"{len(subjects)} subject(s) over {len(plan.sites)} site(s): "
        + "; ".join(f"{site} ({', '.join(members)})" for site, members in plan.sites.items()))
    where = (f"cf, {at_once} subject(s) at once" if config.batch_worker == "cf"
             else "slurm, one job per subject")
    say(f"pydra worker {where}; each subject {config.plugin} with {per_subject} process(es), "
        f"{omp_nthreads} thread(s); pydra cache {cache_root}")

    batch = BatchWorkflow(
        sites=list(plan.sites), subjects=list(plan.sites.values()),
        stamps=[[stamps[s] for s in members] for members in plan.sites.values()], config_json=config_json,
        output_dir=str(config.output_dir), bids_dir=str(config.bids_dir), runs_amyloid=config.runs_amyloid,
        runs_myelin=config.runs_myelin)
    from pydra.engine.submitter import Submitter

    started = time.time()
    max_jobs = config.plugin_args.get("max_jobs") if config.batch_worker == "slurm" else None
    # clean_stale_locks: a killed run leaves pydra's lock files behind; the rerun resumes past them.
    with Submitter(cache_root=cache_root, worker=pydra_worker(config, at_once), clean_stale_locks=True,
                   max_concurrent=int(max_jobs) if max_jobs else float("inf")) as submitter:
        result = submitter(batch)
    if result.errored:
        lines = [line for chunk in result.errors.get("error message", []) for line in str(chunk).splitlines()]
        last = next((line for line in reversed(lines) if line.strip()), "unknown error")
        print(f"ERROR batch: the pydra workflow failed: {last.strip()} (crash report: {result.cache_dir})",
              file=sys.stderr, flush=True)
        return EXIT_SUBJECT_FAILED

    summary = result.outputs.summary
    outcomes = [outcome for site in summary["sites"] for outcome in site["outcomes"]]
    forget_failures(cache_root, outcomes)
    cached = [f"sub-{o['subject']}" for o in outcomes if o["finished"] < started]
    if cached:
        say(f"{len(cached)} subject(s) already done (pydra cache): {', '.join(cached)}")
    failures = {key: reason for o in outcomes for key, reason in o["failures"].items()}
    for key, reason in failures.items():
        if key not in plan.refused:  # those were reported at discovery
            print(f"ERROR {key}: {reason}", file=sys.stderr, flush=True)
    if "error" in summary["group"]:
        say(f"no group tables: {summary['group']['error']}")
    verb = "wrote" if summary["finished"] >= started else "up to date (pydra cache)"
    for name, path in summary["group"].items():
        if name != "error":
            say(f"group level: {verb} {path}")
    (config.output_dir / "logs").mkdir(exist_ok=True)
    atomic_write_text(config.to_json(), config.output_dir / "logs" / "config.json")
    done = [key for o in outcomes for key in o["done"]]
    failed = len(set(failures) | set(plan.refused))
    say(f"participant level: {len(done)} session(s) succeeded, {failed} failed; outputs in {config.output_dir}")
    return EXIT_OK if failed == 0 and done else EXIT_SUBJECT_FAILED
