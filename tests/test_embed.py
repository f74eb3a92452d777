"""The science workflow inside another Nipype pipeline, without the command line (issue 12).

An outer workflow finds a participant's fMRIPrep files in a Function node (as a user's pipeline
would, here by fMRIPrep's file names rather than pybids), feeds them to
:func:`tmstarget.workflows.base.init_tmstarget_wf` and reads the target from its ``outputnode`` in
another Function node. The planted target of the generated dataset must be recovered.
"""

import json

import numpy as np
import pytest
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from tmstarget.workflows.base import init_tmstarget_wf

#: Each test here runs the pipeline (or a dataset generation) end to end.
pytestmark = pytest.mark.slow

SPACE = "MNI152NLin2009cAsym"


def find_fmriprep_files(fmriprep_dir, subject, space):
    """A user's own step: the files of one participant by fMRIPrep's names (runs sorted)."""
    import json
    from pathlib import Path

    root = Path(fmriprep_dir) / f"sub-{subject}"
    bold_files = sorted(str(p) for p in root.rglob(f"*_space-{space}_desc-preproc_bold.nii.gz"))
    mask_files = [b.replace("_desc-preproc_bold.nii.gz", "_desc-brain_mask.nii.gz") for b in bold_files]
    t_rs = [json.loads(Path(b.replace(".nii.gz", ".json")).read_text())["RepetitionTime"]
            for b in bold_files]
    anat = root / "anat"
    gm_file = str(anat / f"sub-{subject}_space-{space}_label-GM_probseg.nii.gz")
    t1w_file = str(anat / f"sub-{subject}_space-{space}_desc-preproc_T1w.nii.gz")
    return bold_files, mask_files, t_rs, gm_file, t1w_file


def connectivity_target(targets_file):
    """A user's next step: the connectivity row of the targets table, world mm."""
    import pandas as pd

    row = pd.read_csv(targets_file, sep="\t").set_index("name").loc["connectivity"]
    return [float(row.x), float(row.y), float(row.z)]


def received(**outputs):
    """What the outer pipeline received from the outputnode."""
    return outputs


@pytest.mark.slow
def test_embedded_workflow_recovers_the_planted_target(three_run_dataset, tmp_path):
    root, truth = three_run_dataset
    outer = pe.Workflow(name="my_pipeline", base_dir=str(tmp_path / "work"))
    files = pe.Node(niu.Function(input_names=["fmriprep_dir", "subject", "space"],
                                 output_names=["bold_files", "mask_files", "t_rs", "gm_file", "t1w_file"],
                                 function=find_fmriprep_files), name="find_files")
    files.inputs.fmriprep_dir = str(root)
    files.inputs.subject = "01"
    files.inputs.space = SPACE
    n_runs = len(list(root.rglob(f"*_space-{SPACE}_desc-preproc_bold.nii.gz")))
    assert n_runs == 4  # two sessions of two runs: each run must get its own files
    science = init_tmstarget_wf(n_runs, bootstrap_samples=20)
    target = pe.Node(niu.Function(input_names=["targets_file"], output_names=["xyz"],
                                  function=connectivity_target), name="read_target")
    # (an IdentityInterface would be removed from the executed graph by Nipype: a Function keeps
    # what the outer pipeline received)
    fields = ["xyz", "info_files", "reliability_file", "quality_warnings", "bold_files", "targets_file"]
    sink = pe.Node(niu.Function(input_names=fields, output_names=["received"], function=received),
                   name="collect")
    outer.connect([
        (files, science, [(f, f"inputnode.{f}") for f in ("bold_files", "mask_files", "t_rs",
                                                          "gm_file", "t1w_file")]),
        (science, target, [("outputnode.targets_file", "targets_file")]),
        (science, sink, [("outputnode.targets_file", "targets_file")]),
        (target, sink, [("xyz", "xyz")]),
        (files, sink, [("bold_files", "bold_files")]),
        (science, sink, [("outputnode.info_files", "info_files"),
                         ("outputnode.reliability_file", "reliability_file"),
                         ("outputnode.quality_warnings", "quality_warnings")]),
    ])
    graph = outer.run(plugin="Linear")
    (result,) = [n.result.outputs.received for n in graph.nodes() if n.name == "collect"]

    assert np.linalg.norm(np.array(result['xyz']) - np.array(truth["target_mni"])) <= 4.0
    # run i of the outputs is run i of the inputs
    assert [json.loads(open(f).read())["BoldFile"] for f in result['info_files']] == result['bold_files']
    assert json.loads(open(result['reliability_file']).read())["Bootstrap"]["Samples"] == 20
    assert isinstance(result['quality_warnings'], list)
    assert all(isinstance(w, str) and "\n" not in w for w in result['quality_warnings'])
    # the scalp stage ran on the T1w given: the comparators are in the same table
    table = result["targets_file"]
    assert {"connectivity", "F3_beam", "F3_1020", "5cm"} <= {line.split("\t")[0] for line in open(table)}
