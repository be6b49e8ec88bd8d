"""Spatial normalisation of a (real or pseudo) T1w to MNI152 2009a symmetric."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from synthquant.interfaces import NormalizeToTemplate


def init_normalize_wf(*, resolution: float = 1.0, omp_nthreads: int = 1, name: str = "normalize_wf") -> pe.Workflow:
    """Skull-strip, bias-correct and SyN a T1w onto the template.

    Parameters
    ----------
    resolution
        Template voxel size (mm) used by SyN (1 mm for real data; coarser for tests).
    omp_nthreads
        ITK threads the node may use.

    Inputs
    ------
    t1w
        Whole-head T1w, real or pseudo.

    Outputs
    -------
    t1w_brain, brain_mask
        Skull-stripped, N4-corrected T1w and its mask, native space.
    t1w_template
        The T1w brain in template space.
    transforms
        Native -> template transforms, antsApplyTransforms order.
    inverse_transforms, inverse_invert
        Template -> native transforms and whether each is applied inverted.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["t1w_brain", "brain_mask", "t1w_template", "transforms",
                                                       "inverse_transforms", "inverse_invert"]),
                         name="outputnode")
    syn = pe.Node(NormalizeToTemplate(resolution=resolution), name="syn", n_procs=omp_nthreads, mem_gb=2.0)
    workflow.connect([
        (inputnode, syn, [("t1w", "t1w")]),
        (syn, outputnode, [("t1w_brain", "t1w_brain"), ("brain_mask", "brain_mask"),
                           ("t1w_template", "t1w_template"), ("transforms", "transforms"),
                           ("inverse_transforms", "inverse_transforms"), ("inverse_invert", "inverse_invert")]),
    ])
    return workflow
