"""The one derivatives sink: BIDS names from entities, JSON sidecars, atomic writes."""

from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _SinkInputSpec(BaseInterfaceInputSpec):
    output_dir = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    in_files = InputMultiObject(File(exists=True), mandatory=True)
    specs = traits.List(traits.Dict, mandatory=True,
                        desc="per file: datatype, suffix, extension, entities, sidecar (dict); "
                             "or {'path': relative path} for files outside the BIDS tree (reports)")
    metadata = traits.Dict(usedefault=True, desc="fields merged into every sidecar")
    notes = traits.List(traits.Str, usedefault=True, desc="free-text notes added to every sidecar")


class _SinkOutputSpec(TraitedSpec):
    out_files = OutputMultiObject(File(exists=True))


class DerivativesSink(SimpleInterface):
    """Copy files into the derivatives tree under BIDS names, each with a JSON sidecar.

    It always runs (never answered from the cache), so deleted outputs are rewritten.
    """

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        from pathlib import Path

        from synthquant.bids import write_derivative, write_report_file

        if len(self.inputs.in_files) != len(self.inputs.specs):
            raise ValueError("DerivativesSink: one spec per file is required")
        written = []
        for in_file, spec in zip(self.inputs.in_files, self.inputs.specs):
            if "path" in spec:
                written.append(str(write_report_file(Path(in_file), Path(self.inputs.output_dir), spec["path"])))
                continue
            sidecar = {**spec.get("sidecar", {}), **self.inputs.metadata}
            if self.inputs.notes:
                sidecar["Notes"] = list(self.inputs.notes)
            written.append(str(write_derivative(Path(in_file), Path(self.inputs.output_dir), spec["entities"],
                                                spec["datatype"], spec["suffix"], sidecar,
                                                extension_check=spec.get("extension"))))
        self._results["out_files"] = written
        return runtime
