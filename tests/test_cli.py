"""Wrong use and bad data: one-line errors, exit codes 2 (usage) and 1 (failure), nothing half-written."""

import json
import subprocess
import sys

import pytest

from tmstarget import __version__, cli
from helpers import cli_environment, run_app


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


# --------------------------------------------------------------------------------------------
# flags: no prefix matching; fMRIPrep's and XCP-D's spellings with their meanings and units
# --------------------------------------------------------------------------------------------
def _parse(*flags):
    return cli.build_parser().parse_args(["in", "out", "participant", *flags])


@pytest.mark.parametrize("flags", [["--mem-g", "8"], ["--mem-", "8"], ["--bootstrap", "0"],
                                   ["--fd-thresh", "0.5"], ["--nproc", "2"], ["--participant", "01"],
                                   ["--mem-gb=8", "--mem", "8000"]],
                         ids=["mem-g", "mem-", "bootstrap", "fd-thresh", "nproc", "participant", "both-mems"])
def test_abbreviated_or_conflicting_flags_are_refused(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse(*flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert ("not allowed with argument" in err if flags[0] == "--mem-gb=8" else
            f"unrecognized arguments: {flags[0]}" in err)


@pytest.mark.parametrize("flag", ["--nprocs", "--nthreads", "--n-cpus", "--n_cpus"])
def test_process_count_spellings(flag):
    assert _parse(flag, "3").nprocs == 3


@pytest.mark.parametrize("flags,gigabytes", [
    (["--mem", "8000"], 8.0),  # fMRIPrep: megabytes
    (["--mem-mb", "8000"], 8.0),
    (["--mem_mb", "500"], 0.5),
    (["--mem", "16G"], 16.0), (["--mem", "16GB"], 16.0), (["--mem", "1t"], 1000.0),
    (["--mem", "8000M"], 8.0),
    (["--mem-gb", "8"], 8.0),
    ([], None),
])
def test_memory_spellings_and_units(flags, gigabytes):
    assert _parse(*flags).mem_gb == gigabytes


@pytest.mark.parametrize("text", ["8 GB of RAM", "-5", "0", "lots"])
def test_memory_that_is_not_a_size_is_refused(text, capsys):
    with pytest.raises(SystemExit) as exc:
        _parse("--mem", text)
    assert exc.value.code == 2 and "--mem" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--skip-bids-validation", "--skip_bids_validation", "--notrack"])
def test_fmriprep_no_op_flags_are_accepted_and_documented(flag, capsys):
    _parse(flag)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert flag in help_text and "does nothing" in help_text


def test_memory_reaches_the_scheduler_in_gigabytes(one_run_dataset, tmp_path, monkeypatch):
    """--mem 4000 (MB) is handed to Nipype's MultiProc as memory_gb=4, not 4000."""
    from nipype.pipeline.engine import Workflow

    root, _ = one_run_dataset
    seen = {}

    def fake_run(self, plugin=None, plugin_args=None, **kwargs):
        # the MultiProc scheduler instance tmstarget hands to Nipype (tmstarget.execution)
        from nipype.pipeline.plugins import MultiProcPlugin

        seen.update(multiproc=isinstance(plugin, MultiProcPlugin), n_procs=plugin.processors,
                    memory_gb=plugin.memory_gb, raise_insufficient=plugin.raise_insufficient)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(Workflow, "run", fake_run)
    assert run_app(root, tmp_path / "out", "--nthreads", "2", "--mem", "4000",
                   work_dir=tmp_path / "work") == 1
    assert seen == {"multiproc": True, "n_procs": 2, "raise_insufficient": False, "memory_gb": 4.0}


#: The command line, stopped where the graph would be built: what its main process holds then.
_UP_TO_THE_GRAPH = """
import json, sys
from tmstarget import cli

seen = {}

def stop(collected, options, output_dir, source_dir, work_dir, args):
    seen.update(pybids_here="bids" in sys.modules, source_dir=str(source_dir),
                runs=[[run.bold for run in inputs.runs] for inputs in collected])
    raise RuntimeError("stopped by the test")

cli.run_participants = stop
cli.main(sys.argv[1:])
print(json.dumps(seen))
"""


@pytest.mark.parametrize("nprocs", ["1", "2"])
def test_with_two_cpus_the_index_is_made_beside_the_imports(one_run_dataset, tmp_path, nprocs):
    """With a second CPU, pybids' index is made in a forked process while the main one imports
    the graph: the main process never imports pybids (nor holds a large dataset's index while
    the steps run), and receives the inputs collected there; with one CPU both are done here."""
    root, _ = one_run_dataset
    done = subprocess.run([sys.executable, "-c", _UP_TO_THE_GRAPH, str(root), str(tmp_path / "out"),
                           "participant", "-w", str(tmp_path / "work"), "--nprocs", nprocs],
                          capture_output=True, text=True, env=cli_environment(), timeout=300)
    assert "stopped by the test" in done.stderr, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    bold = sorted(root.resolve().rglob("*_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"))
    assert seen == {"pybids_here": nprocs == "1", "source_dir": str(root.resolve()),
                    "runs": [[str(path) for path in bold]]}


# --------------------------------------------------------------------------------------------
# the console
# --------------------------------------------------------------------------------------------
def test_console_shows_the_demo_distance_and_the_runs_as_named(mni_run, one_run_dataset, tmp_path,
                                                               capsys, caplog):
    """On the demo dataset (it holds the truth file) the console says how far the found target
    is from the planted one, in each space; steps name the run as its file does (run-1)."""
    import logging

    import numpy as np

    from helpers import connectivity_row

    root, truth = one_run_dataset
    _, work, _ = mni_run
    caplog.set_level(logging.INFO, logger="tmstarget")
    assert run_app(root, tmp_path / "out", work_dir=work) == 0
    out = capsys.readouterr().out
    for space, planted in (("MNI152NLin2009cAsym", truth["target_mni"]),
                           ("T1w", truth["participants"]["01"]["target_t1w"])):
        row = connectivity_row(tmp_path / "out", space)
        distance = np.linalg.norm(np.array([row.x, row.y, row.z]) - planted)
        x, y, z = planted
        assert (f"demo: planted at ({x:.1f}, {y:.1f}, {z:.1f}) mm, found {distance:.1f} mm from it"
                in out)
    steps = [r.getMessage() for r in caplog.records if "denoise" in r.getMessage()]
    assert steps and all(" run-1 denoise" in m for m in steps), steps
    assert "run-01" not in " ".join(r.getMessage() for r in caplog.records)


def test_no_demo_line_without_the_truth_file(tmp_path):
    assert cli._planted_targets(tmp_path, "01") == {}


def test_no_bootstrap_says_why_there_is_no_grade(one_run_dataset, tmp_path, capsys):
    import json

    root, _ = one_run_dataset
    # its own work dir: in the shared one (mni_run) the reliability step would be replaced
    assert run_app(root, tmp_path / "out", "--bootstrap-samples", "0", "--no-report",
                   work_dir=tmp_path / "work") == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if "reliability:" in x]
    assert "not graded" in line and "--bootstrap-samples 0" in line
    sidecar = json.loads((tmp_path / "out" / "sub-01" / "tms" /
                          "sub-01_space-MNI152NLin2009cAsym_targets.json").read_text())
    reliability = sidecar["Reliability"]
    assert reliability["Grade"] is None and "--bootstrap-samples 0" in reliability["GradeReason"]
    assert "Bootstrap" not in reliability and reliability["SplitHalf"]["Distance_mm"] >= 0


def test_group_of_fewer_participants_says_it_replaces_a_larger_one(tmp_path, monkeypatch, caplog):
    """A group run on a subset after a group run on everyone says who is no longer in the
    group outputs (tmstarget.group writes one set of group outputs per output folder)."""
    import tmstarget.group

    out = tmp_path / "out"
    (tmp_path / "in").mkdir()

    def fake_group(output_dir, labels):
        labels = labels or ["01", "02", "03"]
        (out / "group").mkdir(parents=True, exist_ok=True)
        (out / "group" / "group_targets.tsv").write_text(
            "participant_id\tname\n" + "".join(f"sub-{x}\tconnectivity\n" for x in labels))
        return {"n_participants": len(labels), "report": out / "group.html",
                "targets": out / "group" / "group_targets.tsv"}

    monkeypatch.setattr(tmstarget.group, "run_group", fake_group)
    assert cli.main([str(tmp_path / "in"), str(out), "group"]) == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert cli.main([str(tmp_path / "in"), str(out), "group", "--participant-label", "02"]) == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "sub-01, sub-03 of the earlier group run are no longer" in warning
    assert "now hold sub-02 only" in warning
