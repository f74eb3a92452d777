"""The participant report, the group level and the progress messages, on synthetic participants."""

import hashlib
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tmstarget.config import Options
from tmstarget.reports import boilerplate, parse_report_targets, software_versions
from tmstarget.synthetic import make_fmriprep_dataset
from helpers import FAST, run_app
from tmstarget.participant import participant_work_dir

SPACE = "MNI152NLin2009cAsym"
CHROMIUM = shutil.which("chromium") or (Path("/usr/bin/chromium") if Path("/usr/bin/chromium").is_file() else None)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three synthetic participants processed without reports (--no-report), then the group level."""
    base = tmp_path_factory.mktemp("cohort")
    truth = make_fmriprep_dataset(base / "fmriprep", participants=("01", "02", "03"), n_runs=1, seed=11,
                                  **FAST)
    out = base / "out"
    assert run_app(base / "fmriprep", out, "--no-report", work_dir=base / "work") == 0
    return base, out, truth


def _checksums(folder):
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _distance(a, b):
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float)))


# --------------------------------------------------------------------------------------------
# Participant report
# --------------------------------------------------------------------------------------------
def test_report_shows_the_planted_target_where_it_was_planted(mni_run):
    out, _, truth = mni_run
    page = (out / "sub-01.html").read_text()
    listed = {(t["space"], t["target"]): t["xyz"] for t in parse_report_targets(page)}
    # within one voxel of the 4 mm grid, in both spaces, and in the left hemisphere
    assert _distance(listed[(SPACE, "connectivity")], truth["target_mni"]) <= 4.0
    assert _distance(listed[("T1w", "connectivity")], truth["participants"]["01"]["target_t1w"]) <= 4.0
    assert listed[(SPACE, "connectivity")][0] < 0
    # the comparators are listed too (they need the head T1w, which this dataset has)
    assert {"F3_1020", "F3_beam", "5cm"} <= {name for space, name in listed if space == SPACE}


def test_report_is_self_contained(mni_run):
    out, _, _ = mni_run
    page = (out / "sub-01.html").read_text()
    sources = re.findall(r"<img src='([^']+)'", page)
    # FD, carpet, regions, slices, glass brain, head
    assert len(sources) >= 6
    for source in sources:
        assert not re.match(r"[a-z]+:", source), source  # relative: no network, no absolute path
        assert (out / source).is_file() and (out / source).stat().st_size > 1000, source
        assert source.startswith("sub-01/figures/")
    # nothing is fetched from elsewhere: no remote script, style sheet or font
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)


def test_figures_are_plots_of_this_participant(mni_run):
    out, work, _ = mni_run
    figures = out / "sub-01" / "figures"
    carpet = np.load(next(Path(work).rglob("carpet.npz")))
    info = json.loads(next(Path(work).rglob("denoise.json")).read_text())
    # the carpet samples at most 3000 evenly spaced mask voxels; the cleaned rows are the retained ones
    assert carpet["raw"].shape == (info["Volumes"], len(carpet["voxels"]))
    assert carpet["cleaned"].shape == (info["RetainedVolumes"], len(carpet["voxels"]))
    assert len(carpet["voxels"]) <= 3000 and np.all(np.diff(carpet["voxels"]) > 0)
    assert len(carpet["retained"]) == info["RetainedVolumes"]
    # the cleaned columns are z-scored time series, the raw ones are not
    np.testing.assert_allclose(carpet["cleaned"].std(axis=0, ddof=1)[carpet["cleaned"].std(axis=0) > 0], 1, atol=1e-3)
    import matplotlib.image as mpimg

    for png in figures.glob("*.png"):
        image = mpimg.imread(png)
        height, width = image.shape[:2]
        assert 300 <= width <= 1400 and 150 <= height <= 1400, (png.name, image.shape)  # laptop-sized
        assert image[..., :3].std() > 0.05, png.name  # not blank
    svg = next(figures.glob("*motion_plot.svg")).read_text()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg


def test_report_shows_reliability_and_data_sufficiency_when_the_sidecar_has_them(mni_run, tmp_path):
    """Reliability is computed elsewhere: the report shows whatever dicts the sidecar holds."""
    from tmstarget.reports import write_participant_report

    out, work, _ = mni_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    targets_json = copy / "sub-01" / "tms" / f"sub-01_space-{SPACE}_targets.json"
    meta = json.loads(targets_json.read_text())
    meta["Reliability"] = {"Grade": "B", "GradeReason": "split-half distance 7.5 mm",
                           "SplitHalf": {"Distance_mm": 7.5}}
    meta["DataSufficiency"] = {"RetainedTime_s": 314.0, "Sufficient": True}
    targets_json.write_text(json.dumps(meta))
    denoise = participant_work_dir(work, "01") / "run_01_wf" / "denoise"
    bold = json.loads((denoise / "denoise.json").read_text())["BoldFile"]
    confounds = [bold.split("_space-")[0] + "_desc-confounds_timeseries.tsv"]
    written = write_participant_report(copy, "01", SPACE, "rest", "sgACC", [denoise / "denoise.json"],
                                       [denoise / "carpet.npz"], confounds)
    page = written[0].read_text()
    assert "Grade: <b class='grade'>B</b>" in page
    assert "split-half distance 7.5 mm" in page and "DataSufficiency" in page
    assert "The reliability of the target was graded 'B'" in (copy / "sub-01" / "log" / "CITATION.md").read_text()


def test_figures_are_the_same_files_whichever_process_draws_them(mni_run, one_run_dataset, tmp_path):
    """The report drawn by one process and shared among three (forked) gives the same bytes."""
    from tmstarget.reports import write_participant_report

    out, work, _ = mni_run
    denoise = participant_work_dir(work, "01") / "run_01_wf" / "denoise"
    bold = json.loads((denoise / "denoise.json").read_text())["BoldFile"]
    t1w = next(Path(one_run_dataset[0]).rglob(f"sub-01_space-{SPACE}_desc-preproc_T1w.nii.gz"))
    drawn = {}
    for processes in (1, 3):
        copy = tmp_path / f"out{processes}"
        shutil.copytree(out, copy)
        shutil.rmtree(copy / "sub-01" / "figures")
        written = write_participant_report(
            copy, "01", SPACE, "rest", "sgACC", [denoise / "denoise.json"], [denoise / "carpet.npz"],
            [bold.split("_space-")[0] + "_desc-confounds_timeseries.tsv"], t1w=t1w,
            mesh_file=next(Path(work).rglob("scalp_mesh.npz")), processes=processes)
        drawn[processes] = {p.relative_to(copy): p.read_bytes() for p in written}
    assert len([p for p in drawn[1] if p.parent.name == "figures"]) >= 7  # head, slices, ... carpet
    assert drawn[1] == drawn[3]


def test_a_process_drawing_a_long_figure_leaves_the_others_to_the_other_process(tmp_path):
    """Figures are taken one at a time by whichever process is free, not dealt out beforehand:
    the first figure waits until every other one is drawn, which only another process can do (a
    process dealt the first figure and one more would wait for itself, and the test would fail)."""
    import os
    import time

    from tmstarget.reports.figures import draw_all
    from tmstarget.workflows.parallel import can_fork

    if not can_fork():
        pytest.skip("figures are drawn in forked processes on Linux only")
    others = [tmp_path / f"figure{index}.txt" for index in range(1, 6)]

    def draw_long():
        deadline = time.time() + 60
        while not all(path.is_file() for path in others) and time.time() < deadline:
            time.sleep(0.01)
        (tmp_path / "figure0.txt").write_text(f"{os.getpid()} {all(p.is_file() for p in others)}")

    def draw(path):
        return lambda: path.write_text(str(os.getpid()))

    draw_all([draw_long, *(draw(path) for path in others)], processes=2)
    long_pid, others_were_drawn = (tmp_path / "figure0.txt").read_text().split()
    assert others_were_drawn == "True"
    pids = {path.read_text() for path in others}
    assert len(pids) == 1 and long_pid not in pids and str(os.getpid()) not in pids | {long_pid}


def test_report_without_head_t1w(mni_run, tmp_path):
    """Without the scalp mesh the report draws no head and says why."""
    from tmstarget.reports import write_participant_report

    out, work, _ = mni_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "sub-01" / "figures")
    denoise = participant_work_dir(work, "01") / "run_01_wf" / "denoise"
    bold = json.loads((denoise / "denoise.json").read_text())["BoldFile"]
    written = write_participant_report(copy, "01", SPACE, "rest", "sgACC", [denoise / "denoise.json"],
                                       [denoise / "carpet.npz"],
                                       [bold.split("_space-")[0] + "_desc-confounds_timeseries.tsv"])
    page = written[0].read_text()
    assert "the head figure is missing" in page
    assert not list((copy / "sub-01" / "figures").glob("*head*")) and "id='head'" not in page
    assert all((copy / src).is_file() for src in re.findall(r"<img src='([^']+)'", page))


def test_methods_paragraph_follows_the_parameters_used(mni_run):
    out, _, _ = mni_run
    citation = (out / "sub-01" / "log" / "CITATION.md").read_text()
    page = (out / "sub-01.html").read_text()
    # written to the log and shown in the report, with the defaults of this run
    assert "6 mm FWHM" in citation and "(6, 16, -10)" in citation and "0.01-0.1 Hz" in citation
    assert "censored" not in citation  # no --fd-threshold in this run
    assert "Fox MD" in citation and "doi:10.1016/j.biopsych.2012.04.028" in citation
    assert "Beam W" in citation  # from the scalp-based methods the sidecar records
    assert "6 mm FWHM" in page
    # other parameters give another paragraph
    runs = [{"RepetitionTime": 2.0, "Volumes": 200, "RetainedVolumes": 150, "RetainedTime_s": 300.0,
             "Used": True}, {"RepetitionTime": 2.0, "Volumes": 100, "RetainedVolumes": 60,
                             "RetainedTime_s": 120.0, "Used": False}]
    text = boilerplate(Options(fd_threshold=0.5, smoothing_fwhm=4.0, confounds="acompcor").parameters(),
                       runs, {}, SPACE, software_versions())
    assert "framewise displacement above 0.5 mm" in text and "Power JD" in text
    assert "4 mm FWHM" in text and "CompCor" in text and "Behzadi" in text
    assert "1 run(s) were excluded" in text and "200 volumes, of which 150 (5.0 min)" in text
    # every reference cited is listed once, numbered in order of citation
    cited = sorted({int(n) for group in re.findall(r"\[([\d, ]+)\]", text) for n in group.split(",")})
    listed = re.findall(r"^(\d+)\. ", text, flags=re.M)
    assert cited == [int(n) for n in listed] == list(range(1, len(listed) + 1))


# --------------------------------------------------------------------------------------------
# Group level
# --------------------------------------------------------------------------------------------
def test_group_lists_every_participant_target(cohort):
    base, out, truth = cohort
    assert not list(out.glob("sub-*.html")) and not list(out.glob("sub-*/figures"))  # --no-report
    before = _checksums(out)
    from tmstarget import cli

    assert cli.main([str(base / "fmriprep"), str(out), "group"]) == 0
    # participant files are never rewritten
    after = {p: v for p, v in _checksums(out).items() if p in before}
    assert after == before
    table = pd.read_csv(out / "group" / "group_targets.tsv", sep="\t")
    connectivity = table[(table["name"] == "connectivity") & (table["space"] == SPACE)]
    assert sorted(connectivity["participant_id"]) == ["sub-01", "sub-02", "sub-03"]
    for _, row in connectivity.iterrows():
        assert _distance([row.x, row.y, row.z], truth["target_mni"]) <= 4.0
    # the page lists the three connectivity targets at the same places
    listed = [t for t in parse_report_targets((out / "group.html").read_text())
              if t["target"] == "connectivity" and t["space"] == SPACE]
    assert sorted(t["participant"] for t in listed) == ["sub-01", "sub-02", "sub-03"]
    for item in listed:
        row = connectivity.set_index("participant_id").loc[item["participant"]]
        assert _distance(item["xyz"], [row.x, row.y, row.z]) < 0.01
    # the summary is computed from the table
    summary = json.loads((out / "group" / "group_summary.json").read_text())
    spread = summary["Spaces"][SPACE]["ConnectivitySpread"]
    np.testing.assert_allclose(spread["Centroid_mm"], connectivity[["x", "y", "z"]].mean().to_numpy(), atol=0.01)
    f3 = table[(table["name"] == "F3_beam") & (table["space"] == SPACE)].set_index("participant_id")
    distances = np.linalg.norm(f3[["x", "y", "z"]].to_numpy() - connectivity.set_index("participant_id")
                               .loc[f3.index, ["x", "y", "z"]].to_numpy(), axis=1)
    assert summary["Spaces"][SPACE]["DistanceToConnectivity_mm"]["F3_beam"]["Cortical"]["Mean"] == \
        pytest.approx(distances.mean(), abs=0.01)
    assert (out / "group" / "figures" / f"group_space-{SPACE}_desc-targets_glassbrain.png").stat().st_size > 1000


def test_group_without_participant_outputs_fails_in_one_line(cohort, tmp_path, capsys):
    base, _, _ = cohort
    from tmstarget import cli

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main([str(base / "fmriprep"), str(empty), "group"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "no participant outputs" in error and "participant' first" in error
    assert not (empty / "group").exists() and not (empty / "group.html").exists()


def test_progress_one_line_per_step(cohort, caplog):
    base, out, _ = cohort
    caplog.set_level(logging.DEBUG, logger="tmstarget")
    # a re-run with the same work dir reuses the computations: fast, and still reported step by step
    assert run_app(base / "fmriprep", out, "--participant-label", "02", "--no-report",
                   work_dir=base / "work") == 0
    info = [r.getMessage() for r in caplog.records if r.name == "tmstarget" and r.levelno == logging.INFO]
    assert any(m.startswith("sub-02 [1/1]") for m in info)
    assert any(re.match(r"sub-02  run-1 denoise +\d+\.\d s \(reused\)$", m) for m in info)  # as the file says
    assert any(re.match(r"sub-02  derivatives +\d+\.\d s$", m) for m in info)  # written every time
    # plumbing nodes only with -v: the console is not flooded
    assert not any("merge" in m or "outputnode" in m for m in info)
    # one line per step, and nothing else but the participant's header
    steps = [re.sub(r" +\d+\.\d s( \(reused\))?$", "", m) for m in info if m.startswith("sub-02  ")]
    assert len(steps) == len(set(steps)) == len(info) - 1, info
    caplog.clear()
    assert run_app(base / "fmriprep", out, "--participant-label", "02", "--no-report", "-v",
                   work_dir=base / "work") == 0
    assert any("merge" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


# --------------------------------------------------------------------------------------------
# In a browser
# --------------------------------------------------------------------------------------------
def _chromium(url, tmp_path, *flags):
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    profile.mkdir()
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--enable-logging=stderr",
               "--v=0", *flags, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless browser test needs Debian's chromium "
                    "(apt-get install -y chromium)")
def test_reports_render_in_a_browser(mni_run, cohort, tmp_path):
    out, _, _ = mni_run
    base, group_out, _ = cohort
    from tmstarget import cli

    if not (group_out / "group.html").is_file():
        assert cli.main([str(base / "fmriprep"), str(group_out), "group"]) == 0
    for page in (out / "sub-01.html", group_out / "group.html"):
        url = page.resolve().as_uri()
        result = _chromium(url, tmp_path, "--dump-dom")
        body = re.search(r"<body[^>]*>", result.stdout)
        assert body, result.stderr[-2000:]
        attributes = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(0)))
        # every figure decoded with a size, no script or resource error in the page
        assert attributes.get("images-ok") == "true", (page.name, attributes)
        assert attributes.get("errors") == "0", (page.name, attributes)
        assert attributes.get("wide-tables") == "0", (page.name, attributes)  # every table fits the page
        assert int(attributes["images"]) >= (6 if page.name.startswith("sub-") else 1)
        console = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
        assert not console, console
        screenshot = tmp_path / f"{page.stem}.png"
        _chromium(url, tmp_path, f"--screenshot={screenshot}", "--window-size=1280,4000")
        assert screenshot.stat().st_size > 10000
        print(f"screenshot of {page.name}: {screenshot}")


def test_the_head_is_drawn_from_a_merged_mesh_that_keeps_its_shape():
    """A fine head mesh is drawn merged to DRAWN_FACE_MM cells (a fifth of the faces of a 1 mm
    sphere); the merged mesh lies on the same surface, its normals still point out, and every
    face has three distinct corners."""
    from skimage.measure import marching_cubes

    from tmstarget.reports.head import DRAWN_FACE_MM, merged_mesh

    radius = 40.0
    grid = np.mgrid[-45:46, -45:46, -45:46].astype(float)  # 1 mm voxels, centred on 0
    vertices, faces, normals, _ = marching_cubes(radius - np.sqrt((grid ** 2).sum(axis=0)), 0.0)
    vertices -= 45.0
    radial = vertices / np.linalg.norm(vertices, axis=1, keepdims=True)
    assert (np.einsum("ij,ij->i", normals, radial) > 0.9).all()  # outward, as the scalp's
    merged, merged_faces, merged_normals = merged_mesh(vertices, faces, normals, DRAWN_FACE_MM)
    assert len(merged_faces) < len(faces) / 3
    assert np.abs(np.linalg.norm(merged, axis=1) - radius).max() < 0.5 * DRAWN_FACE_MM
    radial = merged / np.linalg.norm(merged, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(merged_normals, axis=1), 1.0)
    assert (np.einsum("ij,ij->i", merged_normals, radial) > np.cos(np.deg2rad(30))).all()
    assert ((merged_faces[:, 0] != merged_faces[:, 1]) & (merged_faces[:, 1] != merged_faces[:, 2])
            & (merged_faces[:, 0] != merged_faces[:, 2])).all()
    # the surface is still covered: each old vertex is near a merged face's centre
    from scipy.spatial import cKDTree
    centres = merged[merged_faces].mean(axis=1)
    assert cKDTree(centres).query(vertices)[0].max() < DRAWN_FACE_MM
