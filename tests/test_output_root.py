"""Files at the output root are shared by participants run at the same time (a SLURM array)."""

import json
import multiprocessing
import os

import pytest

from tmstarget.derivatives import BIDSIGNORE, atomic_write, write_dataset_description

WRITERS = 6


def _participant(output_dir, source_dir, barrier, reads):
    """One participant's start: write the root files, then read them back many times."""
    barrier.wait()  # all writers start together
    write_dataset_description(output_dir, source_dir, "23.2.0")
    for _ in range(reads):
        json.loads((output_dir / "dataset_description.json").read_text())  # raises on a partial file


def test_concurrent_participants_write_the_root_files_once(tmp_path):
    source, out = tmp_path / "fmriprep", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    (source / "dataset_description.json").write_text(json.dumps({
        "Name": "fMRIPrep outputs", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}]}))
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(WRITERS)
    workers = [context.Process(target=_participant, args=(out, source, barrier, 200))
               for _ in range(WRITERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * WRITERS

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    # No absolute path of this machine: a BIDS URI, and the link relative to the output folder.
    assert description["SourceDatasets"] == [{"URL": "bids:fmriprep:", "Version": "23.2.0"}]
    assert description["DatasetLinks"] == {"fmriprep": "../fmriprep"}
    assert (out / description["DatasetLinks"]["fmriprep"]).resolve() == source.resolve()
    assert (out / ".bidsignore").read_text().split() == list(BIDSIGNORE)
    # No temporary file of any writer is left beside them.
    assert sorted(p.name for p in out.iterdir()) == [".bidsignore", "dataset_description.json"]


def test_root_files_are_never_replaced_and_a_missing_one_is_completed(tmp_path):
    source, out = tmp_path / "fmriprep", tmp_path / "out"
    source.mkdir()
    write_dataset_description(out, source)
    first = (out / "dataset_description.json").stat().st_ino
    # A run that stopped after the description and before .bidsignore: the next one completes it,
    # and leaves the description it found (same inode: not rewritten).
    (out / ".bidsignore").unlink()
    write_dataset_description(out, source, "other version")
    assert (out / "dataset_description.json").stat().st_ino == first
    assert "Version" not in json.loads((out / "dataset_description.json").read_text())["SourceDatasets"][0]
    assert (out / ".bidsignore").read_text().split() == list(BIDSIGNORE)


def test_write_once_without_hard_links(tmp_path, monkeypatch):
    """A file system without hard links (os.link raises EPERM) still gets the file, atomically."""
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("first"), once=True)
    atomic_write(path, lambda tmp: open(tmp, "w").write("second"), once=True)
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_write_once_keeps_the_first_complete_file(tmp_path):
    path = tmp_path / "root.json"
    atomic_write(path, lambda tmp: open(tmp, "w").write("first"), once=True)
    atomic_write(path, lambda tmp: open(tmp, "w").write("second"), once=True)
    assert path.read_text() == "first"
    atomic_write(path, lambda tmp: open(tmp, "w").write("replaced"))  # the default replaces
    assert path.read_text() == "replaced"


@pytest.mark.parametrize("once", [False, True])
def test_a_failing_writer_leaves_nothing(tmp_path, once):
    def broken(tmp):
        open(tmp, "w").write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "x.json", broken, once=once)
    assert list(tmp_path.iterdir()) == []
