"""The methods paragraph of a run (``sub-<label>/log/CITATION.md`` and the report's Methods), the
software versions it cites and the dataset the inputs came from.

Everything is read from what the run recorded (the sidecars' parameters, the ``Runs`` and
``DataSufficiency`` entries, the input dataset's ``dataset_description.json``): the paragraph
cannot describe another analysis than the one that produced the outputs.
"""

from __future__ import annotations

import html
import json
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tmstarget import __version__
from tmstarget.config import REFERENCES

#: Software whose version the report lists (the libraries that compute or read something).
SOFTWARE = ("tmstarget", "nipype", "nilearn", "nibabel", "numpy", "scipy", "pybids", "nitransforms",
            "templateflow", "scikit-image", "matplotlib")

FMRIPREP_REFERENCE = ("Esteban O, Markiewicz CJ, Blair RW, et al. fMRIPrep: a robust preprocessing pipeline "
                      "for functional MRI. Nat Methods. 2019;16(1):111-116. doi:10.1038/s41592-018-0235-4")
NIPYPE_REFERENCE = ("Gorgolewski K, Burns CD, Madison C, et al. Nipype: a flexible, lightweight and extensible "
                    "neuroimaging data processing framework in Python. Front Neuroinform. 2011;5:13. "
                    "doi:10.3389/fninf.2011.00013")


def software_versions():
    """Installed versions of the software in :data:`SOFTWARE` (``None`` when absent)."""
    versions = {}
    for name in SOFTWARE:
        try:
            versions[name] = __version__ if name == "tmstarget" else version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def input_dataset(path):
    """The BIDS dataset a file belongs to and what made it.

    Parameters
    ----------
    path : path
        Any file of the input dataset (e.g. a confounds table).

    Returns
    -------
    dict or None
        ``Root`` (pathlib.Path), ``Name`` and ``Version`` of the first ``GeneratedBy`` entry of its
        ``dataset_description.json`` (``PipelineDescription`` of older derivatives); ``None`` when
        no folder above ``path`` holds a ``dataset_description.json``.
    """
    for folder in Path(path).absolute().parents:
        description_file = folder / "dataset_description.json"
        if description_file.is_file():
            try:
                description = json.loads(description_file.read_text())
            except (OSError, ValueError):
                description = {}
            generated = (description.get("GeneratedBy") or [description.get("PipelineDescription") or {}])[0]
            return {"Root": folder, "Name": generated.get("Name"), "Version": generated.get("Version")}
    return None


def is_fmriprep(name):
    """Whether a ``GeneratedBy`` name is fMRIPrep (also its variants, e.g. 'fMRIPrep-LTS')."""
    return bool(name) and name.lower().startswith("fmriprep")


def collect_references(node, found):
    """Every reference string under the keys ``Source``/``References`` of a (nested) sidecar dict."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("Source", "References"):
                for text in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
                    if isinstance(text, str) and "doi:" in text and text not in found:
                        found.append(text)
            else:
                collect_references(value, found)
    elif isinstance(node, list):
        for value in node:
            collect_references(value, found)
    return found


def format_mni_point(values):
    """``(6, 16, -10)``: a point as the parameters give it, without trailing zeros."""
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def retained_data(runs, targets_sidecar):
    """Volumes, retained volumes and retained minutes of the used runs.

    The retained totals are those the run recorded (``DataSufficiency`` of the targets sidecar);
    the per-run ``Runs`` list is summed only for an older sidecar without that entry.
    """
    used = [r for r in runs if r.get("Used", True)]
    sufficiency = targets_sidecar.get("DataSufficiency") or {}
    volumes = sum(r["Volumes"] for r in used)
    if "TotalRetainedVolumes" in sufficiency and "TotalRetainedTime_min" in sufficiency:
        return volumes, sufficiency["TotalRetainedVolumes"], sufficiency["TotalRetainedTime_min"]
    return volumes, sum(r["RetainedVolumes"] for r in used), sum(r["RetainedTime_s"] for r in used) / 60


def boilerplate(parameters, runs, targets_sidecar, space, versions, source_version=None, source_name=None):
    """The methods paragraph of this run, in Markdown, with numbered references.

    Parameters
    ----------
    parameters : dict
        ``Options.parameters()`` of the run (as written into the sidecars).
    runs : list of dict
        The ``Runs`` list of the connectivity map's sidecar.
    targets_sidecar : dict
        The targets table's sidecar (retained data, scalp-based methods, reliability when present).
    space : str
    versions : dict
        :func:`software_versions`.
    source_version, source_name : str or None
        What made the input derivatives (``GeneratedBy`` of their ``dataset_description.json``).
        Without a name the inputs are taken to be fMRIPrep's.

    Returns
    -------
    str
    """
    references = []

    def cite(*texts):
        numbers = []
        for text in texts:
            if text not in references:
                references.append(text)
            numbers.append(references.index(text) + 1)
        return "[" + ", ".join(str(n) for n in numbers) + "]"

    denoising, seed, region = parameters["Denoising"], parameters["Seed"], parameters["SearchRegion"]
    selection = parameters["TargetSelection"]
    used = [r for r in runs if r.get("Used", True)]
    t_rs = sorted({r["RepetitionTime"] for r in used})
    volumes, retained, minutes = retained_data(runs, targets_sidecar)
    version_text = f" {source_version}" if source_version else ""
    if source_name is None or is_fmriprep(source_name):
        source = f"fMRIPrep{version_text} {cite(FMRIPREP_REFERENCE)}"
    else:
        source = f"derivatives in fMRIPrep's layout made by {source_name}{version_text}"
    text = [
        f"Personalized TMS targets were computed with tmstarget {versions.get('tmstarget')}, which is "
        f"based on Nipype {versions.get('nipype')} {cite(NIPYPE_REFERENCE)}, "
        f"nilearn {versions.get('nilearn')} and nibabel {versions.get('nibabel')}, from the outputs of "
        f"{source}. "
        f"{len(used)} resting-state BOLD run(s) in {space} (repetition time {', '.join(f'{t:g}' for t in t_rs)} s; "
        f"{volumes} volumes, of which {retained} ({minutes:.1f} min) were retained) entered the analysis"
        + (f"; {len(runs) - len(used)} run(s) were excluded for keeping less than "
           f"{denoising['MinimumRetainedTime_s']:g} s of data" if len(runs) > len(used) else "") + ".",
        f"Each run was smoothed with a Gaussian kernel of {denoising['SmoothingFWHM_mm']:g} mm FWHM and "
        "masked to the brain; non-steady-state volumes were discarded"
        + (f" and volumes with a framewise displacement above {denoising['FramewiseDisplacementThreshold_mm']:g} mm "
           f"were censored, with segments of fewer than 5 retained volumes {cite(REFERENCES['Power2012'])}"
           if denoising["FramewiseDisplacementThreshold_mm"] is not None else "")
        + f". Confound regression (strategy '{denoising['Strategy']}': {denoising['Description']}) "
        + (cite(*denoising["References"]) + " " if denoising["References"] else "")
        + f"and a Butterworth band-pass filter ({denoising['BandPass_Hz'][0]:g}-{denoising['BandPass_Hz'][1]:g} Hz), "
        f"applied to data and confounds alike {cite(REFERENCES['Lindquist2019'])}, were performed in one step "
        "with nilearn's signal.clean, the regression being fit on the retained volumes only.",
    ]
    if seed["Image"]:
        seed_text = f"the {seed['Name']} seed was the (weighted) mean time series of the image {Path(seed['Image']).name}"
    else:
        seed_text = (f"the {seed['Name']} seed time series was the mean of a {seed['Radius_mm']:g} mm sphere "
                     f"centred at MNI {format_mni_point(seed['CenterMNI_mm'])} mm")
    if region["Image"]:
        region_text = f"the search region given as the image {Path(region['Image']).name}"
    else:
        region_text = ("the union of " + f"{region['Radius_mm']:g} mm spheres at " + "; ".join(
            f"{name} {format_mni_point(xyz)}" for name, xyz in region["SpheresMNI_mm"].items()) + " (MNI mm)")
    text.append(
        f"In each run {seed_text} {cite(*seed['References'])}; its Pearson correlation with every brain "
        "voxel was converted to Fisher z, and the runs' maps were averaged with weights equal to their "
        f"retained volumes. The target was selected within {region_text}, restricted to voxels of "
        f"grey-matter probability at least {region['GreyMatterProbabilityThreshold']:g} "
        f"{cite(*region['References'])}, as {selection['Description']} {cite(*selection['References'])}."
    )
    scalp = targets_sidecar.get("ScalpBasedTargets")
    if scalp:
        text.append(
            "The target was projected to the nearest point of a scalp surface reconstructed from the "
            "participant's T1w, where the coil pose was defined (handle "
            f"{parameters['Coil']['HandleAngleFromMidline_deg']:g} degrees from the midline, posterior "
            "and lateral). For comparison, the scalp-based targets were constructed on the same head: the "
            "10-20 F3 position, Beam F3 from the head measurements, and the 5 cm rule; a depth-adjusted "
            f"dose was computed {cite(*collect_references(scalp, []))}.")
    reliability = targets_sidecar.get("Reliability")
    if isinstance(reliability, dict) and reliability.get("Grade") is not None:
        text.append(f"The reliability of the target was graded '{reliability['Grade']}'"
                    + (f" ({reliability['GradeReason']})" if reliability.get("GradeReason") else "") + ".")
    body = "\n\n".join(text)
    refs = "\n".join(f"{i}. {ref}" for i, ref in enumerate(references, start=1))
    return (f"{body}\n\nThis text was generated by tmstarget from the parameters of this run; it may be "
            f"copied into a manuscript unchanged (CC0).\n\n### References\n\n{refs}\n")


def markdown_to_html(text):
    """The few Markdown constructs of :func:`boilerplate` (paragraphs, a heading, a numbered list)."""
    blocks = []
    for block in text.strip().split("\n\n"):
        if block.startswith("### "):
            blocks.append(f"<h4>{html.escape(block[4:])}</h4>")
        elif re.match(r"^\d+\. ", block):
            items = [re.sub(r"^\d+\. ", "", line) for line in block.splitlines()]
            blocks.append("<ol class='refs'>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ol>")
        else:
            blocks.append(f"<p>{html.escape(block)}</p>")
    return "\n".join(blocks)
