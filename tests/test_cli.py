"""Wrong use and bad data: one-line errors, exit codes 2 (usage) and 1 (failure), nothing half-written."""

import pytest

from tmstarget import __version__, cli
from helpers import run_app


def _error_lines(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return [line for line in err if "error" in line]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out


def test_help_lists_every_choice_with_its_description(capsys):
    from tmstarget.config import CONFOUND_STRATEGIES, TARGET_METHODS

    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for choice in [*CONFOUND_STRATEGIES, *TARGET_METHODS]:
        assert f"{choice}: " in text
    assert "most negative 10 % of search-region voxels" in text  # '%' survives argparse


def test_missing_bids_dir_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_app(tmp_path / "nope", tmp_path / "out")
    assert exc.value.code == 2
    assert "nope does not exist" in _error_lines(capsys)[-1]


def test_output_inside_input_is_refused(one_run_dataset, capsys):
    root, _ = one_run_dataset
    for output in (root, root / "derivatives" / "tmstarget"):
        with pytest.raises(SystemExit) as exc:
            run_app(root, output)
        assert exc.value.code == 2
        assert "outside the input dataset" in _error_lines(capsys)[-1]
    assert not (root / "derivatives").exists()


def test_label_escaping_a_folder_is_refused(one_run_dataset, tmp_path, capsys):
    root, _ = one_run_dataset
    with pytest.raises(SystemExit) as exc:
        run_app(root, tmp_path / "out", "--participant-label", "../x")
    assert exc.value.code == 2
    assert "invalid participant label" in _error_lines(capsys)[-1]


def test_unknown_participant_names_the_available_ones(one_run_dataset, tmp_path, capsys):
    root, _ = one_run_dataset
    assert run_app(root, tmp_path / "out", "--participant-label", "sub-99") == 1
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "99 not found" in lines[0] and "available: 01" in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_space_names_the_fix(one_run_dataset, tmp_path, capsys):
    root, _ = one_run_dataset
    assert run_app(root, tmp_path / "out", "--space", "MNI152NLin6Asym") == 1
    (line,) = _error_lines(capsys)
    assert "no preprocessed BOLD" in line and "--output-spaces MNI152NLin6Asym" in line


def test_too_little_data_fails_with_the_numbers_and_writes_no_target(one_run_dataset, tmp_path, capsys):
    root, truth = one_run_dataset
    retained_s = (truth["n_volumes"] - truth["n_non_steady"]) * truth["tr"]
    assert run_app(root, tmp_path / "out", "--min-time", str(retained_s + 60),
                   work_dir=tmp_path / "work") == 1
    (line,) = _error_lines(capsys)
    assert "too little data" in line and f"{retained_s:.0f} s" in line
    assert not list((tmp_path / "out").rglob("*targets.tsv"))
