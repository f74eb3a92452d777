#!/usr/bin/env bash
# The README's test command as on any machine but ours: the repository's files (as git sees them)
# copied into a temporary folder with no ../shared beside it, a new virtual environment with a
# plain (non-editable) install, and `pytest` run there. Neither the tests (tests/helpers.py) nor
# an editable install's generator (tmstarget.synthetic._REPO_SHARED) can then find the real
# template head or confounds: every test must pass on the self-made head and synthesized motion,
# or skip saying why (marker shared_data).
#
# Usage: scripts/test_fresh_clone.sh [pytest arguments]   (default: none, the README's `pytest`)
# Environment: KEEP=1 keeps the temp folder; FRESH_SITE_PACKAGES=DIR installs tmstarget with
# --no-deps and takes its dependencies from DIR (a site-packages folder; for a quick local check
# without a package index: the dependencies, not tmstarget, come from there).
set -euo pipefail
SCRIPT_NAME=test_fresh_clone
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tmstarget-fresh.XXXXXX")
cleanup() {
    local status=$?
    if [[ -n ${KEEP:-} ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT

clone=$WORK/tmstarget
copy_repository "$REPO" "$clone"
[[ ! -e $WORK/shared ]] || { log "FAILED: $WORK/shared exists"; exit 1; }

log "virtual environment and a non-editable install in $WORK"
python3 -m venv "$WORK/venv"
if [[ -n ${FRESH_SITE_PACKAGES:-} ]]; then
    "$WORK/venv/bin/pip" install -q --no-deps "$clone"
    site=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # after the venv's own site-packages: its tmstarget is the one imported
    echo "$FRESH_SITE_PACKAGES" >"$site/zz-fresh-clone-dependencies.pth"
else
    "$WORK/venv/bin/pip" install -q "$clone[test]"
fi
# The package imported is the installed copy, not a source tree (an editable install would look
# for ../shared beside the source).
installed=$("$WORK/venv/bin/python" -c 'import tmstarget; print(tmstarget.__file__)')
[[ $installed == "$WORK/venv/"* ]] || { log "FAILED: tmstarget imported from $installed"; exit 1; }
log "tmstarget from $installed"

log "pytest $* (no ../shared, TEMPLATEFLOW_HOME unset)"
cd "$clone"
# `pytest` as the README says; `python -m pytest` when pytest came from FRESH_SITE_PACKAGES
pytest=("$WORK/venv/bin/pytest")
[[ -x ${pytest[0]} ]] || pytest=("$WORK/venv/bin/python" -m pytest)
env -u TEMPLATEFLOW_HOME PATH="$WORK/venv/bin:$PATH" "${pytest[@]}" "$@"
log "PASSED: the test suite on a fresh clone"
