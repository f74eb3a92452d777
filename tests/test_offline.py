"""No network at run time: the command runs in a network namespace of its own (``unshare -n``: no
interface but a downed loopback), and an audit hook records any attempt to resolve a host name or
open an internet socket, which must stay empty."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED

SPACE = "MNI152NLin2009cAsym"

#: Runs the CLI module after installing an audit hook (inherited by forked Nipype workers) that
#: appends every DNS lookup and internet-socket connection to the file named in $NETWORK_LOG.
_AUDITED_CLI = """
import os, runpy, socket, sys
LOG = os.environ["NETWORK_LOG"]
NAMES = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"}
def hook(event, args):
    if event in NAMES or (event in ("socket.connect", "socket.sendto")
                          and args[0].family in (socket.AF_INET, socket.AF_INET6)):
        with open(LOG, "a") as log:
            log.write(f"{os.getpid()} {event} {args[1:] if event != 'socket.getaddrinfo' else args[:2]}\\n")
sys.addaudithook(hook)
sys.argv = ["tmstarget", *sys.argv[1:]]
runpy.run_module("bids_app.cli", run_name="__main__")
"""


def _offline_prefix():
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    if subprocess.run([unshare, "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -n is not permitted here (needs root or user namespaces)")
    return [unshare, "-n"]


def _run_offline(tmp_path, *argv):
    log = tmp_path / "network.log"
    templateflow = SHARED / "templateflow"
    env = dict(os.environ, NETWORK_LOG=str(log),
               # templates only from the seeded home (or an empty one): never downloaded
               TEMPLATEFLOW_HOME=str(templateflow if templateflow.is_dir() else tmp_path / "templateflow"),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                           os.environ.get("PYTHONPATH", "")]))
    env.pop("NIPYPE_NO_ET", None)  # the command must keep Nipype's telemetry off by itself
    result = subprocess.run([*_offline_prefix(), sys.executable, "-c", _AUDITED_CLI, *map(str, argv)],
                            capture_output=True, text=True, timeout=900, env=env)
    attempts = log.read_text().splitlines() if log.exists() else []
    return result, attempts


def test_participant_level_runs_without_network(one_run_dataset, mni_run, tmp_path):
    root, _ = one_run_dataset
    out = tmp_path / "out"
    result, attempts = _run_offline(tmp_path, root, out, "participant", "-w", tmp_path / "work",
                                    "--nprocs", "2")
    assert result.returncode == 0, result.stderr
    assert attempts == []
    reference, _, _ = mni_run
    name = f"sub-01/tms/sub-01_space-{SPACE}_targets.tsv"
    assert (out / name).read_bytes() == (reference / name).read_bytes()


def test_audit_hook_sees_a_network_attempt(tmp_path):
    """The detector works: a lookup made by the audited process is recorded (and fails offline)."""
    log = tmp_path / "network.log"
    code = _AUDITED_CLI.replace('runpy.run_module("bids_app.cli", run_name="__main__")',
                                "try:\n    socket.getaddrinfo('pypi.org', 443)\nexcept OSError:\n    pass")
    result = subprocess.run([*_offline_prefix(), sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, NETWORK_LOG=str(log)))
    assert result.returncode == 0, result.stderr
    assert "socket.getaddrinfo" in log.read_text()


def test_group_level_runs_without_network(one_run_dataset, mni_run, tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "bids_app.cli", "--help"], capture_output=True,
                               text=True, env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    if "group" not in help_text.stdout:
        pytest.skip("this version has no group level yet")
    root, _ = one_run_dataset
    participant_out, _, _ = mni_run
    out = tmp_path / "out"
    shutil.copytree(participant_out, out)
    result, attempts = _run_offline(tmp_path, root, out, "group", "-w", tmp_path / "work")
    assert result.returncode == 0, result.stderr
    assert attempts == []
