"""Quality warnings: the graph's own checks, and the collection of every step's warnings.

The warning convention of tmstarget: a step that can warn returns its warnings from its pure
function as one-line strings; its interface writes them into its JSON output under the key
``QualityWarnings``, or, without a JSON output, as a ``warnings_file`` (a JSON list of strings).
:class:`CollectWarnings` gathers them for the participant (the graph lists its sources in
:data:`tmstarget.workflows.base.WARNING_SOURCES`), so that the derivatives, the console and the
report all show the same list.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

#: Share of a run's volumes that must remain after censoring and non-steady-state removal;
#: below it the run's connectivity rests on a fraction of the acquisition (and on the volumes
#: between motion bursts), which a reviewer must look at (censoring: Power et al. 2012).
MIN_RETAINED_FRACTION = 0.5


def quality_warnings(runs, connectivity_z=None, reliability=None):
    """Warnings about the data and the target that do not stop the computation.

    Parameters
    ----------
    runs : list of dict
        The runs' denoising summaries (``BoldFile``, ``Volumes``, ``RetainedVolumes``,
        ``DegreesOfFreedom``, ``Used``), as :class:`tmstarget.workflows.combine.CombineRuns`
        writes them. Dropped runs are warned about by that step itself, and not checked here.
    connectivity_z : float or None
        Fisher z of the connectivity target.
    reliability : dict or None
        :func:`tmstarget.workflows.reliability.target_reliability`'s summary.

    Returns
    -------
    list of str
        One line each.
    """
    warnings = []
    for run in runs:
        if not run.get("Used", True):  # not part of the target: CombineRuns says it was dropped
            continue
        name = Path(str(run["BoldFile"])).name
        if run["RetainedVolumes"] < MIN_RETAINED_FRACTION * run["Volumes"]:
            warnings.append(f"{name}: only {run['RetainedVolumes']} of {run['Volumes']} volumes retained "
                            f"(less than {MIN_RETAINED_FRACTION:.0%}) after censoring")
        if run.get("DegreesOfFreedom", 1) <= 0:
            warnings.append(f"{name}: no degrees of freedom left after filtering and confound regression")
    if connectivity_z is not None and not connectivity_z < 0:
        warnings.append(f"the connectivity target is not anticorrelated with the seed (Fisher z "
                        f"{connectivity_z:.2f}): the map may be dominated by noise")
    if reliability and reliability.get("Grade") == "low":
        warnings.append(f"low target reliability: {reliability['GradeReason']}")
    return warnings


def read_warnings(path):
    """The warnings a step wrote: a JSON list of strings, or a JSON object's ``QualityWarnings``."""
    data = json.loads(Path(path).read_text())
    found = data.get("QualityWarnings", []) if isinstance(data, dict) else data
    if not isinstance(found, list) or not all(isinstance(w, str) for w in found):
        raise ValueError(f"{path}: QualityWarnings must be a list of strings")
    return found


def collect_warnings(files, notes=()):
    """``notes`` then the warnings of each file, in order, each once (one line each)."""
    collected = []
    for warning in [*notes, *(w for path in files for w in read_warnings(path))]:
        line = " ".join(warning.split())
        if line and line not in collected:
            collected.append(line)
    return collected


def write_warnings(path, warnings):
    """Write a ``warnings_file`` (a JSON list of strings); return its path as a string."""
    Path(path).write_text(json.dumps(list(warnings), indent=2) + "\n")
    return str(path)


class _QualityChecksInputSpec(BaseInterfaceInputSpec):
    runs_file = File(exists=True, mandatory=True, desc="JSON of the runs (CombineRuns)")
    targets_file = File(exists=True, mandatory=True, desc="TSV with the row 'connectivity'")
    reliability_file = File(exists=True, desc="JSON of TargetReliability")


class _WarningsOutputSpec(TraitedSpec):
    warnings_file = File(exists=True, desc="JSON list of one-line warnings")


class QualityChecks(SimpleInterface):
    """The checks of :func:`quality_warnings` on a participant's runs, target and reliability."""

    input_spec = _QualityChecksInputSpec
    output_spec = _WarningsOutputSpec

    def _run_interface(self, runtime):
        runs = json.loads(Path(self.inputs.runs_file).read_text())
        table = pd.read_csv(self.inputs.targets_file, sep="\t").set_index("name")
        z = float(table.loc["connectivity", "seed_correlation_z"]) if "connectivity" in table.index else None
        reliability = (json.loads(Path(self.inputs.reliability_file).read_text())
                       if self.inputs.reliability_file else None)
        self._results["warnings_file"] = write_warnings(Path(runtime.cwd) / "warnings.json",
                                                        quality_warnings(runs, z, reliability))
        return runtime


class _CollectInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), desc="warnings files or JSON outputs of the steps")
    notes = traits.List(traits.Str, desc="warnings known when the graph was built")


class _CollectOutputSpec(TraitedSpec):
    quality_warnings = traits.List(traits.Str, desc="every warning, once, in the order of the steps")
    warnings_file = File(exists=True, desc="the same as a JSON list")


class CollectWarnings(SimpleInterface):
    """Gather the warnings of every step of a participant (:func:`collect_warnings`)."""

    input_spec = _CollectInputSpec
    output_spec = _CollectOutputSpec

    def _run_interface(self, runtime):
        collected = collect_warnings(self.inputs.in_files or [], self.inputs.notes or [])
        self._results["quality_warnings"] = collected
        self._results["warnings_file"] = write_warnings(Path(runtime.cwd) / "warnings.json", collected)
        return runtime
