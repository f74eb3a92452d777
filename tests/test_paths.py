"""Paths as users type them: relative to wherever they started the app, holding spaces and non-ASCII
characters, through symbolic links (a DataLad dataset is all links), for every path option.

Each path is made absolute once, by the parser (tmstarget.cli._path), as fMRIPrep's parser does;
Nipype nodes run in their own folders, so a relative path that reached them would point into the
work folder (issue 17: a relative output_dir put the derivatives there).
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from helpers import connectivity_row, distance_mm
from tmstarget import cli
from tmstarget.config import DLPFC_RADIUS_MM, DLPFC_SITES_MNI, SGACC_CENTER_MNI, SGACC_RADIUS_MM
from tmstarget.derivatives import participant_paths

#: Each test here runs the pipeline (or a dataset generation) end to end.
pytestmark = pytest.mark.slow

MNI = "MNI152NLin2009cAsym"
#: a space and characters outside ASCII, in every folder the tests make
ODD = "dossier é ü 数据"


def expected_outputs(out, spaces=(MNI, "T1w")):
    """The files of a complete participant output (one-run dataset, MNI and T1w, report on)."""
    paths = participant_paths(out, "01", MNI, "rest", "sgACC")
    files = [paths[k] for k in ("z_map", "seed_mask", "search_mask", "target_frequency", "targets", "config")]
    files += [out / "sub-01" / "tms" / f"sub-01_space-{space}_targets.tsv" for space in spaces]
    files += [out / "sub-01.html", out / "dataset_description.json", out / ".bidsignore"]
    return files


def assert_complete(out):
    missing = [str(f) for f in expected_outputs(out) if not f.is_file() or f.stat().st_size == 0]
    assert not missing, f"missing outputs: {missing}"


def _spheres_image(path, centres, radius):
    """A binary mask of spheres (MNI mm) on a 2 mm MNI152NLin2009cAsym-like grid."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-96.0, -132.0, -78.0]
    ijk = np.indices((97, 115, 97)).reshape(3, -1).T
    xyz = nb.affines.apply_affine(affine, ijk)
    inside = np.zeros(len(xyz), bool)
    for centre in centres:
        inside |= np.linalg.norm(xyz - np.asarray(centre), axis=1) <= radius
    nb.Nifti1Image(inside.reshape(97, 115, 97).astype(np.uint8), affine).to_filename(path)
    return path


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_relative_paths_for_every_option_from_another_folder(one_run_dataset, mni_run, tmp_path,
                                                              monkeypatch, capsys):
    """A raw BIDS dataset with its fMRIPrep outputs elsewhere (--derivatives), every path option
    relative to the folder the app is started in, all of them under folders named with a space
    and non-ASCII characters; fMRIPrep's and XCP-D's spellings of the resource flags."""
    root, truth = one_run_dataset
    data = tmp_path / ODD
    raw = data / "raw dataset"
    raw.mkdir(parents=True)
    (raw / "dataset_description.json").write_text('{"Name": "raw", "BIDSVersion": "1.9.0"}')
    shutil.copytree(root, data / "fmriprep ü")
    (data / "filter é.json").write_text(json.dumps({"bold": {"task": "rest"}}))
    (data / "config é.json").write_text(json.dumps({"bootstrap_samples": 50}))
    # The default seed sphere and search region as images: the same target must come out.
    _spheres_image(data / "seed é.nii.gz", [SGACC_CENTER_MNI], SGACC_RADIUS_MM)
    _spheres_image(data / "region é.nii.gz", DLPFC_SITES_MNI.values(), DLPFC_RADIUS_MM)
    start = tmp_path / "started here"
    start.mkdir()
    monkeypatch.chdir(start)
    up = Path("..") / ODD
    argv = [str(up / "raw dataset"), "out dir é", "participant",
            "--derivatives", f"fmriprep={up / 'fmriprep ü'}",
            "--bids-filter-file", str(up / "filter é.json"),
            "--config-file", str(up / "config é.json"),
            "--seed-image", str(up / "seed é.nii.gz"),
            "--search-region-image", str(up / "region é.nii.gz"),
            "-w", "work dir ü", "--nthreads", "2", "--mem", "4000", "--skip-bids-validation", "--notrack"]
    assert cli.main(argv) == 0, capsys.readouterr().err

    out = start / "out dir é"
    assert_complete(out)
    # nothing of the derivatives went into the work folder (where Nipype nodes run)
    assert not [d for d in (start / "work dir ü").rglob("sub-01") if d.is_dir()]
    assert distance_mm(connectivity_row(out, MNI), truth["target_mni"]) <= 4.0
    sidecar = json.loads((out / "sub-01" / "tms" / f"sub-01_space-{MNI}_targets.json").read_text())
    assert sidecar["Reliability"]["Bootstrap"]["Samples"] == 50  # --config-file was read
    config = json.loads((out / "sub-01" / "log" / "config.json").read_text())
    for key, name in (("seed_image", "seed é.nii.gz"), ("search_region_image", "region é.nii.gz")):
        assert Path(config[key]).is_absolute()  # made absolute against the folder started in
        assert Path(config[key]).resolve() == (data / name).resolve()
    assert config["bids_filters"] == {"bold": {"task": "rest"}}
    # No absolute path of this machine in the dataset description: the link is relative.
    description = json.loads((out / "dataset_description.json").read_text())
    assert "file://" not in json.dumps(description) and str(tmp_path) not in json.dumps(description)
    (link,) = description["DatasetLinks"].values()
    from urllib.parse import unquote

    assert (out / unquote(link)).resolve() == (data / "fmriprep ü").resolve()
    # The seed and region images equal the defaults: the target is the one of the default run
    # (a sub-voxel centroid: within 0.1 mm).
    reference, _, _ = mni_run
    np.testing.assert_allclose(connectivity_row(out, MNI)[["x", "y", "z"]].to_numpy(float),
                               connectivity_row(reference, MNI)[["x", "y", "z"]].to_numpy(float),
                               atol=0.1)


@pytest.mark.slow
def test_symlinked_fmriprep_tree_like_datalad(one_run_dataset, mni_run, tmp_path, monkeypatch, capsys):
    """Every file a symbolic link into an annex of content-named objects (as git-annex/DataLad
    lays a dataset out), reached through a linked folder, from another working directory: the
    outputs are complete, keep the BIDS names (not the objects' names), and equal those of the
    same data without links."""
    root, truth = one_run_dataset
    store = tmp_path / ODD / ".git" / "annex" / "objects"
    tree = tmp_path / ODD / "fmriprep"
    for source in sorted(root.rglob("*")):
        target = tree / source.relative_to(root)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = _sha(source)
        key = store / digest[:2] / f"MD5E-s{source.stat().st_size}--{digest}{''.join(source.suffixes)}"
        key.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, key)
        target.symlink_to(os.path.relpath(key, target.parent))
    linked = tmp_path / "linked dataset é"
    linked.symlink_to(tree, target_is_directory=True)
    start = tmp_path / "elsewhere"
    start.mkdir()
    monkeypatch.chdir(start)
    assert cli.main([str(Path("..") / linked.name), "out", "participant", "-w", "work"]) == 0, \
        capsys.readouterr().err

    out = start / "out"
    assert_complete(out)
    assert not [p for p in out.rglob("*") if "MD5E-" in p.name]
    reference, _, _ = mni_run
    for space in (MNI, "T1w"):
        name = Path("sub-01") / "tms" / f"sub-01_space-{space}_targets.tsv"
        assert _sha(out / name) == _sha(reference / name)
    z_map = participant_paths(out, "01", MNI, "rest", "sgACC")["z_map"]
    assert _sha(z_map) == _sha(participant_paths(reference, "01", MNI, "rest", "sgACC")["z_map"])
    assert distance_mm(connectivity_row(out, MNI), truth["target_mni"]) <= 4.0


def test_every_path_option_is_made_absolute_once(tmp_path, monkeypatch):
    """The parser turns each path into an absolute one against the current folder, keeping
    symbolic links and the characters as typed."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link é").symlink_to(tmp_path / "real", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args([
        "link é/in", "out put", "participant", "-w", "w ü", "--config-file", "c.json",
        "--bids-filter-file", "f.json", "--seed-image", "s.nii.gz", "--search-region-image",
        "../r.nii.gz", "--derivatives", "fmriprep=link é/fmriprep"])
    assert args.bids_dir == tmp_path / "link é" / "in"  # the link is not resolved
    assert args.output_dir == tmp_path / "out put"
    assert args.work_dir == tmp_path / "w ü"
    assert args.config_file == tmp_path / "c.json" and args.bids_filter_file == tmp_path / "f.json"
    assert args.seed_image == tmp_path / "s.nii.gz"
    assert args.search_region_image == tmp_path / ".." / "r.nii.gz"
    assert args.derivatives == [("fmriprep", tmp_path / "link é" / "fmriprep")]
    for path in (args.bids_dir, args.output_dir, args.work_dir, args.seed_image):
        assert path.is_absolute()


def test_an_empty_path_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["", "out", "participant"])
    assert exc.value.code == 2 and "empty path" in capsys.readouterr().err
