"""A participant of a large fMRIPrep dataset is collected as if it were alone (no indexing tax).

The tree is the benchmark's (``benchmarks/large_tree.py``): fillers of empty files shaped like
fMRIPrep 23 outputs (sessions, several spaces, surfaces, CIFTI, figures, reports) around one real
synthetic participant. It lies below folders named ``perf/func``, like datatypes, which pybids
took as the datatype of every file (no BOLD found). Timing goals are in the benchmark, not here.
"""

import dataclasses
import re
import sys
from pathlib import Path

import pytest

from tmstarget import collect
from tmstarget.collect import InputError, collect_participant, load_layout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from large_tree import filler_files, make_large_tree  # noqa: E402


def relative_inputs(inputs, root):
    """The collected inputs with every path relative to the dataset root (comparable across trees)."""
    def rel(value):
        if isinstance(value, str) and value.startswith(str(root)):
            return Path(value).relative_to(root).as_posix()
        if isinstance(value, list):
            return [rel(v) for v in value]
        if isinstance(value, dict):
            return {k: rel(v) for k, v in value.items()}
        return value
    return {k: rel(v) for k, v in dataclasses.asdict(inputs).items()}


@pytest.fixture(scope="module")
def large_tree(one_run_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("scale") / "perf" / "func" / "fmriprep"
    make_large_tree(root, 300, real_dataset=one_run_dataset[0])
    return root


def test_participant_of_a_large_tree_is_found_as_alone(one_run_dataset, large_tree):
    alone = one_run_dataset[0]
    expected = relative_inputs(collect_participant(load_layout(alone, ["01"]), "01"), alone)
    found = relative_inputs(collect_participant(load_layout(large_tree, ["01"]), "01"), large_tree)
    assert found == expected
    assert found["runs"] and found["t1w"] and found["gm"] and found["to_other_xfm"]


def test_only_the_selected_participant_is_indexed(large_tree):
    layout = load_layout(large_tree, ["01"])
    indexed = sorted(Path(f.path).relative_to(large_tree).as_posix() for f in layout.get())
    # What the index should hold: the participant's files and the dataset description, nothing
    # of the 299 others, no figures, reports or surfaces.
    on_disk = sorted(p.relative_to(large_tree).as_posix() for p in (large_tree / "sub-01").rglob("*")
                     if p.is_file() and not re.search(r"/figures/|\.(html|svg|png|gii)$", p.as_posix()))
    assert indexed == sorted(on_disk + ["dataset_description.json"])
    assert layout.get_subjects() == ["01"]
    # the datatype comes from the folder inside the participant, not from perf/func above it
    assert {f.entities.get("datatype") for f in layout.get(suffix="bold")} == {"func"}


def test_every_participant_without_a_selection_but_no_figures_or_surfaces(tmp_path):
    root = tmp_path / "fmriprep"
    make_large_tree(root, 3)
    layout = load_layout(root)
    assert layout.get_subjects() == ["0002", "0003", "0004"]
    skipped = r"/figures/|/log/|\.(html|svg|gii)$|dtseries"
    kept = [f for f in filler_files("0002") if not re.search(skipped, f)]
    assert len(layout.get(subject="0002")) == len(kept)


def test_a_missing_participant_is_named_with_those_available(large_tree):
    with pytest.raises(InputError, match=r"participant\(s\) 9999 not found .*available: 0002, 0003"):
        load_layout(large_tree, ["9999"])


def test_bids_database_dir_is_built_once_and_reused(one_run_dataset, tmp_path, monkeypatch):
    root = tmp_path / "func" / "fmriprep"
    make_large_tree(root, 6, real_dataset=one_run_dataset[0])
    database = tmp_path / "db"
    built = load_layout(root, ["01"], database)
    assert (database / collect.DATABASE_FILE).is_file()
    # built over every participant, so that any array task can use it
    assert built.get_subjects() == ["01", "0002", "0003", "0004", "0005", "0006"]
    first = relative_inputs(collect_participant(built, "01"), root)

    def no_indexing(*args, **kwargs):
        raise AssertionError("the dataset was indexed again instead of reading --bids-database-dir")

    monkeypatch.setattr("bids.layout.index.BIDSLayoutIndexer.__call__", no_indexing)
    reused = load_layout(root, ["01"], database)
    assert relative_inputs(collect_participant(reused, "01"), root) == first
    alone = one_run_dataset[0]
    monkeypatch.undo()
    assert first == relative_inputs(collect_participant(load_layout(alone, ["01"]), "01"), alone)


def test_bids_database_dir_of_another_dataset_or_inside_the_input_is_refused(one_run_dataset, tmp_path):
    root = one_run_dataset[0]
    other = tmp_path / "other" / "fmriprep"
    make_large_tree(other, 2)
    load_layout(other, database_dir=tmp_path / "db")
    with pytest.raises(InputError, match="indexes .*other/fmriprep, not"):
        load_layout(root, ["01"], tmp_path / "db")
    with pytest.raises(InputError, match="inside the fMRIPrep folder"):
        load_layout(root, ["01"], root / "db")
    assert not (root / "db").exists()


@pytest.mark.slow  # subprocesses
def test_slurm_recipe_builds_the_index_once_and_the_tasks_read_it(one_run_dataset, tmp_path):
    import os
    import shlex
    import subprocess

    slurm = Path(__file__).resolve().parents[1] / "scripts" / "slurm"
    root, database = one_run_dataset[0], tmp_path / "db"
    env = {**os.environ, "TMSTARGET_PYTHON": sys.executable}
    subprocess.run(["bash", str(slurm / "index.sbatch"), str(root), str(database)], env=env, check=True)
    assert (database / collect.DATABASE_FILE).is_file()
    result = subprocess.run(["bash", str(slurm / "participant.sbatch"), str(root), "out", "work"],
                            env={**env, "TMSTARGET": "echo", "SLURM_ARRAY_TASK_ID": "1",
                                 "BIDS_DATABASE_DIR": str(database)},
                            capture_output=True, text=True, check=True)
    argv = shlex.split(result.stdout.splitlines()[-1])
    assert argv[argv.index("--bids-database-dir") + 1] == str(database)
