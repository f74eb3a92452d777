"""One run in a sandbox, checked four ways: no network, nothing written outside the output, work and
temporary folders, the input dataset untouched, and outputs byte-identical to another run.

The command runs as a subprocess

- in a network namespace of its own (``unshare -n``: no interface but a downed loopback), when the
  machine permits it;
- under ``strace``, when available, which records every system call that can write a file;
- with an audit hook (inherited by forked Nipype workers) that records every host-name lookup and
  internet-socket connection, so an attempt is seen even where it would have failed silently;
- with a HOME, TMPDIR and current folder of its own, and templates only from a seeded
  ``TEMPLATEFLOW_HOME`` (or an empty one), never downloaded.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import SHARED, assert_same_outputs, cli_command, cli_environment, tree_digest

#: Each test here runs the pipeline (or a dataset generation) end to end.
pytestmark = pytest.mark.slow

SPACE = "MNI152NLin2009cAsym"

#: Installs the audit hook, then runs the CLI module with the remaining arguments.
_AUDITED = """
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
runpy.run_module("tmstarget.cli", run_name="__main__")
"""

#: write-like system calls followed by strace; opens are kept only when they can write
_TRACED = ("open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,link,"
           "linkat,symlink,symlinkat,truncate,chmod,fchmodat,utimensat")
_WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")


def _works(*argv):
    return shutil.which(argv[0]) is not None and subprocess.run(argv, capture_output=True).returncode == 0


def _sandboxed(argv, sandbox, trace=None):
    """Run ``tmstarget argv`` in the sandbox; return the process result and the network attempts."""
    log = sandbox / "network.log"
    templateflow = SHARED / "templateflow"
    env = cli_environment(NETWORK_LOG=str(log), HOME=str(sandbox / "home"), TMPDIR=str(sandbox / "tmp"),
                          TEMPLATEFLOW_HOME=str(templateflow if templateflow.is_dir()
                                                else sandbox / "templateflow"))
    env.pop("NIPYPE_NO_ET")  # the command must keep Nipype's telemetry off by itself
    prefix = ["unshare", "-n"] if _works("unshare", "-n", "true") else []
    if trace is not None:
        prefix += ["strace", "-f", "-qq", "-y", "-e", f"trace={_TRACED}", "-e", "status=successful",
                   "-o", str(trace)]
    result = subprocess.run([*prefix, sys.executable, "-c", _AUDITED, *map(str, argv)], cwd=sandbox / "cwd",
                            capture_output=True, text=True, timeout=900, env=env)
    return result, (log.read_text().splitlines() if log.exists() else []), bool(prefix[:1] == ["unshare"])


def written_paths(trace_lines):
    """Paths a traced process tree wrote to, created, renamed, removed or changed (absolute)."""
    paths = []
    for line in trace_lines:
        match = re.match(r"\d+\s+(\w+)\((.*)\)\s+= (\d+)(?:<(.*)>)?", line)
        if not match:
            continue  # signals, exits
        call, args, _, fd_path = match.groups()
        if call in ("open", "openat", "creat"):
            if call != "creat" and not _WRITE_FLAGS.search(args):
                continue
            paths.append(fd_path)
            continue
        cwd = re.match(r"AT_FDCWD<([^>]*)>", args)
        for name in re.findall(r'"([^"]*)"', args):
            paths.append(name if name.startswith("/") else
                         os.path.join(cwd.group(1), name) if cwd else f"(relative) {name}")
    return paths


@pytest.fixture(scope="module")
def sandboxed_run(one_run_dataset, tmp_path_factory):
    """The participant level on the one-run dataset, in the sandbox, with two Nipype processes."""
    root, _ = one_run_dataset
    sandbox = tmp_path_factory.mktemp("sandbox")
    for name in ("home", "tmp", "cwd"):
        (sandbox / name).mkdir()
    before = tree_digest(root)
    trace = sandbox / "trace.log" if _works("strace", "-o", os.devnull, "true") else None
    argv = cli_command(root, sandbox / "out", sandbox / "work", "--nprocs", "2")[3:]
    result, attempts, offline = _sandboxed(argv, sandbox, trace)
    assert result.returncode == 0, result.stderr
    return {"root": root, "sandbox": sandbox, "before": before, "after": tree_digest(root),
            "attempts": attempts, "offline": offline,
            "trace": trace.read_text().splitlines() if trace else None}


def test_no_network_is_used(sandboxed_run):
    assert sandboxed_run["attempts"] == []
    if not sandboxed_run["offline"]:
        pytest.skip("unshare -n is not permitted here: no attempt was seen, but the network was there")


def test_network_detector_sees_an_attempt(tmp_path):
    """The audit hook works: a lookup made by the audited process is recorded."""
    for name in ("home", "tmp", "cwd"):
        (tmp_path / name).mkdir()
    lookup = "import socket\ntry:\n    socket.getaddrinfo('pypi.org', 443)\nexcept OSError:\n    pass\n"
    script = tmp_path / "lookup.py"
    script.write_text(lookup)
    code = _AUDITED.replace('runpy.run_module("tmstarget.cli", run_name="__main__")',
                            f"runpy.run_path({str(script)!r})")
    log = tmp_path / "network.log"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, NETWORK_LOG=str(log)))
    assert result.returncode == 0, result.stderr
    assert "socket.getaddrinfo ('pypi.org', 443)" in log.read_text()


def test_same_input_gives_byte_identical_outputs(sandboxed_run, mni_run):
    """The same data twice (another process, MultiProc, work dir and output dir): byte-identical
    outputs, compressed maps included (nibabel writes gzip without a time stamp or file name)."""
    out, _, _ = mni_run
    assert_same_outputs(sandboxed_run["sandbox"] / "out", out)


def test_input_dataset_is_never_modified(sandboxed_run):
    assert sandboxed_run["after"] == sandboxed_run["before"]
    assert len(sandboxed_run["before"]) > 20


def test_nothing_is_written_outside_output_work_and_temp(sandboxed_run):
    sandbox = sandboxed_run["sandbox"]
    # nothing left in HOME or the current folder
    assert not any((sandbox / "home").iterdir()) and not any((sandbox / "cwd").iterdir())
    if sandboxed_run["trace"] is None:
        pytest.skip("strace is not available or not permitted here")
    allowed = [str(sandbox / name) + os.sep for name in ("out", "work", "tmp")]
    # /dev/null, and POSIX semaphores of Python's multiprocessing (joblib) in /dev/shm
    allowed += ["/dev/null", "/dev/shm/"]
    paths = written_paths(sandboxed_run["trace"])
    assert any(p.startswith(allowed[0]) for p in paths)  # the trace did see the outputs
    # the audit log is the test's own file
    outside = sorted({p for p in paths if not any(p == a.rstrip(os.sep) or p.startswith(a) for a in allowed)}
                     - {str(sandbox / "network.log")})
    assert outside == []


def test_group_level_runs_without_network(one_run_dataset, mni_run, tmp_path):
    help_text = subprocess.run(cli_command("x", "y", "z")[:3] + ["--help"], capture_output=True, text=True,
                               env=cli_environment())
    if "group" not in help_text.stdout:
        pytest.skip("this version has no group level yet")
    root, _ = one_run_dataset
    participant_out, _, _ = mni_run
    for name in ("home", "tmp", "cwd"):
        (tmp_path / name).mkdir()
    shutil.copytree(participant_out, tmp_path / "out")
    argv = cli_command(root, tmp_path / "out", tmp_path / "work", level="group")[3:]
    result, attempts, _ = _sandboxed(argv, tmp_path)
    assert result.returncode == 0, result.stderr
    assert attempts == []
