"""The report's treatment plan and what it says in words, on a synthetic participant and by hand."""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tmstarget.config import Options
from tmstarget.reports import boilerplate, software_versions, write_participant_report
from tmstarget.reports.head import table_on_mesh
from tmstarget.reports.plan import handle_words
from tmstarget.reports.quality import BOOTSTRAP_SCOPE, format_distance, readable_distances
from tmstarget.participant import participant_work_dir

SPACE = "MNI152NLin2009cAsym"
CHROMIUM = shutil.which("chromium") or (Path("/usr/bin/chromium") if Path("/usr/bin/chromium").is_file() else None)
PDFINFO, PDFTOTEXT = shutil.which("pdfinfo"), shutil.which("pdftotext")


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------
def test_a_distance_below_one_voxel_is_unresolved_not_zero():
    assert format_distance(0.0, 2.0) == "< 1 voxel (2 mm)"
    assert format_distance(1.99, 2.0) == "< 1 voxel (2 mm)"
    assert format_distance(2.0, 2.0) == "2.0 mm"
    assert format_distance(float("nan"), 2.0) == "n/a"
    sentence = "bootstrap 95 % radius 0.0 mm, split halves 7.5 mm apart"
    assert readable_distances(sentence, 4.0) == "bootstrap 95 % radius < 1 voxel (4 mm), split halves 7.5 mm apart"


def test_handle_direction_in_words_keeps_the_hemisphere():
    handle = np.array([-0.64, -0.65, -0.41])
    assert handle_words(handle, np.array([-49.0, 72.0, 52.0])) == "posterior and lateral (to the left)"
    # the mirror image over the right hemisphere: lateral is now to the right
    mirrored = handle * [-1, 1, 1]
    assert handle_words(mirrored, np.array([49.0, 72.0, 52.0])) == "posterior and lateral (to the right)"
    # a handle pointing to the left from a right-hemisphere coil points to the midline
    assert handle_words(handle, np.array([49.0, 72.0, 52.0])) == "posterior and medial (to the left)"
    assert handle_words(-handle, np.array([-49.0, 72.0, 52.0])) == "anterior and medial (to the right)"


def test_methods_read_the_recorded_totals_and_parameters():
    runs = [{"RepetitionTime": 2.0, "Volumes": 200, "RetainedVolumes": 150, "RetainedTime_s": 300.0, "Used": True}]
    parameters = Options(gm_threshold=0.3).parameters()
    # the sidecar's totals, not a re-summing of the runs (here deliberately different)
    sidecar = {"DataSufficiency": {"TotalRetainedVolumes": 149, "TotalRetainedTime_min": 4.97}}
    text = boilerplate(parameters, runs, sidecar, SPACE, software_versions())
    assert "200 volumes, of which 149 (5.0 min)" in text
    assert "grey-matter probability at least 0.3 " in text and "at least 0.5" not in text
    # what made the inputs: fMRIPrep is cited, anything else is named and fMRIPrep is not cited
    fmriprep = boilerplate(parameters, runs, {}, SPACE, software_versions(), "23.2.1", "fMRIPrep")
    assert "fMRIPrep 23.2.1 [" in fmriprep and "Esteban O" in fmriprep
    other = boilerplate(parameters, runs, {}, SPACE, software_versions(), "0.1.0", "tmstarget-synth")
    assert "tmstarget-synth 0.1.0" in other and "fMRIPrep 0.1.0" not in other and "Esteban O" not in other


# --------------------------------------------------------------------------------------------
# On a synthetic participant
# --------------------------------------------------------------------------------------------
def _rewrite(out, work, tmp_path, edit=None, **kwargs):
    """A copy of the participant's outputs, its targets sidecars edited, and the report rewritten."""
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for path in (copy / "sub-01" / "tms").glob("sub-01_space-*_targets.json"):
        meta = json.loads(path.read_text())
        if edit:
            edit(meta)
        path.write_text(json.dumps(meta))
    wf = participant_work_dir(work, "01")
    denoise = wf / "run_01_wf" / "denoise"
    bold = json.loads((denoise / "denoise.json").read_text())["BoldFile"]
    confounds = [bold.split("_space-")[0] + "_desc-confounds_timeseries.tsv"]
    written = write_participant_report(copy, "01", SPACE, "rest", "sgACC", [denoise / "denoise.json"],
                                       [denoise / "carpet.npz"], confounds, other_space="T1w", **kwargs)
    return copy, written[0].read_text()


def _plan(page):
    return page.split("<section id='plan'>", 1)[1].split("</section>", 1)[0]


def _visible_text(page):
    """The page without its style sheet, script and attribute values: what a reader can read."""
    page = re.sub(r"<(style|script)>.*?</\1>", "", page, flags=re.S)
    return re.sub(r"<[^>]+>", " ", page)


def test_plan_opens_the_report_with_the_t1w_target_files_and_dose(mni_run):
    out, _, truth = mni_run
    page = (out / "sub-01.html").read_text()
    sections = re.findall(r"<section id='([^']+)'>", page)
    assert sections[0] == "plan"
    plan = _plan(page)
    t1w = pd.read_csv(out / "sub-01" / "tms" / "sub-01_space-T1w_targets.tsv", sep="\t").set_index("name")
    row = t1w.loc["connectivity"]
    shown = re.search(r"data-plan='target-t1w'>\(([^)]*)\) mm", plan).group(1)
    np.testing.assert_allclose([float(v) for v in shown.split(",")], [row.x, row.y, row.z], atol=0.051)
    assert np.linalg.norm(np.array([row.x, row.y, row.z]) - truth["participants"]["01"]["target_t1w"]) <= 4.0
    assert f"({row.scalp_x:.1f}, {row.scalp_y:.1f}, {row.scalp_z:.1f}) mm" in plan
    # the export files that exist are named, the T1w they refer to is the one given in their coordsystem
    tms = out / "sub-01" / "tms"
    exports = sorted(p.name for p in tms.glob("sub-01_space-T1w_*")
                     if p.name not in ("sub-01_space-T1w_targets.tsv", "sub-01_space-T1w_targets.json",
                                       "sub-01_space-T1w_markers.json"))
    assert len(exports) == 4
    assert sorted(re.findall(r"data-plan='export'>([^<]+)<", plan)) == exports
    intended = json.loads((tms / "sub-01_space-T1w_coordsystem.json").read_text())["IntendedFor"]
    assert re.search(r"data-plan='t1w-file'>([^<]+)<", plan).group(1) == Path(intended).name
    # the dose of the head the scalp stage ran on, with its sign
    head_space = table_on_mesh(np.load(next(Path(mni_run[1]).rglob("scalp_mesh.npz")))["vertices"],
                               {SPACE: pd.read_csv(tms / f"sub-01_space-{SPACE}_targets.tsv", sep="\t"),
                                "T1w": t1w.reset_index()})
    assert head_space is not None
    dose = pd.read_csv(tms / f"sub-01_space-{head_space}_targets.tsv", sep="\t").set_index("name")
    assert f"<b>{dose.loc['connectivity', 'depth_adjustment_pct_mso']:+.1f} %</b>" in plan
    # the coil handle is told in words and as the table's vector
    assert "points posterior and lateral (to the left)" in plan
    assert f"({row.coil_yaxis_x:.2f}, {row.coil_yaxis_y:.2f}, {row.coil_yaxis_z:.2f}) in T1w" in plan
    # the input is named by what made it: the demo generator, not "fMRIPrep 0.1.0"
    citation = (out / "sub-01" / "log" / "CITATION.md").read_text()
    assert "tmstarget-synth" in citation and "fMRIPrep 0.1.0" not in citation
    assert "fMRIPrep 0.1.0" not in page and "bids:fmriprep:" not in _visible_text(page)


def test_colours_are_named_in_words(mni_run):
    out, _, _ = mni_run
    text = _visible_text((out / "sub-01.html").read_text())
    assert not re.search(r"#[0-9a-fA-F]{6}\b", text)
    assert "connectivity (red)" in text


def test_figure_names_keep_the_inputs_run_label_in_bids_order(mni_run):
    out, work, _ = mni_run
    bold = json.loads(next(Path(work).rglob("denoise.json")).read_text())["BoldFile"]
    run = re.search(r"_(run-[^_]+)_", Path(bold).name).group(1)
    carpets = [p.name for p in (out / "sub-01" / "figures").glob("*carpet*")]
    assert len(carpets) == 1 and f"_{run}_space-{SPACE}_desc-carpet_plot.png" in carpets[0]
    for name in (p.name for p in (out / "sub-01" / "figures").iterdir()):
        entities = [e.split("-")[0] for e in name.split("_")[:-1]]
        order = ["sub", "ses", "task", "acq", "dir", "run", "echo", "space", "desc"]
        assert [order.index(e) for e in entities] == sorted(order.index(e) for e in entities), name


def test_the_plan_shows_the_graphs_quality_warnings_each_once(mni_run, tmp_path):
    out, work, _ = mni_run
    recorded = ["Seed signal dropout: the sgACC seed's mean intensity is 0.21 x the brain median.",
                "The head T1w looks cropped at the top: the motor reference is on the image border."]

    def edit(meta):
        meta["QualityWarnings"] = recorded

    _, page = _rewrite(out, work, tmp_path, edit)
    plan = _plan(page)
    for note in recorded:
        assert plan.count(html.escape(note)) == 1  # both spaces' sidecars hold it: shown once
    assert "No warnings." not in plan


def test_reliability_in_words_with_a_radius_below_one_voxel(mni_run, tmp_path):
    out, work, _ = mni_run

    def edit(meta):
        meta["Reliability"] = {"Grade": "high", "GradeReason": "bootstrap 95 % radius 0.0 mm, split halves "
                               "0.0 mm apart: stable", "Bootstrap": {"Radius95_mm": 0.0, "MedianDistance_mm": 0.0,
                                                                     "Samples": 100, "ModalFrequency": 0.9},
                               "SplitHalf": {"Distance_mm": 0.0, "MapCorrelation": 0.8}}

    copy, page = _rewrite(out, work, tmp_path, edit)
    voxel = "< 1 voxel (4 mm)"
    assert f"<b>high</b>: bootstrap 95 % radius {html.escape(voxel)}" in _plan(page)
    reliability = page.split("<section id='reliability'>", 1)[1].split("</section>", 1)[0]
    assert reliability.count(html.escape(voxel)) >= 3 and html.escape(BOOTSTRAP_SCOPE) in reliability
    assert "0.0 mm" not in reliability and "Radius95_mm" not in reliability and "{'" not in reliability
    # data sufficiency in words, the sidecar's totals
    sufficiency = json.loads((copy / "sub-01" / "tms" / f"sub-01_space-{SPACE}_targets.json").read_text())["DataSufficiency"]
    assert f"{sufficiency['TotalRetainedVolumes']} volumes retained, {sufficiency['TotalRetainedTime_min']:.1f} min" in reliability
    assert reliability.count("<h3>") == len(set(re.findall(r"<h3>([^<]+)</h3>", reliability)))  # no heading twice


def test_the_head_figure_draws_the_coil_of_the_plan(mni_run, tmp_path):
    """The red figure-8 and handle arrow come from the coil axes columns: without them, far less red."""
    import matplotlib.image as mpimg

    from tmstarget.reports.head import plot_head

    out, work, _ = mni_run
    mesh = next(Path(work).rglob("scalp_mesh.npz"))
    table = pd.read_csv(out / "sub-01" / "tms" / f"sub-01_space-{SPACE}_targets.tsv", sep="\t", na_values="n/a")

    def red_pixels(targets, name):
        image = mpimg.imread(plot_head(mesh, targets, tmp_path / name))[..., :3]
        return int(((image[..., 0] > 0.7) & (image[..., 1] < 0.3) & (image[..., 2] < 0.3)).sum())

    with_coil = red_pixels(table, "with.png")
    without = red_pixels(table.drop(columns=[c for c in table if c.startswith("coil_")]), "without.png")
    assert with_coil > without + 500


# --------------------------------------------------------------------------------------------
# In a browser
# --------------------------------------------------------------------------------------------
def _chromium(url, tmp_path, *flags):
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    profile.mkdir()
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=10000", *flags, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless browser test needs Debian's chromium "
                    "(apt-get install -y chromium)")
def test_the_plan_is_on_the_first_screen_and_prints_on_one_a4_page(mni_run, tmp_path):
    out, _, _ = mni_run
    url = (out / "sub-01.html").resolve().as_uri()
    t1w = pd.read_csv(out / "sub-01" / "tms" / "sub-01_space-T1w_targets.tsv", sep="\t").set_index("name")
    row = t1w.loc["connectivity"]
    coordinates = f"({row.x:.1f}, {row.y:.1f}, {row.z:.1f}) mm"
    exports = [p.name for p in (out / "sub-01" / "tms").glob("sub-01_space-T1w_desc-*")]
    exports += [p.name for p in (out / "sub-01" / "tms").glob("sub-01_space-T1w_markers.tsv")]
    assert len(exports) == 3
    # a laptop screen: what is readable without scrolling, as laid out by the browser
    result = _chromium(url, tmp_path, "--dump-dom", "--window-size=1280,800")
    body = re.search(r"<body[^>]*>", result.stdout)
    assert body, result.stderr[-2000:]
    attributes = {k: html.unescape(v) for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(0))}
    first_screen = attributes["first-screen"]
    assert coordinates in first_screen
    for name in exports:
        assert name in first_screen, name
    assert attributes["wide-tables"] == "0"
    screenshot = tmp_path / "plan.png"
    _chromium(url, tmp_path, f"--screenshot={screenshot}", "--window-size=1280,800")
    assert screenshot.stat().st_size > 10000
    print(f"screenshot of the plan: {screenshot}")
    # printed: one A4 page that holds the same
    if not (PDFINFO and PDFTOTEXT):
        pytest.skip("counting PDF pages needs poppler-utils (apt-get install -y poppler-utils)")
    pdf = tmp_path / "plan.pdf"
    _chromium(url, tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    info = subprocess.run([PDFINFO, str(pdf)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Pages:\s+1$", info, flags=re.M), info
    assert "(A4)" in info, info
    text = subprocess.run([PDFTOTEXT, "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    flat = re.sub(r"\s+", "", text)
    assert re.sub(r"\s+", "", coordinates) in flat
    for name in exports:
        assert name in flat, name  # file names may wrap in the printed table, never go missing
