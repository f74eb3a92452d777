"""Writing BIDS-Derivatives: every file goes to a temporary name beside its target and is renamed.

A crash therefore never leaves a half-written file under ``output_dir``; the previous complete
file stays until the new one replaces it in one ``os.replace``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import urllib.parse
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from tmstarget import __version__
from tmstarget.workflows.coil import pose_matrix
from tmstarget.workflows.efield_plan import COLUMN_DESCRIPTIONS as EFIELD_COLUMN_DESCRIPTIONS
from tmstarget.workflows.efield_plan import EFIELD_COLUMNS
from tmstarget.workflows.transforms import AXIS_COLUMNS

BIDS_VERSION = "1.9.0"

#: ``.bidsignore`` of the derivatives: what is not (yet) in the BIDS specification.
BIDSIGNORE = ("sub-*/log", "sub-*/tms", "*_boldmap.*", "*.html", "sub-*/figures", "group")

TARGET_COLUMNS = {
    "name": "Which target: 'connectivity' is the personalized, seed-anticorrelated site; "
    "'F3_1020', 'F3_beam' and '5cm' are the scalp-based comparators built on this head; "
    "'motor_hand' is the motor hot spot, the reference of the dose adjustment.",
    "x": "Cortical point x, world mm (RAS) of the space named in this sidecar.",
    "y": "Cortical point y, world mm (RAS).",
    "z": "Cortical point z, world mm (RAS).",
    "seed_correlation_z": "Fisher z (arctanh of Pearson r) of the seed connectivity at the target; "
    "negative means anticorrelated; n/a where the point lies outside the BOLD brain mask.",
    "cluster_size": "Voxels in the cluster the target was taken from (1 for the peak method).",
    "scalp_x": "Nearest scalp point to the target, x, world mm (RAS).",
    "scalp_y": "Nearest scalp point to the target, y, world mm (RAS).",
    "scalp_z": "Nearest scalp point to the target, z, world mm (RAS).",
    "scalp_distance_mm": "Distance from the scalp point to the target (mm).",
    "scalp_normal_angle_deg": "Angle between the scalp-to-target direction and the inward scalp "
    "normal (degrees).",
    "scalp_trusted": "Whether the row's scalp point can carry a plan (true/false): the head T1w "
    "is a whole head (not skull-stripped), the point is not on the border of the image where a "
    "cut head ends, its depth is plausible (8-40 mm), and for the comparators the fiducials or "
    "the motor reference they are built from are on the scalp. When false the row has no coil "
    "pose and no dose (n/a), a comparator row no values at all; QualityWarnings says why.",
    **{f"coil_{c}": f"Coil centre {c}, world mm (RAS): the scalp point." for c in "xyz"},
    **{f"coil_{axis}axis_{c}": f"Coil {name} ({c} component of a unit vector, RAS)"
       for axis, name in (("x", "left-right axis (y axis x z axis)"), ("y", "handle direction"),
                          ("z", "normal pointing into the head")) for c in "xyz"},
    "distance_to_connectivity_mm": "Distance from the row's cortical point to the connectivity target (mm).",
    "depth_adjustment_pct_mso": "Stokes et al. 2007: % of maximum stimulator output to add to the "
    "motor threshold: 2.8 x (scalp_distance_mm - scalp_distance_mm of motor_hand); n/a when the "
    "row's or the motor reference's scalp point is not trusted.",
    **EFIELD_COLUMN_DESCRIPTIONS,
}
#: Columns written with 3 decimals: the fields (about 1 V/m at 1 A/us).
EFIELD_V_PER_M_COLUMNS = tuple(c for c in EFIELD_COLUMNS if c.endswith("_v_per_m"))


def atomic_write(path, write, once=False):
    """Create ``path`` through ``write(tmp_path)`` then one atomic rename; nothing half-written remains.

    Parameters
    ----------
    path : path-like
        The file to create or replace.
    write : callable
        ``write(tmp_path)`` writes the whole content to ``tmp_path``.
    once : bool
        Write-once: keep ``path`` if it exists. The complete temporary file is hard-linked to
        ``path``, which fails when another process got there first, so concurrent writers (one SLURM
        task per participant sharing ``output_dir``) leave exactly one complete file and never
        replace it; ``os.link`` is atomic on local file systems and NFS. On a file system without
        hard links the rename is used (still atomic; concurrent writers write the same content).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if once and path.exists():
        return path
    # Keep the real extension last so writers that look at it (nibabel: .nii.gz) behave.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix="".join(path.suffixes))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        if once:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            except OSError:  # no hard links here (some FUSE or SMB mounts)
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_text(path, text, once=False):
    """Atomically write a text file (``once``: only if it does not exist, see `atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text), once=once)


def write_json(path, data, once=False):
    """Atomically write a JSON file (sorted keys, so identical content gives identical bytes)."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", once=once)


def source_link(source_dir):
    """The name that links the input dataset in ``DatasetLinks`` and in its BIDS URIs
    (``bids:<name>:sub-01/...``): what made it, as its ``dataset_description.json`` says
    (``GeneratedBy[0].Name``, e.g. ``fmriprep``), so the outputs never claim fMRIPrep made an input
    it did not; ``input`` when the input names no maker."""
    try:
        data = json.loads((Path(source_dir) / "dataset_description.json").read_text())
        name = str(data["GeneratedBy"][0]["Name"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return "input"
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "input"


def write_dataset_description(output_dir, source_dir, source_version=None):
    """``dataset_description.json`` and ``.bidsignore`` of the derivatives, each written once.

    Participants run concurrently (a SLURM array) share ``output_dir``: each file at its root is
    created write-once (`atomic_write` with ``once=True``), so the first complete file stays and no
    reader ever sees a partial one. Both are checked on every call, so a run that stopped between
    the two is completed by the next.
    """
    path = Path(output_dir) / "dataset_description.json"
    # No absolute path of this machine: the fMRIPrep dataset is linked by its path relative to
    # the output folder (BIDS DatasetLinks values are URIs; a relative reference resolves against
    # this dataset, so the link survives moving both together, e.g. derivatives/fmriprep beside
    # derivatives/tmstarget), and SourceDatasets names it with the BIDS URI of its root.
    relative = os.path.relpath(Path(source_dir).resolve(), Path(output_dir).resolve())
    link = source_link(source_dir)
    source_uri = f"bids:{link}:"
    description = {
        "Name": "tmstarget: connectivity-guided TMS targets",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "tmstarget", "Version": __version__,
                         "CodeURL": "https://github.com/tmstarget/tmstarget"}],
        "SourceDatasets": [{"URL": source_uri, **({"Version": source_version} if source_version else {})}],
        "DatasetLinks": {link: urllib.parse.quote(Path(relative).as_posix())},
    }
    write_json(path, description, once=True)
    # Not (yet) in the BIDS specification: the tms/ datatype (NIBS BEP), the run log, and the
    # stat-<label>_boldmap names of the statistical-derivatives BEP (as XCP-D writes them); the
    # reports (sub-<label>.html, their figures, the group level's group.html and group/ tables).
    write_text(Path(output_dir) / ".bidsignore", "".join(f"{line}\n" for line in BIDSIGNORE), once=True)
    return path


def source_relative(path, source_dir):
    """The path of an input file inside the fMRIPrep folder, as a POSIX path relative to it.

    Folders on the way are resolved (the source folder may be reached through a link), the file
    itself is not: in a DataLad/git-annex dataset each file is a link to an object named by its
    checksum, outside the dataset's folders, and the BIDS name is the link's.
    """
    path = Path(path)
    return (path.parent.resolve() / path.name).relative_to(Path(source_dir).resolve()).as_posix()


def sidecar(path):
    """The JSON sidecar of a derivative file (``x.nii.gz`` or ``x.tsv`` -> ``x.json``)."""
    path = Path(path)
    return path.with_name(path.name.split(".")[0] + ".json")


def targets_path(output_dir, subject, space):
    """The targets table of one participant in one space."""
    return Path(output_dir) / f"sub-{subject}" / "tms" / f"sub-{subject}_space-{space}_targets.tsv"


def participant_paths(output_dir, subject, space, task, seed_name):
    """The output file names of one participant (BIDS-Derivatives, pybids-indexable)."""
    root = Path(output_dir) / f"sub-{subject}"
    func = f"sub-{subject}_task-{task}_space-{space}"
    return {
        "z_map": root / "func" / f"{func}_desc-{seed_name}_stat-z_boldmap.nii.gz",
        "seed_mask": root / "func" / f"{func}_desc-{seed_name}_mask.nii.gz",
        "search_mask": root / "func" / f"{func}_desc-searchregion_mask.nii.gz",
        "target_frequency": root / "func" / f"{func}_desc-targetfrequency_boldmap.nii.gz",
        "efield": root / "func" / f"{func}_desc-efield_boldmap.nii.gz",
        "targets": targets_path(output_dir, subject, space),
        "config": root / "log" / "config.json",
    }


def coil_poses(table):
    """4x4 coil poses (tmstarget/SimNIBS convention) of the rows of a targets table that have one."""
    poses = []
    columns = [*sum(AXIS_COLUMNS.values(), ()), "coil_x", "coil_y", "coil_z"]
    for _, row in table.iterrows():
        if not all(c in row and np.isfinite(row[c]) for c in columns):
            continue
        # The table holds rounded axes: rebuild the exact frame from the normal and the handle.
        axes = {a: np.array([row[f"coil_{a}axis_{c}"] for c in "xyz"]) for a in "yz"}
        pose = pose_matrix([row.coil_x, row.coil_y, row.coil_z], axes["z"], axes["y"])
        poses.append({"name": row["name"], "pose": pose, "target": [row.x, row.y, row.z]})
    return poses


def write_navigation_exports(output_dir, subject, table, t1w_file, t1w_uri):
    """Brainsight, Localite and NIBS-BIDS files of the T1w-space coil poses.

    ``t1w_uri`` is the BIDS URI of ``t1w_file`` in the input dataset (the T1w the NIBS-BIDS
    coordinates are intended for)."""
    from tmstarget import exports

    poses = coil_poses(table)
    if not poses:
        return []
    tms = Path(output_dir) / f"sub-{subject}" / "tms"
    prefix = f"sub-{subject}_space-T1w"
    t1w_img = nb.load(t1w_file)
    markers, coordsystem = exports.nibs_markers(poses, subject, t1w=t1w_uri)
    files = {
        tms / f"{prefix}_desc-brainsight_targets.txt": exports.brainsight_targets(
            poses, coordinate_system=exports.brainsight_coordinate_system(t1w_img)),
        tms / f"{prefix}_desc-localite_markers.xml": exports.localite_instrument_markers(poses, "RAS"),
        tms / f"{prefix}_markers.tsv": markers,
    }
    for path, text in files.items():
        write_text(path, text)
    write_json(tms / f"{prefix}_markers.json", exports.nibs_markers_sidecar())
    write_json(tms / f"{prefix}_coordsystem.json", coordsystem)
    return [*files, tms / f"{prefix}_markers.json", tms / f"{prefix}_coordsystem.json"]


#: What ``PlanSpace`` in a targets sidecar means.
PLAN_SPACE_DESCRIPTION = (
    "The space of the head the scalp stage was computed on: scalp points, coil poses, depths, "
    "dose adjustments, fiducials, 10-20 and Beam F3, the 5 cm rule and the head measurements. "
    "T1w: the participant's own head (fMRIPrep's desc-preproc_T1w); a table in another space has "
    "these points mapped into it and the depths, doses and measurements of that head.")


def scalp_based(measurements_file):
    """The sidecar's ``ScalpBasedTargets`` from a scalp stage's measurements JSON (points in the
    table's own space); nothing without one."""
    if not measurements_file:
        return {}
    measurements = json.loads(Path(measurements_file).read_text())
    # its warnings are in the sidecar's one QualityWarnings list (collected by the graph)
    measurements.pop("QualityWarnings", None)
    return {"ScalpBasedTargets": measurements}


def data_sufficiency(runs):
    """How much data the target rests on: per run and in total, used runs only for the totals.

    Parameters
    ----------
    runs : list of dict
        Per run: ``Volumes``, ``RetainedVolumes``, ``RetainedTime_s``, ``DegreesOfFreedom``,
        ``Used`` (the denoising summary of :class:`tmstarget.workflows.combine.CombineRuns`).
    """
    used = [r for r in runs if r["Used"]]
    return {
        "RunsUsed": len(used),
        "RunsDropped": len(runs) - len(used),
        "TotalRetainedVolumes": sum(r["RetainedVolumes"] for r in used),
        "TotalRetainedTime_min": round(sum(r["RetainedTime_s"] for r in used) / 60, 2),
        "TotalDegreesOfFreedom": round(sum(r["DegreesOfFreedom"] for r in used), 1),
        "PerRun": [{"Source": r["Source"], "Volumes": r["Volumes"],
                    "RetainedVolumes": r["RetainedVolumes"],
                    "RetainedTime_min": round(r["RetainedTime_s"] / 60, 2),
                    "DegreesOfFreedom": round(r["DegreesOfFreedom"], 1), "Used": r["Used"]}
                   for r in runs],
    }


def write_nifti(path, source_file, dtype):
    """Write an image from the work dir as compressed NIfTI of ``dtype``."""
    img = nb.load(source_file)
    data = np.asanyarray(img.dataobj).astype(dtype)
    out = nb.Nifti1Image(data, img.affine)
    out.header.set_xyzt_units("mm")
    return atomic_write(path, out.to_filename)


class ParticipantOutputsInputSpec(BaseInterfaceInputSpec):
    """What names a participant's outputs (:func:`participant_paths`): the sink's and the report's."""

    output_dir = Directory(mandatory=True)
    subject = traits.Str(mandatory=True)
    space = traits.Str(mandatory=True)
    task = traits.Str(mandatory=True)
    seed_name = traits.Str(mandatory=True)


class _SinkInputSpec(ParticipantOutputsInputSpec):
    z_file = File(exists=True, mandatory=True)
    seed_file = File(exists=True, mandatory=True)
    search_file = File(exists=True, mandatory=True)
    targets_file = File(exists=True, mandatory=True)
    runs_file = File(exists=True, mandatory=True)
    parameters = traits.Dict(mandatory=True, desc="scientific parameters with their sources")
    config = traits.Str(mandatory=True, desc="the options as JSON")
    source_dir = Directory(mandatory=True)
    measurements_file = File(exists=True, desc="JSON: head measurements and scalp-based methods")
    native_t1w = File(exists=True, desc="the participant's T1w the navigation exports refer to")
    other_space = traits.Str(desc="the space the targets are also given in")
    other_targets_file = File(exists=True, desc="the targets in other_space")
    other_xfm = File(exists=True, desc="the transform used to map the targets to other_space")
    from_other_xfm = File(exists=True, desc="the transform used to map a plan made in other_space "
                          "back into space")
    plan_space = traits.Str(desc="the space of the head the scalp stage was computed on")
    other_measurements_file = File(exists=True, desc="measurements_file with its points in "
                                   "other_space")
    reliability_file = File(exists=True, desc="JSON: split-half and bootstrap reliability")
    frequency_file = File(exists=True, desc="fraction of bootstrap samples choosing each voxel")
    quality_warnings = traits.List(traits.Str, desc="every step's warnings, one line each")
    seed_quality_file = File(exists=True, desc="JSON: seed quality (SeedQuality) and its warnings")
    efield_file = File(exists=True, desc="|E| (V/m) of the connectivity target's pose, BOLD grid")
    efield_info_file = File(exists=True, desc="JSON: the E-field model (EfieldPlan)")


class _SinkOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True))


class ParticipantDerivatives(SimpleInterface):
    """Write a participant's derivatives (maps, targets table, sidecars, configuration)."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        paths = participant_paths(inputs.output_dir, inputs.subject, inputs.space, inputs.task,
                                  inputs.seed_name)
        runs = json.loads(Path(inputs.runs_file).read_text())
        source = Path(inputs.source_dir).resolve()
        link = source_link(source)

        def source_uri(path):
            return f"bids:{link}:{source_relative(path, source)}"

        used = [source_uri(r["BoldFile"]) for r in runs if r["Used"]]
        runs_summary = [{"Source": source_uri(r["BoldFile"]), **{k: v for k, v in r.items()
                        if k not in ("BoldFile", "Regressors")}, "Regressors": len(r["Regressors"])}
                        for r in runs]
        write_nifti(paths["z_map"], inputs.z_file, np.float32)
        write_json(sidecar(paths["z_map"]), {
            "Description": f"Seed-based functional connectivity with the {inputs.seed_name} seed: "
            "Fisher z (arctanh of Pearson r), runs combined by a mean weighted by retained volumes.",
            "Units": "arbitrary (Fisher z)",
            "Space": inputs.space,
            "Sources": used,
            "Runs": runs_summary,
            **inputs.parameters,
        })
        if inputs.frequency_file:
            write_nifti(paths["target_frequency"], inputs.frequency_file, np.float32)
            write_json(sidecar(paths["target_frequency"]), {
                "Description": "Fraction of the block-bootstrap samples whose connectivity target "
                "is this voxel: how the target would move with other data of this participant.",
                "Units": "fraction of bootstrap samples",
                "Space": inputs.space,
                "Sources": used,
                "ReliabilityMethod": inputs.parameters["ReliabilityMethod"],
            })
        efield = {}
        if inputs.efield_info_file:
            efield = json.loads(Path(inputs.efield_info_file).read_text())
            # its warnings are in the one QualityWarnings list, its columns described per column
            efield.pop("QualityWarnings", None)
            efield.pop("Columns", None)
        if inputs.efield_file:
            write_nifti(paths["efield"], inputs.efield_file, np.float32)
            write_json(sidecar(paths["efield"]), {
                "Description": "Magnitude of the electric field induced by the coil in the pose of "
                f"the connectivity target ({efield.get('Orientation', 'clinical')} orientation), "
                "in a sphere fitted to the scalp under the coil, on the BOLD grid.",
                "Units": "V/m",
                "Space": inputs.space,
                **{k: efield[k] for k in ("Model", "Coil", "dIdt_A_per_us", "dIdtNote", "HeadModel",
                                          "Assumptions", "Map", "References") if k in efield},
            })
        for key, source_file in (("seed_mask", inputs.seed_file), ("search_mask", inputs.search_file)):
            img = nb.load(source_file)
            mask = nb.Nifti1Image((np.asanyarray(img.dataobj) != 0).astype(np.uint8), img.affine)
            mask.header.set_xyzt_units("mm")
            atomic_write(paths[key], mask.to_filename)
            write_json(sidecar(paths[key]), {
                "Description": {"seed_mask": f"Voxels of the {inputs.seed_name} seed on the BOLD grid",
                                "search_mask": "DLPFC search region restricted to grey matter, "
                                "on the BOLD grid"}[key],
                "Space": inputs.space,
                "Type": "ROI",
            })

        # Each table's provenance: where its scalp plan was made and what was mapped into it.
        plan = ({"PlanSpace": inputs.plan_space, "PlanSpaceDescription": PLAN_SPACE_DESCRIPTION}
                if inputs.plan_space else {})
        tables = [(inputs.space, inputs.targets_file, paths["targets"], dict(plan),
                   inputs.measurements_file)]
        if inputs.other_targets_file:
            if inputs.plan_space == inputs.other_space:  # planned on the native head, mapped back
                tables[0][3].update(MappedFrom=inputs.other_space,
                                    Transform=source_uri(inputs.from_other_xfm))
                mapped = {"TargetMappedFrom": inputs.space, "Transform": source_uri(inputs.other_xfm)}
            else:
                mapped = {"MappedFrom": inputs.space, "Transform": source_uri(inputs.other_xfm)}
            tables.append((inputs.other_space, inputs.other_targets_file,
                           targets_path(inputs.output_dir, inputs.subject, inputs.other_space),
                           {**plan, **mapped}, inputs.other_measurements_file))
        extras = {"DataSufficiency": data_sufficiency(runs_summary),
                  # the graph's warnings (tmstarget.workflows.quality): one line each, none is []
                  "QualityWarnings": list(inputs.quality_warnings or [])}
        if inputs.reliability_file:
            extras["Reliability"] = json.loads(Path(inputs.reliability_file).read_text())
        if efield:
            extras["EfieldModel"] = {k: v for k, v in efield.items() if k != "Map"}
        if inputs.seed_quality_file:
            seed_quality = json.loads(Path(inputs.seed_quality_file).read_text())
            for run in seed_quality["PerRun"]:
                run["Source"] = source_uri(run["Source"])
            # its warnings are in the sidecar's one QualityWarnings list (collected by the graph)
            seed_quality.pop("QualityWarnings", None)
            extras["SeedQuality"] = seed_quality
            if seed_quality["Cause"] and isinstance(extras.get("Reliability"), dict):
                extras["Reliability"]["Cause"] = seed_quality["Cause"]
        exported = []
        if not ("T1w" in [space for space, *_ in tables] and inputs.native_t1w):
            extras["QualityWarnings"].append(
                "no neuronavigation exports (Brainsight, Localite, NIBS-BIDS): they are written in "
                "the participant's own T1w space, which needs fMRIPrep's native desc-preproc_T1w and "
                "its T1w<->MNI transforms in the input; give fMRIPrep's anat outputs (or compute with "
                "--space T1w)")
        for space, table_file, path, provenance, measurements_file in tables:
            table = pd.read_csv(table_file, sep="\t", na_values="n/a")
            if "cluster_size" in table:
                table["cluster_size"] = table["cluster_size"].astype("Int64")
            if "scalp_trusted" in table:  # true/false, as in the JSON sidecars
                table["scalp_trusted"] = table["scalp_trusted"].map(
                    {True: "true", False: "false"}).fillna("n/a")
            if space == "T1w" and inputs.native_t1w:
                exported = write_navigation_exports(inputs.output_dir, inputs.subject, table,
                                                    inputs.native_t1w, source_uri(inputs.native_t1w))
            # mm and Fisher z to 2 decimals, unit axes to 4
            table = table.round({c: 4 if c in sum(AXIS_COLUMNS.values(), ()) else
                                 3 if c in EFIELD_V_PER_M_COLUMNS else 2 for c in table.columns})
            atomic_write(path, lambda tmp: table.to_csv(tmp, sep="\t", index=False, na_rep="n/a"))
            write_json(sidecar(path), {
                **{column: {"Description": TARGET_COLUMNS[column]} for column in table.columns},
                "Space": space,
                "CoordinateUnits": "mm",
                "CoordinateSystem": f"world coordinates (RAS) of {space}",
                "Sources": used,
                **provenance,
                **inputs.parameters,
                **extras,
                **scalp_based(measurements_file),
            })
        write_text(paths["config"], inputs.config + "\n")
        self._results["out_files"] = ([str(p) for p in paths.values() if p.is_file()] + [str(t[2]) for t in tables[1:]]
                                      + [str(p) for p in exported])
        return runtime
