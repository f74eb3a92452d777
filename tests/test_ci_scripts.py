"""The shell logic of the CI scripts (scripts/lib.sh), run in isolation with stand-in commands:
the retry of a build that dies with a transient BuildKit error, what the container's demo must use
with and without a baked template, and the copy a fresh clone would hold."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "scripts" / "lib.sh"
TRANSIENT = "unexpected EOF|rpc error: code = (Internal|Unavailable)"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def bash(script, tmp_path):
    return subprocess.run(["bash", "-c", f'set -euo pipefail; . "{LIB}"; {script}'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def flaky(tmp_path, failures, message):
    """A command that fails ``failures`` times printing ``message``, then succeeds."""
    command = tmp_path / "build"
    command.write_text(f'#!/usr/bin/env bash\nn=$(cat count 2>/dev/null || echo 0); echo $((n + 1)) > count\n'
                       f'if ((n < {failures})); then echo "{message}"; exit 3; fi\necho built\n')
    command.chmod(0o755)
    return command


@pytest.mark.parametrize("failures,message,status,attempts", [
    (0, "", 0, 1),
    (1, "ERROR: rpc error: code = Internal desc = unexpected EOF", 0, 2),  # retried, then built
    (2, "ERROR: rpc error: code = Internal desc = unexpected EOF", 3, 2),  # gives up after 2
    (1, "ERROR: process did not complete successfully: exit code: 1", 3, 1),  # a real error: once
])
def test_retry_on_transient_errors_only(tmp_path, failures, message, status, attempts):
    command = flaky(tmp_path, failures, message)
    result = bash(f"retry_on 2 '{TRANSIENT}' out.log {command}", tmp_path)
    assert result.returncode == status, result.stderr
    assert int((tmp_path / "count").read_text()) == attempts
    log = (tmp_path / "out.log").read_text()
    assert ("built" in log) == (status == 0)
    assert ("attempt 2 of 2" in result.stdout) == (attempts == 2)


@pytest.mark.parametrize("line,seed,expected", [
    ("#14 3.2 baked 5 MNI152NLin2009cAsym files (3.2 MB) into /opt/templateflow", False, "templateflow"),
    ("#14 3.2 baked 5 MNI152NLin2009cAsym files (3.2 MB) into /opt/templateflow", True, "templateflow"),
    ("#14 9.1 warning: TemplateFlow MNI152NLin2009cAsym could not be fetched (offline); the image "
     "has no template and tmstarget-synth uses its own head", False, "synthetic"),
    ("#14 9.1 warning: TemplateFlow MNI152NLin2009cAsym could not be fetched (offline)", True, None),
    ("#14 1.0 something else", False, None),
], ids=["baked", "baked-from-seed", "offline-without-seed", "seed-not-baked", "neither"])
def test_expected_demo_head(tmp_path, line, seed, expected):
    (tmp_path / "build.log").write_text(f"#13 DONE\n{line}\n#15 DONE\n")
    if seed:
        (tmp_path / "tpl-MNI152NLin2009cAsym").mkdir()
    result = bash(f"expected_demo_head build.log {tmp_path / 'tpl-MNI152NLin2009cAsym'}", tmp_path)
    if expected is None:
        assert result.returncode == 1 and "FAILED" in result.stderr
    else:
        assert result.returncode == 0 and result.stdout.strip() == expected


def test_copy_repository_holds_what_git_sees(tmp_path):
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(REPO), "rev-parse"],
                                                    capture_output=True).returncode != 0:
        pytest.skip("not a git work tree")
    result = bash(f'copy_repository "{REPO}" "{tmp_path / "clone"}"', tmp_path)
    assert result.returncode == 0, result.stderr
    clone = tmp_path / "clone"
    for name in ("pyproject.toml", "README.md", "bids_app/cli.py", "tests/conftest.py", "scripts/lib.sh"):
        assert (clone / name).read_bytes() == (REPO / name).read_bytes()
    assert not (clone / ".venv").exists() and not list(clone.rglob("__pycache__"))
    assert not (tmp_path / "shared").exists()
