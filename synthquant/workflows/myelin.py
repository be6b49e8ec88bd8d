"""The myelin arm: MTR + DTI -> predicted [11C]PIB DVR -> lesion / NAWM / WM means and
demyelinated lesion voxels (Wei et al., Med Image Anal 2019; Bodini et al., Ann Neurol 2016).

One session's graph::

    MTR (map or MT pair) ---------------------------rigid--> T1w
    DWI --tensor fit--> FA RD AD, mean b0 ----------rigid--> T1w
    T1w --skull-strip, N4, SyN--> MNI;  Atropos with lesion filling --> WM, NAWM, lesion
    myelin grid (the MTR's axes, 2 mm, around the brain) <-- every map and mask, resampled once
    --> SynthesizeDVR (Sketcher -> Refiner) --> predicted DVR --> ROI means, template maps,
        demyelinated voxels (HC WM norm, mean - k SD)
    dynamic PIB PET, where present --rigid--> T1w; Logan reference DVR (cerebellar GM)
        --> the same grid and the same quantification (source "pib": the truth to compare with)
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from synthquant.atlases import TEMPLATE_SPACE
from synthquant.interfaces import DerivativesSink, RigidCoregistration, SynthesizeDVR
from synthquant.interfaces.myelin import (
    DTIMaps,
    MapsOnGrid,
    MTRMap,
    MyelinGrid,
    MyelinReport,
    MyelinTable,
    OntoGrid,
    PETMean,
    PIBDVR,
    QuantifyDVR,
    T1wMasks,
)
from synthquant.reports.myelin import myelin_figure_names
from synthquant.workflows.normalize import init_normalize_wf

SOURCE_DESCRIPTIONS = {
    "synth": "[11C]PIB DVR predicted from MTR, FA, RD and AD by the Sketcher-Refiner GANs (Wei et al. 2019)",
    "pib": "[11C]PIB DVR of the dynamic PET by the Logan reference plot (cerebellar grey matter; Logan 1996)",
}


def _merge_notes(session, masks, synth, quantified):
    """The session's sidecar notes, each once, in order (a Nipype Function node: names matter)."""
    notes = []
    for values in (session, masks, synth, quantified):
        for note in values or []:
            if note not in notes:
                notes.append(note)
    return notes


def init_myelin_wf(*, inputs, output_dir: str, dvr_model, device: str = "cpu", use_gpu: bool = False,
                   template_resolution: float = 1.0, omp_nthreads: int = 1, hc_norms: dict | None = None,
                   k: float = 2.0, voxel_mm: float = 2.0, base_sidecar: dict | None = None,
                   name: str = "myelin_wf") -> pe.Workflow:
    """Build one session's myelin graph.

    Parameters
    ----------
    inputs
        A :class:`synthquant.bids.MyelinInputs`.
    dvr_model
        The checked ``dvr_from_mri`` model (:class:`synthquant.models.ModelChoice`).
    hc_norms
        ``{"synth": json, "pib": json}``: the HC WM norm to compare each source with (the same
        source where the group level built it); None or empty: no demyelination yet.
    k
        Demyelinated below the norm's mean - k SD (Bodini 2016).
    """
    hc_norms = hc_norms or {}
    base_sidecar = dict(base_sidecar or {})
    workflow = pe.Workflow(name=name)
    entities = {"sub": inputs.subject, "ses": inputs.session}
    sources = [str(p) for p in (inputs.t1w, inputs.mtr or inputs.mt_on, inputs.mt_off, inputs.dwi, inputs.lesion)
               if p is not None]
    is_patient = inputs.lesion is not None

    # -- MR maps, T1w anatomy -------------------------------------------------------------------
    mtr = pe.Node(MTRMap(), name="mtr_map", mem_gb=0.5)
    for field in ("mtr", "mt_on", "mt_off"):
        if getattr(inputs, field) is not None:
            setattr(mtr.inputs, field, str(getattr(inputs, field)))
    dti = pe.Node(DTIMaps(dwi=str(inputs.dwi), bval=str(inputs.bval), bvec=str(inputs.bvec)), name="dti_maps",
                  mem_gb=2.0)
    normalize_wf = init_normalize_wf(resolution=template_resolution, omp_nthreads=omp_nthreads,
                                     name="normalize_t1w_wf")
    normalize_wf.inputs.inputnode.t1w = str(inputs.t1w)
    masks = pe.Node(T1wMasks(), name="t1w_masks", n_procs=omp_nthreads, mem_gb=1.0)
    if inputs.lesion is not None:
        masks.inputs.lesion = str(inputs.lesion)
    coreg_mtr = pe.Node(RigidCoregistration(fixed=str(inputs.t1w)), name="coreg_mtr", n_procs=omp_nthreads,
                        mem_gb=1.0)
    coreg_dwi = pe.Node(RigidCoregistration(fixed=str(inputs.t1w)), name="coreg_dwi", n_procs=omp_nthreads,
                        mem_gb=1.0)
    grid = pe.Node(MyelinGrid(voxel_mm=voxel_mm), name="myelin_grid", mem_gb=0.5)
    on_grid = pe.Node(MapsOnGrid(), name="maps_on_grid", mem_gb=1.0)
    workflow.connect([
        (normalize_wf, masks, [("outputnode.t1w_brain", "t1w_brain"), ("outputnode.brain_mask", "brain_mask"),
                               ("outputnode.inverse_transforms", "inverse_transforms"),
                               ("outputnode.inverse_invert", "inverse_invert")]),
        (mtr, coreg_mtr, [("mtr", "moving")]),
        (dti, coreg_dwi, [("b0", "moving")]),
        (mtr, grid, [("mtr", "reference")]),
        (normalize_wf, grid, [("outputnode.brain_mask", "brain_mask")]),
        (coreg_mtr, grid, [("transform", "reference_to_t1w")]),
        (grid, on_grid, [("grid", "grid")]),
        (coreg_mtr, on_grid, [("transform", "grid_to_t1w"), ("transform", "mtr_to_t1w")]),
        (mtr, on_grid, [("mtr", "mtr")]),
        (dti, on_grid, [("fa", "fa"), ("rd", "rd"), ("ad", "ad")]),
        (coreg_dwi, on_grid, [("transform", "dwi_to_t1w")]),
        (masks, on_grid, [("brain", "brain"), ("wm", "wm"), ("nawm", "nawm"), ("lesion", "lesion")]),
    ])

    # -- predicted DVR and its quantification -------------------------------------------------
    synthesize = pe.Node(SynthesizeDVR(model=str(dvr_model.stem), device=device, use_gpu=use_gpu,
                                       omp_nthreads=omp_nthreads, saliency=True), name="synthesize_dvr",
                         n_procs=1 if use_gpu else omp_nthreads, mem_gb=4.0)
    workflow.connect([(on_grid, synthesize, [("mtr", "mtr"), ("fa", "fa"), ("rd", "rd"), ("ad", "ad"),
                                             ("brain", "brain_mask")])])
    quantified = {"synth": _quantify(workflow, "synth", (synthesize, "dvr"), on_grid, coreg_mtr, normalize_wf,
                                     hc_norms.get("synth"), k, is_patient)}

    # -- true DVR from a dynamic PIB PET ------------------------------------------------------
    if inputs.pib is not None:
        sources_pib = [str(inputs.pib)]
        pet_mean = pe.Node(PETMean(pet=str(inputs.pib), sidecar=str(inputs.pib_sidecar)), name="pib_mean",
                           mem_gb=1.0)
        coreg_pib = pe.Node(RigidCoregistration(), name="coreg_pib", n_procs=omp_nthreads, mem_gb=1.0)
        logan = pe.Node(PIBDVR(pet=str(inputs.pib), sidecar=str(inputs.pib_sidecar)), name="pib_dvr", mem_gb=2.0)
        pib_on_grid = pe.Node(OntoGrid(), name="pib_dvr_on_grid", mem_gb=1.0)
        workflow.connect([
            (pet_mean, coreg_pib, [("mean_pet", "moving")]),
            (normalize_wf, coreg_pib, [("outputnode.t1w_brain", "fixed")]),
            (coreg_pib, logan, [("transform", "pet_to_t1w")]),
            (normalize_wf, logan, [("outputnode.inverse_transforms", "inverse_transforms"),
                                   ("outputnode.inverse_invert", "inverse_invert"),
                                   ("outputnode.brain_mask", "brain_mask")]),
            (logan, pib_on_grid, [("dvr", "in_file")]),
            (grid, pib_on_grid, [("grid", "grid")]),
            (coreg_mtr, pib_on_grid, [("transform", "grid_to_t1w")]),
            (coreg_pib, pib_on_grid, [("transform", "source_to_t1w")]),
        ])
        quantified["pib"] = _quantify(workflow, "pib", (pib_on_grid, "out_file"), on_grid, coreg_mtr, normalize_wf,
                                      hc_norms.get("pib"), k, is_patient)
    else:
        sources_pib = []

    # -- the subject's table --------------------------------------------------------------------
    order = list(quantified)
    rows = pe.Node(niu.Merge(len(order)), name="rows", run_without_submitting=True)
    table = pe.Node(MyelinTable(identity={"participant_id": inputs.subject, "session_id": inputs.session,
                                          "site": inputs.site, "group": inputs.group}, sources=order),
                    name="myelin_table", run_without_submitting=True)
    for index, source in enumerate(order, start=1):
        workflow.connect([(quantified[source], rows, [("rows", f"in{index}")])])
    workflow.connect([(rows, table, [("out", "rows")])])

    # -- derivatives ------------------------------------------------------------------------------
    session_notes = list(inputs.notes)
    grid_note = ("on the myelin grid: the MTR's axes, 2 mm voxels, around the brain (every map resampled once "
                 "through its rigid transform to the T1w)")
    sidecar = {**base_sidecar, "Site": inputs.site, "Group": inputs.group, "Sources": sources}
    model_sidecar = {**sidecar, **dvr_model.provenance()}
    in_template = {**entities, "space": TEMPLATE_SPACE}
    notes = pe.Node(niu.Function(input_names=["session", "masks", "synth", "quantified"], output_names=["notes"],
                                 function=_merge_notes), name="notes", run_without_submitting=True)
    notes.inputs.session = session_notes
    workflow.connect([(masks, notes, [("notes", "masks")]), (synthesize, notes, [("notes", "synth")]),
                      (quantified["synth"], notes, [("notes", "quantified")])])

    grid_files = pe.Node(niu.Merge(8), name="grid_files", run_without_submitting=True)
    for index, field in enumerate(("mtr", "fa", "rd", "ad", "brain", "wm", "nawm", "lesion"), start=1):
        workflow.connect([(on_grid, grid_files, [(field, f"in{index}")])])
    ds_inputs = pe.Node(DerivativesSink(output_dir=output_dir, specs=[
        {"datatype": "anat", "suffix": "MTRmap", "extension": ".nii.gz", "entities": {**entities, "desc": "myelin"},
         "sidecar": {**sidecar, "Description": f"MTR (percent), the model's first input, {grid_note}"}},
    ] + [
        {"datatype": "dwi", "suffix": measure, "extension": ".nii.gz", "entities": {**entities, "desc": "myelin"},
         "sidecar": {**sidecar, "Description": f"DTI {measure} (dipy tensor fit), a model input, {grid_note}"}}
        for measure in ("FA", "RD", "AD")
    ] + [
        {"datatype": "anat", "suffix": "mask", "extension": ".nii.gz",
         "entities": {**entities, "label": label, "desc": "myelin"},
         "sidecar": {**sidecar, "Description": f"{text}, {grid_note}"}}
        for label, text in (("brain", "Brain mask of the T1w"),
                            ("WM", "White matter (Atropos on the lesion-filled T1w) including lesions"),
                            ("NAWM", "Normal-appearing white matter: WM outside the lesions"),
                            ("lesion", "Lesion mask"))
    ]), name="ds_myelin_inputs", run_without_submitting=True)
    workflow.connect([(grid_files, ds_inputs, [("out", "in_files")]), (notes, ds_inputs, [("notes", "notes")])])

    for source, node in quantified.items():
        files = pe.Node(niu.Merge(2), name=f"dvr_files_{source}", run_without_submitting=True)
        origin = (synthesize, "dvr") if source == "synth" else (pib_on_grid, "out_file")
        source_sidecar = {**(model_sidecar if source == "synth" else {**sidecar, "Sources": sources_pib + sources}),
                          "Source": source, "SourceDescription": SOURCE_DESCRIPTIONS[source]}
        ds = pe.Node(DerivativesSink(output_dir=output_dir, specs=[
            {"datatype": "pet", "suffix": "dvr", "extension": ".nii.gz",
             "entities": {**entities, "trc": "PIB", "desc": source},
             "sidecar": {**source_sidecar, "Description": f"{SOURCE_DESCRIPTIONS[source]}, {grid_note}"}},
            {"datatype": "pet", "suffix": "dvr", "extension": ".nii.gz",
             "entities": {**in_template, "trc": "PIB", "desc": source},
             "sidecar": {**source_sidecar, "Description": f"{SOURCE_DESCRIPTIONS[source]}, in template space "
                                                          "(2 mm), through the T1w's normalisation"}},
        ]), name=f"ds_dvr_{source}", run_without_submitting=True)
        workflow.connect([(origin[0], files, [(origin[1], "in1")]), (node, files, [("dvr_template", "in2")]),
                          (files, ds, [("out", "in_files")]), (notes, ds, [("notes", "notes")])])
        if source == "pib":
            workflow.connect([(logan, ds, [("metadata", "metadata")])])
        if hc_norms.get(source) and is_patient:
            demyelinated = pe.Node(niu.Merge(2), name=f"demyelinated_files_{source}", run_without_submitting=True)
            ds_demyelinated = pe.Node(DerivativesSink(output_dir=output_dir, specs=[
                {"datatype": "anat", "suffix": "mask", "extension": ".nii.gz",
                 "entities": {**entities, "label": "demyelinated", "desc": source},
                 "sidecar": {**source_sidecar, "HCNorm": str(hc_norms[source]), "K": k,
                             "Description": f"Demyelinated lesion voxels: DVR ({source}) below the healthy-control "
                                            f"WM norm's mean - {k:g} SD (Bodini 2016), {grid_note}"}},
                {"datatype": "anat", "suffix": "mask", "extension": ".nii.gz",
                 "entities": {**in_template, "label": "demyelinated", "desc": source},
                 "sidecar": {**source_sidecar, "HCNorm": str(hc_norms[source]), "K": k,
                             "Description": f"Demyelinated lesion voxels ({source}) in template space (2 mm), "
                                            "where the comparison with the norm is made"}},
            ]), name=f"ds_demyelinated_{source}", run_without_submitting=True)
            workflow.connect([(node, demyelinated, [("demyelinated", "in1"), ("demyelinated_template", "in2")]),
                              (demyelinated, ds_demyelinated, [("out", "in_files")]),
                              (node, ds_demyelinated, [("notes", "notes")])])

    template_files = pe.Node(niu.Merge(2), name="template_masks", run_without_submitting=True)
    ds_template = pe.Node(DerivativesSink(output_dir=output_dir, specs=[
        {"datatype": "anat", "suffix": "probseg", "extension": ".nii.gz", "entities": {**in_template, "label": "WM"},
         "sidecar": {**sidecar, "Description": "WM fraction (lesions included) in template space (2 mm): the "
                                               "controls' WM builds the HC norm"}},
        {"datatype": "anat", "suffix": "probseg", "extension": ".nii.gz",
         "entities": {**in_template, "label": "lesion"},
         "sidecar": {**sidecar, "Description": "Lesion fraction in template space (2 mm); >= 0.5 is a lesion voxel"}},
    ]), name="ds_template_masks", run_without_submitting=True)
    ds_extra = pe.Node(DerivativesSink(output_dir=output_dir, specs=[
        {"datatype": "pet", "suffix": "myelinstats", "extension": ".tsv", "entities": {**entities, "trc": "PIB"},
         "sidecar": {**sidecar, "Description": "Mean DVR per ROI (lesion, NAWM, WM) and source; the rows of "
                                               "group/myelin_stats.tsv"}},
        {"datatype": "pet", "suffix": "saliency", "extension": ".nii.gz",
         "entities": {**entities, "trc": "PIB", "desc": "synth"},
         "sidecar": {**model_sidecar, "Description": "Visual-attention saliency |dLoss/dInput|, maximum over the MR "
                                                     f"channels (Wei 2019 eq. 7), {grid_note}"}},
    ]), name="ds_myelin_table", run_without_submitting=True)
    extra_files = pe.Node(niu.Merge(2), name="extra_files", run_without_submitting=True)
    workflow.connect([
        (quantified["synth"], template_files, [("wm_template", "in1"), ("lesion_template", "in2")]),
        (template_files, ds_template, [("out", "in_files")]),
        (table, extra_files, [("table", "in1")]),
        (synthesize, extra_files, [("saliency", "in2")]),
        (extra_files, ds_extra, [("out", "in_files")]),
        (notes, ds_extra, [("notes", "notes")]),
    ])

    # -- the session's report: OUTPUT/<key>_myelin.html (the amyloid page owns <key>.html) ----------
    demyelination = [source for source in quantified if hc_norms.get(source) and is_patient]
    report = pe.Node(MyelinReport(subject_key=inputs.key, site=inputs.site, group=inputs.group,
                                  provenance={**dvr_model.provenance(), "DemyelinationK": k,
                                              **{f"HCNorm ({s})": str(hc_norms[s]) for s in demyelination},
                                              "SoftwareVersions": base_sidecar.get("SoftwareVersions", {})},
                                  k=k), name="myelin_report", mem_gb=0.5)
    report_files = pe.Node(niu.Merge(2), name="myelin_report_files", run_without_submitting=True)
    figures = myelin_figure_names(inputs.key, demyelination=bool(demyelination))
    ds_report = pe.Node(DerivativesSink(output_dir=output_dir, specs=[{"path": f"{inputs.key}_myelin.html"}] + [
        {"path": f"sub-{inputs.subject}/figures/{name}"} for name in figures]), name="ds_myelin_report",
        run_without_submitting=True)
    workflow.connect([
        (on_grid, report, [("mtr", "mtr"), ("fa", "fa"), ("rd", "rd"), ("ad", "ad"), ("brain", "brain"),
                           ("lesion", "lesion")]),
        (synthesize, report, [("dvr", "synth_dvr"), ("saliency", "saliency")]),
        (table, report, [("table", "table")]),
        (notes, report, [("notes", "notes")]),
        (report, report_files, [("html", "in1"), ("figures", "in2")]),
        (report_files, ds_report, [("out", "in_files")]),
    ])
    if "pib" in quantified:
        workflow.connect([(pib_on_grid, report, [("out_file", "pib_dvr")])])
    for source in demyelination:
        workflow.connect([(quantified[source], report, [("demyelinated", f"demyelinated_{source}")])])
    return workflow


def _quantify(workflow, source, dvr, on_grid, coreg_mtr, normalize_wf, hc_norm, k, is_patient):
    node = pe.Node(QuantifyDVR(source=source, hc_norm=str(hc_norm or ""), k=k, lesion_mask_given=is_patient),
                   name=f"quantify_{source}", mem_gb=1.0)
    workflow.connect([
        (dvr[0], node, [(dvr[1], "dvr")]),
        (on_grid, node, [("lesion", "lesion"), ("nawm", "nawm"), ("wm", "wm")]),
        (coreg_mtr, node, [("transform", "grid_to_t1w")]),
        (normalize_wf, node, [("outputnode.transforms", "transforms"),
                              ("outputnode.inverse_transforms", "inverse_transforms"),
                              ("outputnode.inverse_invert", "inverse_invert")]),
    ])
    return node
