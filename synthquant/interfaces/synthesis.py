"""Nipype interface for PET -> pseudo-T1w synthesis (a GPU node when a GPU is used)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits


class _SynthesizeMRInputSpec(BaseInterfaceInputSpec):
    pet = File(exists=True, mandatory=True, desc="static PET (native space)")
    model = traits.Str(mandatory=True, desc="model path without suffix (NAME.safetensors + NAME.json)")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True)
    # Nipype's MultiProc schedules a node whose use_gpu is True on its n_gpu_procs slots;
    # the caller sets it from the device chosen before the graph is built (NOTES).
    use_gpu = traits.Bool(False, usedefault=True, desc="run in a GPU slot")
    omp_nthreads = traits.Int(1, usedefault=True)
    batch_size = traits.Int(16, usedefault=True)


class _SynthesizeMROutputSpec(TraitedSpec):
    pseudo_t1w = File(exists=True, desc="pseudo-T1w on the PET's grid, with the PET's affine")
    model_sha256 = traits.Str()
    device = traits.Str(desc="the device that ran the model")
    notes = traits.List(traits.Str, desc="sidecar notes (e.g. a PET grid far from the model's)")


class SynthesizeMR(SimpleInterface):
    """Generate a pseudo-T1w from PET (:func:`synthquant.nets.inference.synthesize_mr`)."""

    input_spec = _SynthesizeMRInputSpec
    output_spec = _SynthesizeMROutputSpec

    def _run_interface(self, runtime):
        from synthquant.nets.inference import synthesize_mr

        result = synthesize_mr(self.inputs.pet, self.inputs.model, Path(runtime.cwd) / "pseudo_t1w.nii.gz",
                               device=self.inputs.device, batch_size=self.inputs.batch_size,
                               omp_nthreads=self.inputs.omp_nthreads)
        self._results.update({key: result[key] for key in ("pseudo_t1w", "model_sha256", "device", "notes")})
        return runtime
