"""What the outputs say made the input, and the recorded parameters of the target methods."""

import json

import pytest

from tmstarget.config import Options
from tmstarget.derivatives import source_link, write_dataset_description


@pytest.mark.parametrize("generated_by,link", [
    ([{"Name": "fMRIPrep", "Version": "23.2.0"}], "fmriprep"),
    ([{"Name": "tmstarget-synth", "Version": "0.1.0"}], "tmstarget-synth"),
    ([{"Name": "My Pipeline 2"}], "my-pipeline-2"),
    (None, "input"),
])
def test_the_input_is_linked_by_what_made_it(tmp_path, generated_by, link):
    source, out = tmp_path / "source", tmp_path / "out"
    source.mkdir()
    description = {"Name": "input", "BIDSVersion": "1.9.0", "DatasetType": "derivative"}
    if generated_by:
        description["GeneratedBy"] = generated_by
    (source / "dataset_description.json").write_text(json.dumps(description))
    assert source_link(source) == link
    write_dataset_description(out, source)
    written = json.loads((out / "dataset_description.json").read_text())
    assert written["SourceDatasets"][0]["URL"] == f"bids:{link}:"
    assert list(written["DatasetLinks"]) == [link]
    assert (out / written["DatasetLinks"][link]).resolve() == source.resolve()


@pytest.mark.parametrize("method,recorded", [("cluster", 10.0), ("snt", 10.0), ("peak", None)])
def test_cluster_percentile_recorded_for_the_methods_that_use_it(method, recorded):
    selection = Options(target_method=method).parameters()["TargetSelection"]
    assert selection["ClusterPercentile"] == recorded
