"""The participant-level graph: one ``sub_<label>_wf`` per PET session."""

from __future__ import annotations

from nipype.pipeline import engine as pe

from synthquant.config import RunConfig
from synthquant.workflows.amyloid import init_amyloid_wf


def session_wf_name(inputs) -> str:
    """``sub_01_wf`` or ``sub_01_ses_1_wf``: the graph name of one session."""
    return f"sub_{inputs.subject}" + (f"_ses_{inputs.session}" if inputs.session else "") + "_wf"


def methods_for(inputs, config: RunConfig) -> tuple[tuple[str, ...], list[str]]:
    """The methods to run on one session, and warnings for those that cannot run.

    Default (DESIGN): synthmr, plus mr where a T1w exists.
    """
    requested = config.methods or ("mr", "synthmr")
    warnings, methods = [], []
    for method in requested:
        if method == "mr" and inputs.t1w is None:
            if config.methods:  # asked for explicitly; by default mr simply needs a T1w
                warnings.append(f"{inputs.key}: method 'mr' skipped: no T1w in the dataset for this session")
        else:
            methods.append(method)
    return tuple(methods), warnings


def init_participant_wf(config: RunConfig, sessions: list, base_sidecar: dict, *, synth_model=None,
                        synth_device: str = "cpu", pet_templates=None, myelin_sessions: list = (),
                        dvr_model=None, hc_norms: dict | None = None,
                        name: str = "synthquant_wf") -> tuple[pe.Workflow, dict, list]:
    """Build the graph for every runnable session of both arms.

    ``synth_model`` is the checked ``mr_from_fbp`` model (``synthquant.models``) and
    ``synth_device`` the device already chosen for it (``cpu`` or ``cuda``); ``pet_templates``
    the checked (normal-control, multiatlas) templates. ``myelin_sessions`` are
    :class:`synthquant.bids.MyelinInputs`, run with the checked ``dvr_model`` (on the same
    device) and the HC WM norms ``hc_norms`` (``{source: json}``, possibly empty).
    Returns the workflow, ``{wf_name: session key}`` and warnings (methods skipped).
    """
    workflow = pe.Workflow(name=name, base_dir=str(config.work_dir))
    names, warnings = {}, []
    for inputs in sessions:
        methods, method_warnings = methods_for(inputs, config)
        warnings += method_warnings
        if not methods:
            warnings.append(f"{inputs.key}: no method can run; session skipped")
            continue
        name = session_wf_name(inputs)
        sub_wf = init_amyloid_wf(inputs=inputs, methods=methods, output_dir=str(config.output_dir),
                                 template_resolution=config.template_resolution, omp_nthreads=config.omp_nthreads,
                                 centiloid_equation=config.centiloid_equation, synth_model=synth_model,
                                 device=synth_device, use_gpu=synth_device == "cuda", pet_templates=pet_templates,
                                 base_sidecar={**base_sidecar, "Site": inputs.site}, name=name)
        workflow.add_nodes([sub_wf])
        names[name] = inputs.key
    for inputs in myelin_sessions:
        from synthquant.workflows.myelin import init_myelin_wf

        name = session_wf_name(inputs).removesuffix("_wf") + "_myelin_wf"
        sub_wf = init_myelin_wf(inputs=inputs, output_dir=str(config.output_dir), dvr_model=dvr_model,
                                device=synth_device, use_gpu=synth_device == "cuda",
                                template_resolution=config.template_resolution, omp_nthreads=config.omp_nthreads,
                                hc_norms=hc_norms, k=config.demyelination_k,
                                base_sidecar={**base_sidecar, "Site": inputs.site}, name=name)
        workflow.add_nodes([sub_wf])
        names[name] = f"{inputs.key} (myelin)"
    return workflow, names, warnings
