"""Shared fixtures: synthetic fMRIPrep datasets and pipeline runs, made once per test session."""

import pytest

from helpers import FAST, run_app
from tmstarget.synthetic import make_fmriprep_dataset

#: Fixtures that generate a dataset or run the whole pipeline: a test that uses one is ``slow``
#: (the fast loop, ``pytest -m "not slow"``, leaves it out). Tests that make their own dataset or
#: start a subprocess carry the marker themselves.
SLOW_FIXTURES = {"one_run_dataset", "three_run_dataset", "mni_run", "strong_and_weak", "cohort"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def one_run_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_run") / "fmriprep"
    truth = make_fmriprep_dataset(root, participants=("01",), n_runs=1,
                                  spaces=("MNI152NLin2009cAsym", "T1w"), **FAST)
    return root, truth


@pytest.fixture(scope="session")
def three_run_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("three_runs") / "fmriprep"
    truth = make_fmriprep_dataset(root, participants=("01",), sessions=("1", "2"), n_runs=2,
                                  seed=3, **FAST)
    return root, truth


@pytest.fixture(scope="session")
def mni_run(one_run_dataset, tmp_path_factory):
    """The default pipeline on the one-run dataset in MNI152NLin2009cAsym."""
    root, truth = one_run_dataset
    base = tmp_path_factory.mktemp("mni_run")
    assert run_app(root, base / "out", work_dir=base / "work") == 0
    return base / "out", base / "work", truth
