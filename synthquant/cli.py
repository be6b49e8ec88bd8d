"""Command line (BIDS-App convention): ``run_workflow.py BIDS_DIR OUTPUT_DIR {participant,group}``.

Exit status: 0 when every subject succeeded, 1 when some failed (the others complete),
2 for a usage or input error. Bad input prints one line and no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from synthquant import __version__
from synthquant.config import METHODS, PIPELINES, RunConfig, apply_threads
from synthquant.errors import InputError

EXIT_OK, EXIT_SUBJECT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_workflow.py",
        description="synthquant: quantify brain PET when a modality is missing, by synthesising it.",
        epilog="Demo: run_workflow.py --demo OUTPUT_DIR (synthetic cohort, participant and group levels). "
               "Training: run_workflow.py train mr-from-fbp BIDS_DIR --out DIR (see train --help).",
    )
    parser.add_argument("bids_dir", nargs="?", type=Path, help="root of the BIDS dataset")
    parser.add_argument("output_dir", nargs="?", type=Path, help="where the derivatives dataset is written")
    parser.add_argument("analysis_level", nargs="?", choices=["participant", "group"])
    parser.add_argument("--demo", metavar="OUTPUT_DIR", type=Path,
                        help="make a phantom cohort in OUTPUT_DIR/bids and run both levels on it")
    parser.add_argument("--participant-label", "--participant_label", nargs="+", default=[], metavar="L",
                        help="labels to process (with or without 'sub-'); default: all")
    parser.add_argument("--pipeline", choices=PIPELINES, default="amyloid")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                        help="default: synthmr, plus mr where a T1w exists")
    parser.add_argument("-w", "--work-dir", type=Path, default=None, help="default: OUTPUT_DIR/../work")
    parser.add_argument("--nprocs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--omp-nthreads", type=int, default=None,
                        help="threads per process (default and maximum: nprocs)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--models", type=Path, default=None, metavar="DIR")
    parser.add_argument("--batch-by", choices=["site"], default=None,
                        help="run the participant level as a pydra workflow split over sites, then subjects, "
                             "with per-site tables in OUTPUT_DIR/group")
    parser.add_argument("--batch-worker", choices=["cf", "slurm"], default="cf",
                        help="pydra worker of --batch-by: cf (local processes, default) or slurm")
    parser.add_argument("--plugin", default="MultiProc", help="Nipype plugin (MultiProc, Linear, SLURM, ...)")
    parser.add_argument("--plugin-args", type=json.loads, default={}, metavar="JSON",
                        help="Nipype plugin arguments, e.g. '{\"n_gpu_procs\": 1}' or, for SLURM, "
                             "'{\"sbatch_args\": \"-p normal\"}'; with --batch-worker slurm, sbatch_args and "
                             "max_jobs go to pydra's slurm worker")
    parser.add_argument("--skip-bids-validation", action="store_true",
                        help="do not run the BIDS validator (its errors are reported, not fatal)")
    parser.add_argument("--template-resolution", type=float, default=1.0, metavar="MM",
                        help="template voxel size for SyN normalisation (default 1 mm)")
    parser.add_argument("--centiloid-equation", default=None, metavar="SLOPE,INTERCEPT",
                        help="Centiloid equation for a tracer other than florbetapir")
    parser.add_argument("--lesion-dir", type=Path, default=None)
    parser.add_argument("--pet-templates", type=Path, default=None, metavar="DIR",
                        help="FBP PET templates for methods pettemplate and multiatlas (built by the group level "
                             "with --build-pet-templates); default: MODELS/pet_templates")
    parser.add_argument("--build-pet-templates", action="store_true",
                        help="group level: average this run's mr-normalised PETs into a normal-control template "
                             "and --pet-template-levels multiatlas templates, in OUTPUT_DIR/group/pet_templates")
    parser.add_argument("--pet-template-levels", type=int, default=4, metavar="K",
                        help="number of multiatlas templates (composite-SUVR quantile bins; default 4)")
    parser.add_argument("--hc-norm", type=Path, default=None, metavar="DIR",
                        help="myelin: folder of healthy-control WM DVR norms (hc_wm_norm_src-*.json, written by the "
                             "group level); default: OUTPUT_DIR/group/hc_wm_norm where it exists")
    parser.add_argument("--demyelination-k", type=float, default=2.0, metavar="K",
                        help="myelin: a lesion voxel is demyelinated below the HC WM mean - K SD (default 2, "
                             "Bodini 2016)")
    parser.add_argument("--version", action="version", version=f"synthquant {__version__}")
    return parser


def make_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> RunConfig:
    if args.bids_dir is None or args.output_dir is None or args.analysis_level is None:
        parser.error("BIDS_DIR, OUTPUT_DIR and the analysis level are required (or use --demo OUTPUT_DIR)")
    bids_dir = args.bids_dir.resolve()
    output_dir = args.output_dir.resolve()
    if not bids_dir.is_dir():
        raise InputError(args.bids_dir, "BIDS directory not found")
    if output_dir == bids_dir:
        raise InputError(args.output_dir, "output directory must differ from the BIDS directory")
    from synthquant.atlases import TEMPLATE_RESOLUTIONS

    if args.template_resolution not in TEMPLATE_RESOLUTIONS:
        raise InputError(None, "--template-resolution must be one of "
                               f"{', '.join(f'{r:g}' for r in TEMPLATE_RESOLUTIONS)} (mm)")
    if args.nprocs < 1:
        raise InputError(None, "--nprocs must be at least 1")
    if not args.demyelination_k > 0:
        raise InputError(None, "--demyelination-k must be positive")
    return RunConfig(
        bids_dir=bids_dir, output_dir=output_dir, analysis_level=args.analysis_level,
        work_dir=(args.work_dir or output_dir.parent / "work").resolve(),
        participant_labels=tuple(args.participant_label), pipeline=args.pipeline,
        methods=tuple(args.methods) if args.methods else None, nprocs=args.nprocs,
        # A node may not use more threads than the scheduler has processes (else MultiProc
        # can never start it).
        omp_nthreads=min(args.omp_nthreads or args.nprocs, args.nprocs), device=args.device, models_dir=args.models,
        batch_by=args.batch_by, plugin=args.plugin, plugin_args=args.plugin_args,
        skip_bids_validation=args.skip_bids_validation, template_resolution=args.template_resolution,
        centiloid_equation=args.centiloid_equation, lesion_dir=args.lesion_dir,
        pet_templates_dir=args.pet_templates.resolve() if args.pet_templates else None,
        build_pet_templates=args.build_pet_templates, pet_template_levels=args.pet_template_levels,
        hc_norm_dir=args.hc_norm.resolve() if args.hc_norm else None, demyelination_k=args.demyelination_k,
        batch_worker=args.batch_worker,
    )


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def check_synthesis(config: RunConfig, sessions: list) -> tuple[object | None, str]:
    """Load the ``mr_from_fbp`` model and choose its device once, before any subject runs.

    A missing, corrupt, pickled or mismatched model, or ``--device cuda`` without a GPU, is then
    one line and exit 2, not the same failure in every subject.
    """
    from synthquant.workflows.base import methods_for

    if not any("synthmr" in methods_for(inputs, config)[0] for inputs in sessions):
        return None, "cpu"
    from synthquant.models import MR_FROM_FBP

    return _checked_model(config, MR_FROM_FBP, None, label="synthesis model",
                          real_data="real PET/MR pairs (run_workflow.py train mr-from-fbp)")


def _checked_model(config: RunConfig, name: str, device: str | None, *, label: str, real_data: str):
    """Choose the device (unless given), load model ``name`` once and say which; warn when it is
    the bundled phantom-only demo model. Returns ``(model, device)``."""
    from synthquant.models import resolve_model

    if device is None:
        from synthquant.nets.device import choose_device

        device = choose_device(config.device, omp_nthreads=config.omp_nthreads).type
        if config.device == "auto":
            say(f"synthesis device: {device} (--device auto)")
    model = resolve_model(name, config.models_dir)
    say(f"{label}: {model.weights} (SHA-256 {model.sha256[:12]}...)")
    if model.synthetic_only:
        print(f"WARNING {model.weights}: demo weights trained on synthetic phantoms only; for real data pass "
              f"--models DIR with a model trained on {real_data}", file=sys.stderr, flush=True)
    return model, device


def check_dvr_model(config: RunConfig, sessions: list, device: str | None) -> tuple[object | None, str]:
    """Load the ``dvr_from_mri`` model once, before any myelin session runs (as check_synthesis)."""
    if not sessions:
        return None, device or "cpu"
    from synthquant.models import DVR_FROM_MRI

    return _checked_model(config, DVR_FROM_MRI, device, label="myelin model",
                          real_data="real MTR/DTI/PIB data (run_workflow.py train dvr-from-mri)")


def check_hc_norms(config: RunConfig) -> dict:
    """The HC WM norms per DVR source (``synth``, ``pib``), checked; empty when none exists yet.

    Each source is compared with the norm of the same source (so a prediction's bias cancels,
    Wei §3.5); where only one was built, both use it and the sidecar names it.
    """
    folder = config.hc_norm
    if folder is None:
        say("no healthy-control WM norm yet: DVR maps and ROI means only; run the group level, then the "
            "participant level again, for demyelinated voxels")
        return {}
    if not folder.is_dir():
        raise InputError(folder, "--hc-norm directory not found")
    from synthquant.myelin import DVR_SOURCES, load_hc_wm_norm

    found = {}
    for source in DVR_SOURCES:
        description = folder / f"hc_wm_norm_src-{source}.json"
        if description.is_file():
            load_hc_wm_norm(description)  # one line for a broken norm, before any subject
            found[source] = description
    if not found:
        raise InputError(folder, "no hc_wm_norm_src-*.json in the HC norm directory")
    norms = {source: found.get(source, next(iter(found.values()))) for source in DVR_SOURCES}
    say("HC WM norms: " + ", ".join(f"{source} DVR vs {path.name}" for source, path in norms.items()))
    return norms


def check_pet_templates(config: RunConfig, sessions: list):
    """The (normal-control, multiatlas) FBP PET templates, checked, where a method needs them."""
    from synthquant.config import TEMPLATE_METHODS
    from synthquant.workflows.base import methods_for

    needed = sorted({m for inputs in sessions for m in methods_for(inputs, config)[0] if m in TEMPLATE_METHODS})
    if not needed:
        return None
    if config.pet_templates is None:
        raise InputError(None, f"method(s) {', '.join(needed)} need FBP PET templates: build them with "
                               "'run_workflow.py BIDS OUT group --build-pet-templates' on a cohort with T1w, "
                               "then pass --pet-templates OUT/group/pet_templates")
    from synthquant.pettemplates import load_pet_templates

    nc_template, levels = load_pet_templates(config.pet_templates)
    say(f"PET templates: {config.pet_templates} (normal control + {len(levels)} multiatlas)")
    return nc_template, levels


def discover_sessions(config: RunConfig) -> tuple[list, list, dict[str, str]]:
    """The sessions of the arms ``config.pipeline`` asks for, each refused one reported in one line.

    Returns ``(amyloid, myelin, refused)``; raises InputError (exit 2) for bad labels or when
    there is nothing at all to process. Used by the participant level and by ``--batch-by``.
    """
    from synthquant.bids import (
        bids_validator_issues,
        discover,
        discover_myelin,
        select_subjects,
    )

    select_subjects(config.bids_dir, config.participant_labels)  # bad labels fail first, in one line
    if not config.skip_bids_validation:
        for line in bids_validator_issues(config.bids_dir):
            print(f"WARNING {line}", file=sys.stderr, flush=True)
    say(f"indexing {config.bids_dir}")
    amyloid, myelin, refused = [], [], {}
    if config.runs_amyloid:
        found = discover(config.bids_dir, config.participant_labels, centiloid_equation=config.centiloid_equation)
        amyloid, refused = found.amyloid, dict(found.refused)
        if not amyloid and not refused and config.pipeline == "amyloid":
            raise InputError(config.bids_dir, "no amyloid PET found for the requested participants")
    if config.runs_myelin:
        found_myelin = discover_myelin(config.bids_dir, config.participant_labels, lesion_dir=config.lesion_dir)
        myelin = found_myelin.myelin
        refused.update({f"{key} (myelin)": reason for key, reason in found_myelin.refused.items()})
        for key, reason in found_myelin.skipped.items():
            if config.pipeline == "myelin":
                print(f"WARNING {key}: {reason}", file=sys.stderr, flush=True)
            else:  # --pipeline all: an amyloid-only subject is no surprise
                say(f"{key}: {reason}")
        if not myelin and not found_myelin.refused and config.pipeline == "myelin":
            raise InputError(config.bids_dir, "no session with MTR, DWI and T1w found for the requested participants")
    for key, reason in refused.items():
        print(f"ERROR {key}: {reason}", file=sys.stderr, flush=True)
    if not amyloid and not myelin and not refused:
        raise InputError(config.bids_dir, "nothing to process for the requested participants")
    return amyloid, myelin, refused


def participant_graph(config: RunConfig, name: str = "synthquant_wf"):
    """Discover and check the inputs, then build the participant graph.

    Returns ``(workflow, names, refused)``: ``names`` maps sub-workflow names to session keys,
    ``refused`` the sessions whose input was refused (already reported, one line each).
    """
    from synthquant.bids import software_versions, write_dataset_description

    amyloid, myelin, refused = discover_sessions(config)

    from synthquant.locking import hold_for_run
    from synthquant.workflows.base import init_participant_wf

    hold_for_run(config.work_dir, config.output_dir)  # before the first write; a second run exits 2
    config.output_dir.mkdir(parents=True, exist_ok=True)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_description(config.output_dir, config.bids_dir)
    (config.output_dir / "logs").mkdir(exist_ok=True)
    (config.output_dir / "logs" / "config.json").write_text(config.to_json())

    base_sidecar = {"SoftwareVersions": software_versions()}
    synth_model, synth_device = check_synthesis(config, amyloid)
    pet_templates = check_pet_templates(config, amyloid)
    dvr_model, synth_device = check_dvr_model(config, myelin, synth_device if synth_model else None)
    hc_norms = check_hc_norms(config) if myelin else {}
    workflow, names, warnings = init_participant_wf(config, amyloid, base_sidecar, synth_model=synth_model,
                                                    synth_device=synth_device, pet_templates=pet_templates,
                                                    myelin_sessions=myelin, dvr_model=dvr_model, hc_norms=hc_norms,
                                                    name=name)
    for warning in warnings:
        print(f"WARNING {warning}", file=sys.stderr, flush=True)
    return workflow, names, refused


def run_participant(config: RunConfig, also: RunConfig | None = None) -> int:
    """Discover, check, build and run; return the exit status.

    ``also`` is a second configuration (another dataset and output folder; ``--demo`` runs its
    myelin cohort so) whose sessions join the same graph, so one scheduler keeps every
    process busy; its work dir is the first one's.
    """
    from synthquant.runner import run_graph

    workflow, names, refused = participant_graph(config)
    if also is not None:
        from nipype.pipeline import engine as pe

        other, other_names, other_refused = participant_graph(also, name="synthquant_also_wf")
        top = pe.Workflow(name="synthquant_demo_wf", base_dir=str(config.work_dir))
        top.add_nodes([wf for wf, n in ((workflow, names), (other, other_names)) if n])
        workflow, names, refused = top, {**names, **other_names}, {**refused, **other_refused}
    failures = {}
    if names:
        say(f"running {len(names)} session(s) with {config.plugin} ({config.nprocs} processes); work dir {config.work_dir}")
        failures = run_graph(workflow, names, plugin=config.plugin,
                             plugin_args={"n_procs": config.nprocs, **config.plugin_args}
                             if config.plugin == "MultiProc" else dict(config.plugin_args),
                             work_dir=config.work_dir)
    for key, reason in failures.items():
        print(f"ERROR {key}: {reason}", file=sys.stderr, flush=True)
    done = [key for key in names.values() if key not in failures]
    failed = len(failures) + len(refused)
    say(f"participant level: {len(done)} session(s) succeeded, {failed} failed; outputs in {config.output_dir}")
    return EXIT_OK if failed == 0 and done else EXIT_SUBJECT_FAILED


def run_group_level(config: RunConfig) -> int:
    from synthquant.group import run_group

    paths = run_group(config.output_dir, config.bids_dir)
    if config.build_pet_templates:
        from synthquant.group import build_pet_templates_from_run

        paths.update(build_pet_templates_from_run(config.output_dir, config.bids_dir,
                                                  n_levels=config.pet_template_levels))
    for name, path in paths.items():
        say(f"group level: wrote {path}")
    return EXIT_OK


#: The demo: a 6-subject, 3-site amyloid phantom (2 NC, 2 MCI, 2 AD), SyN at 3 mm (at 2 mm, five
#: methods took 12 min 21 s on 2 cores; the budget is 10 min), and a 5-subject myelin phantom
#: (2 MS, 3 HC: the HC norm needs 3 controls) at the test preset (3 mm anatomy). Each node runs
#: one thread and ``nprocs`` nodes run at once (DEMO_NODE_THREADS): with 11 sessions there is
#: always another node to run, and on an idle 2-core machine the demo took 8 min 33 s against
#: 10 min 18 s with 2-thread nodes, which hold both slots of MultiProc for ANTs alone.
DEMO_SUBJECTS, DEMO_TEMPLATE_RESOLUTION, DEMO_TEMPLATE_LEVELS = 6, 3.0, 3
DEMO_MYELIN_SUBJECTS, DEMO_MYELIN_PRESET = 5, "test"
DEMO_NODE_THREADS = 1


def write_in_parallel(jobs: list, nprocs: int) -> None:
    """Run ``make(folder, **kwargs)`` for each ``(make, folder, kwargs)`` of ``jobs``, up to
    ``nprocs`` at once, each in a fresh process (the demo's cohorts: about 25 s each on one core;
    seeded, so the same files either way).

    Spawned, not forkserver: Python starts one forkserver per process and it keeps the
    environment of its start, so starting it here would hand Nipype's MultiProc workers a
    server from before ``runner.configure_nipype`` set ``NIPYPE_CONFIG_DIR``, and they would log
    every node at INFO.
    """
    import multiprocessing  # noqa: PLC0415
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

    if not jobs:
        return
    with ProcessPoolExecutor(max_workers=max(1, min(len(jobs), nprocs)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(make, folder, **kwargs) for make, folder, kwargs in jobs]:
            done.result()


def run_demo(output_dir: Path, nprocs: int) -> int:
    """Phantom cohorts -> both arms -> group, then the errors against the phantom's truth.

    Amyloid (Choi & Lee 2018):

    1. Participant level with ``mr`` and ``synthmr`` (the bundled demo generator).
    2. Group level, building the FBP PET templates from the mr-normalised PETs. The demo has
       one cohort, so the templates include the subjects they then normalise: that favours
       pettemplate and multiatlas (benchmarks/ holds them out).
    3. Participant level with all five methods (step 1's nodes come from the cache), so each
       subject's report shows every method; then the group level again.

    Myelin (Wei et al. 2019, Bodini et al. 2016), run in the same graphs as steps 1 and 3:
    predicted and true (Logan) PIB DVR; the group level of step 2 builds the healthy-control
    WM norm, with which step 3 finds the demyelinated lesion voxels.
    """
    from synthquant.phantom import make_amyloid_cohort, make_myelin_cohort

    output_dir = output_dir.resolve()
    bids_dir, myelin_bids = output_dir / "bids", output_dir / "bids_myelin"
    cohorts = []
    if not (bids_dir / "dataset_description.json").exists():
        say(f"writing an amyloid phantom cohort (demo preset) to {bids_dir}")
        cohorts.append((make_amyloid_cohort, bids_dir, dict(n_subjects=DEMO_SUBJECTS, preset="demo", seed=0)))
    if not (myelin_bids / "dataset_description.json").exists():
        say(f"writing a myelin phantom cohort ({DEMO_MYELIN_PRESET} preset) to {myelin_bids}")
        cohorts.append((make_myelin_cohort, myelin_bids,
                        dict(n_subjects=DEMO_MYELIN_SUBJECTS, preset=DEMO_MYELIN_PRESET, seed=0)))
    write_in_parallel(cohorts, nprocs)
    derivatives, myelin_derivatives = output_dir / "derivatives", output_dir / "derivatives_myelin"
    common = dict(bids_dir=bids_dir, output_dir=derivatives, analysis_level="participant",
                  work_dir=output_dir / "work", nprocs=nprocs, omp_nthreads=DEMO_NODE_THREADS,
                  template_resolution=DEMO_TEMPLATE_RESOLUTION, skip_bids_validation=True)
    myelin = dict(common, bids_dir=myelin_bids, output_dir=myelin_derivatives, pipeline="myelin")
    status = run_participant(RunConfig(**common, methods=("mr", "synthmr")), also=RunConfig(**myelin))

    def group_level(config: RunConfig) -> int:
        """One arm's group level; a failure is one line, and the other arm goes on."""
        try:
            return run_group_level(config)
        except InputError as err:
            print(f"synthquant: error: {err}", file=sys.stderr)
            return EXIT_SUBJECT_FAILED

    say("group level: FBP PET templates from the mr-normalised PETs; healthy-control WM DVR norm")
    status = max(status, group_level(RunConfig(**{**common, "analysis_level": "group"}, build_pet_templates=True,
                                               pet_template_levels=DEMO_TEMPLATE_LEVELS)))
    status = max(status, group_level(RunConfig(**{**myelin, "analysis_level": "group"})))
    templates = derivatives / "group" / "pet_templates"
    methods = ("mr", "synthmr", "pettemplate", "multiatlas", "petseg") if templates.is_dir() else ("mr", "synthmr")
    config = RunConfig(**common, methods=methods, pet_templates_dir=templates if templates.is_dir() else None)
    status = max(status, run_participant(config, also=RunConfig(**myelin)))
    status = max(status, group_level(RunConfig(**{**common, "analysis_level": "group"})))
    status = max(status, group_level(RunConfig(**{**myelin, "analysis_level": "group"})))
    from synthquant.evaluation import (
        compare_myelin_sources,
        compare_to_method,
        compare_to_truth,
    )

    group_table = derivatives / "group" / "amyloid_suvr.tsv"
    if group_table.exists():
        print("\nSUVR error against the phantom's ground truth (what a perfect normalisation would measure; "
              "mae/bias in SUVR units, centiloid_* in CL):")
        print(compare_to_truth(group_table, bids_dir).to_string(index=False))
        print("\nSUVR difference of each MR-less method from the real-T1w method mr (Choi & Lee 2018, Table 2):")
        print(compare_to_method(group_table, "mr").to_string(index=False))
    myelin_table = myelin_derivatives / "group" / "myelin_stats.tsv"
    if myelin_table.exists():
        print("\nPredicted (synth) against true (pib, Logan) PIB DVR per ROI (Wei 2019, Table 2); demyelinated % "
              "of the lesions from each (Bodini 2016):")
        print(compare_myelin_sources(myelin_table).to_string(index=False))
    print(f"\nreports: {derivatives}/sub-*.html and {derivatives}/group/group.html (amyloid); "
          f"{myelin_derivatives}/sub-*_myelin.html and {myelin_derivatives}/group/group.html (myelin); "
          f"myelin table: {myelin_derivatives}/group/myelin_stats.tsv")
    return status


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ET", "1")  # no Nipype version check over the network
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train":
        from synthquant.train import train_main

        return train_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_threads(min(args.omp_nthreads or args.nprocs, args.nprocs))
    try:
        if args.demo:
            return run_demo(args.demo, args.nprocs)
        config = make_config(args, parser)
        if config.analysis_level == "participant" and config.batch_by == "site":
            from synthquant.workflows.batch import run_batch

            return run_batch(config)
        if config.analysis_level == "participant":
            return run_participant(config)
        return run_group_level(config)
    except InputError as err:
        print(f"synthquant: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("synthquant: interrupted; rerun the same command to resume from the work dir", file=sys.stderr)
        return 130
