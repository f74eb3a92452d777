"""One warning channel (issue 16): every step's warnings are collected by the graph, written as
``QualityWarnings`` in the targets sidecar and printed once on the console."""

import json
import subprocess

import pytest

from helpers import cli_command, cli_environment, copy_with_a_short_run
from tmstarget.workflows.quality import collect_warnings, quality_warnings, read_warnings

MNI = "MNI152NLin2009cAsym"


def _run(name, volumes=160, retained=150, dof=80.0, used=True):
    return {"BoldFile": f"/data/sub-01/func/{name}", "Volumes": volumes, "RetainedVolumes": retained,
            "DegreesOfFreedom": dof, "Used": used}


def test_quality_rules_warn_on_what_a_reviewer_must_see():
    runs = [_run("a_bold.nii.gz"), _run("b_bold.nii.gz", retained=79), _run("c_bold.nii.gz", dof=0.0)]
    found = quality_warnings(runs, connectivity_z=0.1, reliability={"Grade": "low", "GradeReason": "why"})
    assert len(found) == 4
    assert "b_bold.nii.gz: only 79 of 160 volumes retained" in found[0]
    assert found[1].startswith("c_bold.nii.gz: no degrees of freedom left")
    assert "not anticorrelated" in found[2] and "0.10" in found[2]
    assert found[3] == "low target reliability: why"
    # on the boundaries: half retained, a negative z, a moderate grade say nothing
    assert quality_warnings([_run("a", retained=80)], -0.01, {"Grade": "moderate", "GradeReason": ""}) == []
    # a dropped run is reported by CombineRuns, not twice
    assert quality_warnings([_run("a", retained=10, dof=-3.0, used=False)]) == []


def test_collection_reads_both_formats_keeps_order_and_says_each_once(tmp_path):
    listed = tmp_path / "warnings.json"
    listed.write_text(json.dumps(["first", "second"]))
    step = tmp_path / "step.json"
    step.write_text(json.dumps({"Values": 1, "QualityWarnings": ["second", "third\n  continued"]}))
    quiet = tmp_path / "quiet.json"
    quiet.write_text(json.dumps({"Values": 1}))
    assert read_warnings(quiet) == []
    assert collect_warnings([listed, step, quiet], notes=["zeroth"]) == [
        "zeroth", "first", "second", "third continued"]
    step.write_text(json.dumps({"QualityWarnings": "not a list"}))
    with pytest.raises(ValueError, match="list of strings"):
        collect_warnings([step])


@pytest.mark.slow
def test_a_dropped_run_reaches_the_sidecar_and_the_console_once(three_run_dataset, tmp_path):
    """CombineRuns drops a run cut to 80 volumes (160 s < --min-time 240 s): its warning is in the
    targets sidecar once and on the console (the app's stderr, default verbosity) once."""
    root, _ = three_run_dataset
    data = tmp_path / "fmriprep"
    bold = copy_with_a_short_run(root, data, n_volumes=80)

    out = tmp_path / "out"
    done = subprocess.run(cli_command(data, out, tmp_path / "work", "--bootstrap-samples", "20",
                                      "--no-report"), env=cli_environment(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    sidecar = json.loads((out / "sub-01" / "tms" / f"sub-01_space-{MNI}_targets.json").read_text())
    dropped = [w for w in sidecar["QualityWarnings"] if bold.name in w]
    assert len(dropped) == 1 and "was dropped" in dropped[0] and "--min-time 240 s" in dropped[0]
    assert all(isinstance(w, str) and "\n" not in w for w in sidecar["QualityWarnings"])
    console = [line for line in done.stderr.splitlines() if bold.name in line]
    assert len(console) == 1, done.stderr
    assert "WARNING" in console[0] and "sub-01" in console[0] and dropped[0] in console[0]
    # every collected warning is on the console, once
    for warning in sidecar["QualityWarnings"]:
        assert sum(warning in line for line in done.stderr.splitlines()) == 1, warning


@pytest.mark.parametrize("native_head", [False, True])
def test_every_step_that_writes_warnings_is_collected(native_head):
    """A step whose interface writes a ``warnings_file`` (the scalp mesh's skull-stripped head,
    the projection's points on the cut of the field of view, ...) is one of WARNING_SOURCES and
    feeds CollectWarnings: a new step cannot keep its warnings to itself."""
    from nipype.interfaces.base import SimpleInterface

    from tmstarget.workflows.base import WARNING_SOURCES, init_tmstarget_wf

    workflow = init_tmstarget_wf(space=MNI, native_head=native_head,
                                 other_space="T1w" if native_head else None)
    gather = workflow.get_node("merge_warnings")
    feeding = {source.name for source, target in workflow._graph.edges() if target is gather}
    writers = {name for name in workflow.list_node_names()  # steps, not the identity nodes
               if isinstance(workflow.get_node(name).interface, SimpleInterface)
               and "warnings_file" in workflow.get_node(name).outputs.copyable_trait_names()
               and name != "collect_warnings"}
    assert "scalp_mesh" in writers and "scalp_projection" in writers
    assert writers <= feeding
    assert feeding == {name for name, _ in WARNING_SOURCES} & set(workflow.list_node_names())
