"""The amyloid arm: static PET -> template space -> SUVR, regional table and Centiloid."""

from __future__ import annotations

from typing import NamedTuple

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from synthquant.atlases import TEMPLATE_SPACE, WORKING_RESOLUTION
from synthquant.interfaces import (
    AmyloidReport,
    DerivativesSink,
    PETSegmentation,
    PETTemplateRegistration,
    QuantifySUVR,
    RigidCoregistration,
    SegmentationRegistration,
    SelectPETTemplate,
    StaticPET,
    SynthesizeMR,
    ToTemplate,
)
from synthquant.reports.amyloid import t1w_pair_figure_name
from synthquant.workflows.normalize import init_normalize_wf

#: What each method's outputs say about how the PET reached template space.
METHOD_DESCRIPTIONS = {
    "mr": "PET rigidly coregistered (ANTs, Mattes MI) to the subject's real T1w; T1w skull-stripped, "
          "N4-corrected and normalised (ANTs affine + SyN, CC) to MNI152NLin2009aSym; PET resampled "
          "through the composed transforms (Choi & Lee 2018, gold-standard method).",
    "synthmr": "Pseudo-T1w generated from the static PET by a pix2pix generator (Choi & Lee 2018), on the PET's "
               "own grid; skull-stripped, N4-corrected and normalised (ANTs affine + SyN, CC) to "
               "MNI152NLin2009aSym exactly as a real T1w; the PET follows the same transforms (no "
               "coregistration: the pseudo-T1w shares the PET's space).",
    "pettemplate": "Static PET normalised directly (ANTs affine + SyN) to a normal-control florbetapir PET "
                   "template: the mean MR-normalised SUVR map of normal controls (Choi & Lee 2018, MR-less "
                   "baseline).",
    "multiatlas": "Static PET normalised (ANTs affine + SyN) to the most similar of several florbetapir PET "
                  "templates spanning amyloid levels, chosen by normalised cross-correlation after an affine "
                  "step (Choi & Lee 2018 after Bourgeat et al. 2015, MR-less baseline).",
    "petseg": "Three-class segmentation of the PET itself (ANTs Atropos); its GM/WM probability maps "
              "registered (affine + SyN) to the template's GM/WM priors, and the PET follows (Choi & Lee "
              "2018, MR-less baseline).",
}
#: PET templates and PET tissue maps are smooth: no SyN grid finer than the 2 mm working grid.
PET_ONLY_MIN_RESOLUTION = WORKING_RESOLUTION


class Route(NamedTuple):
    """How one method brings the static PET to template space.

    Each field is a (node, output field) pair to connect from. ``t1w_template`` is None for
    the PET-only methods (no T1w exists); ``notes`` None means the session's notes only.
    """

    transforms: tuple
    t1w_template: tuple | None
    sidecar: dict
    notes: tuple | None = None


def _mr_route(workflow, inputnode, static_pet, *, template_resolution, omp_nthreads) -> Route:
    """Real T1w: PET -> T1w rigid, T1w -> template (affine + SyN)."""
    normalize_wf = init_normalize_wf(resolution=template_resolution, omp_nthreads=omp_nthreads,
                                     name="normalize_mr_wf")
    coreg = pe.Node(RigidCoregistration(), name="coreg_mr", n_procs=omp_nthreads, mem_gb=1.0)
    transforms = pe.Node(niu.Merge(2), name="transforms_mr", run_without_submitting=True)
    workflow.connect([
        (inputnode, normalize_wf, [("t1w", "inputnode.t1w")]),
        (normalize_wf, coreg, [("outputnode.t1w_brain", "fixed")]),
        (static_pet, coreg, [("static_pet", "moving")]),
        # antsApplyTransforms order: SyN warp, affine (T1w -> template), then PET -> T1w rigid.
        (normalize_wf, transforms, [("outputnode.transforms", "in1")]),
        (coreg, transforms, [("transform", "in2")]),
    ])
    return Route((transforms, "out"), (normalize_wf, "outputnode.t1w_template"), {})


def _synthmr_route(workflow, static_pet, *, model, device, use_gpu, template_resolution, omp_nthreads,
                   output_dir, entities, sidecar, session_notes) -> Route:
    """Pseudo-T1w from the PET -> template (affine + SyN), as for a real T1w (Choi & Lee 2018)."""
    synthesize = pe.Node(SynthesizeMR(model=str(model.stem), device=device, use_gpu=use_gpu,
                                      omp_nthreads=omp_nthreads), name="synthesize_mr",
                         n_procs=1 if use_gpu else omp_nthreads, mem_gb=2.0)
    normalize_wf = init_normalize_wf(resolution=template_resolution, omp_nthreads=omp_nthreads,
                                     name="normalize_synthmr_wf")
    notes = pe.Node(niu.Merge(2), name="notes_synthmr", run_without_submitting=True)
    notes.inputs.in1 = list(session_notes)
    ds_pseudo_t1w = pe.Node(DerivativesSink(output_dir=output_dir, specs=[
        {"datatype": "anat", "suffix": "T1w", "extension": ".nii.gz",
         "entities": {"sub": entities["sub"], "ses": entities["ses"], "desc": "synthmr"},
         "sidecar": {**sidecar, "Description": "Pseudo-T1w generated from the static PET, on the PET's grid "
                                               "(intensities in [0, 2]: the generator's [-1, 1] shifted)"}},
    ]), name="ds_pseudo_t1w", run_without_submitting=True)
    workflow.connect([
        (static_pet, synthesize, [("static_pet", "pet")]),
        (synthesize, normalize_wf, [("pseudo_t1w", "inputnode.t1w")]),
        (synthesize, notes, [("notes", "in2")]),
        (synthesize, ds_pseudo_t1w, [("pseudo_t1w", "in_files")]),
        (notes, ds_pseudo_t1w, [("out", "notes")]),
    ])
    return Route((normalize_wf, "outputnode.transforms"), (normalize_wf, "outputnode.t1w_template"),
                 {**model.provenance()}, (notes, "out"))


def _pettemplate_route(workflow, static_pet, *, template, resolution, omp_nthreads) -> Route:
    """PET -> the normal-control FBP PET template (Choi & Lee 2018)."""
    register = pe.Node(PETTemplateRegistration(template=str(template), resolution=resolution),
                       name="register_pettemplate", n_procs=omp_nthreads, mem_gb=1.0)
    workflow.connect([(static_pet, register, [("static_pet", "static_pet")])])
    return Route((register, "transforms"), None, {"PETTemplate": str(template)})


def _multiatlas_route(workflow, static_pet, *, templates, resolution, omp_nthreads, session_notes) -> Route:
    """PET -> the most similar of K FBP PET templates (by NCC after an affine step), then SyN."""
    select = pe.Node(SelectPETTemplate(templates=[str(t) for t in templates]), name="select_multiatlas",
                     n_procs=omp_nthreads, mem_gb=1.0)
    register = pe.Node(PETTemplateRegistration(resolution=resolution), name="register_multiatlas",
                       n_procs=omp_nthreads, mem_gb=1.0)
    notes = pe.Node(niu.Function(input_names=["session_notes", "template", "scores"], output_names=["notes"],
                                 function=_selection_notes), name="notes_multiatlas", run_without_submitting=True)
    notes.inputs.session_notes = list(session_notes)
    workflow.connect([
        (static_pet, select, [("static_pet", "static_pet")]),
        (static_pet, register, [("static_pet", "static_pet")]),
        (select, register, [("template", "template")]),
        (select, notes, [("template", "template"), ("scores", "scores")]),
    ])
    return Route((register, "transforms"), None, {"PETTemplates": [str(t) for t in templates]}, (notes, "notes"))


def _petseg_route(workflow, static_pet, *, resolution, omp_nthreads) -> Route:
    """PET -> its own GM/WM segmentation -> template GM/WM priors (Choi & Lee 2018)."""
    segment = pe.Node(PETSegmentation(), name="segment_petseg", n_procs=omp_nthreads, mem_gb=1.0)
    register = pe.Node(SegmentationRegistration(resolution=resolution), name="register_petseg",
                       n_procs=omp_nthreads, mem_gb=1.0)
    workflow.connect([
        (static_pet, segment, [("static_pet", "static_pet")]),
        (segment, register, [("gm", "gm"), ("wm", "wm")]),
    ])
    return Route((register, "transforms"), None, {})


def _selection_notes(session_notes, template, scores):
    """Sidecar notes: the session's, plus which multiatlas template was chosen and why."""
    from pathlib import Path

    chosen = Path(template).name
    ranked = ", ".join(f"{score:.3f}" for score in scores)
    return list(session_notes) + [f"multiatlas: chose {chosen} (normalised cross-correlation per template, "
                                  f"in manifest order: {ranked})"]


def init_amyloid_wf(*, inputs, methods: tuple[str, ...], output_dir: str, template_resolution: float = 1.0,
                    omp_nthreads: int = 1, centiloid_equation: str | None = None, base_sidecar: dict | None = None,
                    synth_model=None, device: str = "auto", use_gpu: bool = False, pet_templates=None,
                    name: str = "amyloid_wf") -> pe.Workflow:
    """One PET session of the amyloid arm, for each requested method.

    Parameters
    ----------
    inputs : synthquant.bids.AmyloidInputs
        The checked session (files, sidecar, tracer, notes).
    methods
        Method labels to run (``mr`` needs a T1w).
    output_dir
        Root of the derivatives dataset.
    template_resolution
        Template voxel size (mm) for SyN.
    base_sidecar
        Fields every sidecar carries (software versions, configuration).
    synth_model : synthquant.models.ModelChoice, optional
        The checked ``mr_from_fbp`` model; needed by ``synthmr``.
    device, use_gpu
        Where synthesis runs; ``use_gpu`` puts the node in MultiProc's GPU slots.
    pet_templates : tuple(Path, list of Path), optional
        The normal-control template and the multiatlas set
        (:func:`synthquant.pettemplates.load_pet_templates`); needed by pettemplate and multiatlas.

    Outputs (written by the ``ds_*`` sinks)
    ------------------------------------------
    ``pet/…_desc-static_pet.nii.gz``, and per method ``…_space-MNI152NLin2009aSym_desc-<method>_{pet,suvr}.nii.gz``,
    ``…_seg-AAL2_desc-<method>_suvr.tsv`` and ``anat/…_space-MNI152NLin2009aSym_desc-<method>_T1w.nii.gz``;
    for ``synthmr`` also the native pseudo-T1w ``anat/…_desc-synthmr_T1w.nii.gz``.
    """
    workflow = pe.Workflow(name=name)
    base_sidecar = dict(base_sidecar or {})
    entities = {"sub": inputs.subject, "ses": inputs.session, "trc": inputs.tracer}
    sources = [str(inputs.pet)] + ([str(inputs.t1w)] if inputs.t1w else [])

    inputnode = pe.Node(niu.IdentityInterface(fields=["pet", "t1w", "notes"]), name="inputnode")
    inputnode.inputs.pet = str(inputs.pet)
    inputnode.inputs.notes = list(inputs.notes)
    if inputs.t1w:
        inputnode.inputs.t1w = str(inputs.t1w)

    static_pet = pe.Node(StaticPET(sidecar=inputs.pet_sidecar, tracer=inputs.tracer), name="static_pet",
                         n_procs=omp_nthreads, mem_gb=1.0)
    static_files = pe.Node(niu.Merge(2), name="static_files", run_without_submitting=True)
    ds_static = pe.Node(DerivativesSink(output_dir=output_dir, notes=list(inputs.notes), specs=[
        {"datatype": "pet", "suffix": "pet", "extension": ".nii.gz", "entities": {**entities, "desc": "static"},
         "sidecar": {**base_sidecar, "Sources": [str(inputs.pet)], "Units": inputs.pet_sidecar.get("Units", "n/a"),
                     "Description": "Static PET: realigned, duration-weighted average of the static window"}},
        {"datatype": "pet", "suffix": "motion", "extension": ".tsv", "entities": entities,
         "sidecar": {"displacement_mm": {"Description": "Mean displacement of a 50 mm sphere, frame vs reference"}}},
    ]), name="ds_static", run_without_submitting=True)
    workflow.connect([
        (inputnode, static_pet, [("pet", "pet")]),
        (static_pet, static_files, [("static_pet", "in1"), ("motion_tsv", "in2")]),
        (static_files, ds_static, [("out", "in_files")]),
        (static_pet, ds_static, [(("note", _as_list), "notes")]),
    ])

    # The report gathers every method's map, T1w, table and metadata (one Merge input per method).
    n = len(methods)
    report_inputs = {field: pe.Node(niu.Merge(n), name=f"report_{field}", run_without_submitting=True)
                     for field in ("suvr_maps", "t1w_templates", "suvr_tables", "metadata")}
    report = pe.Node(AmyloidReport(subject_key=inputs.key, site=inputs.site, tracer=inputs.tracer,
                                   methods=list(methods), notes=list(inputs.notes)), name="report", mem_gb=0.5)
    report_files = pe.Node(niu.Merge(2), name="report_files", run_without_submitting=True)
    # The same names, in the same order, as render_amyloid_report writes them.
    figures = [f"{inputs.key}_desc-{m}_suvr.png" for m in methods] + (
        [t1w_pair_figure_name(inputs.key)] if {"mr", "synthmr"} <= set(methods) else []) + [
        f"{inputs.key}_desc-regions_suvr.png"]
    ds_report = pe.Node(DerivativesSink(output_dir=output_dir, specs=[{"path": f"{inputs.key}.html"}] + [
        {"path": f"sub-{inputs.subject}/figures/{name}"} for name in figures]), name="ds_report",
        run_without_submitting=True)
    workflow.connect([
        (report_inputs["suvr_maps"], report, [("out", "suvr_maps")]),
        (report_inputs["t1w_templates"], report, [("out", "t1w_templates")]),
        (report_inputs["suvr_tables"], report, [("out", "suvr_tables")]),
        (report_inputs["metadata"], report, [("out", "metadata")]),
        (report, report_files, [("html", "in1"), ("figures", "in2")]),
        (report_files, ds_report, [("out", "in_files")]),
    ])

    for index, method in enumerate(methods, start=1):
        # -- how the PET reaches template space: one route per method ---------------------------
        if method == "mr":
            route = _mr_route(workflow, inputnode, static_pet, template_resolution=template_resolution,
                              omp_nthreads=omp_nthreads)
        elif method == "synthmr":
            if synth_model is None:
                raise ValueError("method synthmr needs a checked model (synthquant.models.resolve_model)")
            route = _synthmr_route(workflow, static_pet, model=synth_model, device=device, use_gpu=use_gpu,
                                   template_resolution=template_resolution, omp_nthreads=omp_nthreads,
                                   output_dir=output_dir, entities=entities,
                                   sidecar={**base_sidecar, **synth_model.provenance(),
                                            "Sources": [str(inputs.pet)]},
                                   session_notes=list(inputs.notes))
        elif method in ("pettemplate", "multiatlas"):
            if pet_templates is None:
                raise ValueError(f"method {method} needs PET templates (synthquant.pettemplates.load_pet_templates)")
            resolution = max(template_resolution, PET_ONLY_MIN_RESOLUTION)
            route = (_pettemplate_route(workflow, static_pet, template=pet_templates[0], resolution=resolution,
                                        omp_nthreads=omp_nthreads) if method == "pettemplate" else
                     _multiatlas_route(workflow, static_pet, templates=pet_templates[1], resolution=resolution,
                                       omp_nthreads=omp_nthreads, session_notes=list(inputs.notes)))
        elif method == "petseg":
            route = _petseg_route(workflow, static_pet, resolution=max(template_resolution, PET_ONLY_MIN_RESOLUTION),
                                  omp_nthreads=omp_nthreads)
        else:
            raise ValueError(f"unknown method {method!r}")
        transforms, t1w_template = route.transforms, route.t1w_template
        method_sidecar = dict(route.sidecar)

        # -- shared by every method: resample, quantify, write -----------------------------------
        pet_to_template = pe.Node(ToTemplate(), name=f"pet_to_template_{method}", mem_gb=1.0)
        quantify = pe.Node(QuantifySUVR(tracer=inputs.tracer, centiloid_equation=centiloid_equation or ""),
                           name=f"quantify_{method}", mem_gb=1.0)
        has_t1w = t1w_template is not None
        method_files = pe.Node(niu.Merge(4 if has_t1w else 3), name=f"files_{method}", run_without_submitting=True)
        in_space = {**entities, "space": TEMPLATE_SPACE, "desc": method}
        sidecar = {**base_sidecar, "Method": method, "MethodDescription": METHOD_DESCRIPTIONS[method],
                   "Sources": sources, "TemplateResolution_mm": template_resolution,
                   "QuantificationResolution_mm": WORKING_RESOLUTION, **method_sidecar}
        ds_method = pe.Node(DerivativesSink(output_dir=output_dir, notes=list(inputs.notes), specs=[
            {"datatype": "pet", "suffix": "pet", "extension": ".nii.gz", "entities": in_space,
             "sidecar": {**sidecar, "Description": "Static PET in template space"}},
            {"datatype": "pet", "suffix": "suvr", "extension": ".nii.gz", "entities": in_space,
             "sidecar": {**sidecar, "Description": "SUVR map (PET / cerebellar-GM mean)"}},
            {"datatype": "pet", "suffix": "suvr", "extension": ".tsv", "entities": {**in_space, "seg": "AAL2"},
             "sidecar": {**sidecar, "Description": "Regional SUVR: composite, its four regions, every AAL2 label "
                                                   "∩ template GM; Centiloid on the composite row"}},
        ] + ([
            {"datatype": "anat", "suffix": "T1w", "extension": ".nii.gz",
             "entities": {k: v for k, v in in_space.items() if k != "trc"},
             "sidecar": {**sidecar, "Description": f"T1w ({method}) skull-stripped, in template space"}},
        ] if has_t1w else [])), name=f"ds_{method}", run_without_submitting=True)
        if not has_t1w:  # PET-only: the template's own T1 is the report's background
            from synthquant.atlases import template_t1w

            background = pe.Node(niu.IdentityInterface(fields=["t1w"]), name=f"background_{method}",
                                 run_without_submitting=True)
            background.inputs.t1w = str(template_t1w(WORKING_RESOLUTION))
            t1w_template = (background, "t1w")
        if route.notes is None:  # the session's notes only
            route = route._replace(notes=(inputnode, "notes"))
        if has_t1w:
            workflow.connect([(t1w_template[0], method_files, [(t1w_template[1], "in4")])])
        workflow.connect([
            (static_pet, pet_to_template, [("static_pet", "in_file")]),
            (transforms[0], pet_to_template, [(transforms[1], "transforms")]),
            (pet_to_template, quantify, [("out_file", "pet_template")]),
            (pet_to_template, method_files, [("out_file", "in1")]),
            (quantify, method_files, [("suvr_map", "in2"), ("suvr_table", "in3")]),
            (method_files, ds_method, [("out", "in_files")]),
            (route.notes[0], ds_method, [(route.notes[1], "notes")]),
            (quantify, ds_method, [("metadata", "metadata")]),
            (quantify, report_inputs["suvr_maps"], [("suvr_map", f"in{index}")]),
            (t1w_template[0], report_inputs["t1w_templates"], [(t1w_template[1], f"in{index}")]),
            (quantify, report_inputs["suvr_tables"], [("suvr_table", f"in{index}")]),
            (quantify, report_inputs["metadata"], [("metadata", f"in{index}")]),
        ])
    return workflow


def _as_list(value):
    return [value]
