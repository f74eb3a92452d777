# shellcheck shell=bash
# Shell helpers shared by scripts/test_container.sh and scripts/test_slurm.sh (sourced, not run).

# Say something with the script's name and the seconds since it started.
log() { printf '[%s %4ds] %s\n' "${SCRIPT_NAME:-$(basename "$0")}" "$SECONDS" "$*"; }

# Exit 0 with a clear message: the check cannot run here (not a failure).
skip() { log "SKIPPED: $*"; exit 0; }

# Make sure the Debian packages "$@" are installed, installing them with apt-get when we are root.
# Returns 1 (the caller skips) when they are missing and cannot be installed.
ensure_debian_packages() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        log "missing Debian packages: ${missing[*]} (not root, or no apt-get)"
        return 1
    fi
    log "installing Debian packages: ${missing[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}"; } >"${TMPDIR:-/tmp}/apt-$$.log" 2>&1; then
        tail -5 "${TMPDIR:-/tmp}/apt-$$.log"
        log "could not install: ${missing[*]}"
        return 1
    fi
}

# Stop a daemon started by this script, by the process id in its pid file, and wait for it.
stop_pidfile() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}

# Copy the repository's files as git sees them (tracked, and new ones not ignored) from "$1" into
# the new folder "$2": what a clone of the working tree would hold, without .venv or caches.
copy_repository() {
    local from=$1 to=$2
    mkdir -p "$to"
    if git -C "$from" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$from" && git ls-files -z --cached --others --exclude-standard \
            | while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done \
            | xargs -0 cp --parents -t "$to")
    else
        cp -r "$from"/{pyproject.toml,README.md,bids_app,workflows,tests,scripts,docker,Dockerfile} "$to"
    fi
}

# Run "$@" up to $1 times while it fails with output matching the extended regular expression $2
# (a transient error, e.g. BuildKit's "unexpected EOF"); its output goes to the file $3 (the last
# attempt's). Returns 0 on success, else the last attempt's status.
retry_on() {
    local attempts=$1 pattern=$2 output=$3 attempt status=0
    shift 3
    for ((attempt = 1; attempt <= attempts; attempt++)); do
        status=0
        "$@" >"$output" 2>&1 || status=$?
        ((status == 0)) && return 0
        grep -Eq -- "$pattern" "$output" || return "$status"
        if ((attempt < attempts)); then
            log "transient failure ($(grep -Eo -- "$pattern" "$output" | head -1)): attempt $((attempt + 1)) of $attempts"
        fi
    done
    return "$status"
}

# The head the image's demo generator must use, from the build log "$1" of bake_templates.py:
# "templateflow" when the template was baked, "synthetic" when it could not be fetched (an offline
# build without the seed "$2" of ../shared: any clone but ours); a failure (status 1, message on
# stderr) when a seed was there but not baked, or the log says neither.
expected_demo_head() {
    local build_log=$1 seed=$2
    if grep -q "baked .* into /opt/templateflow" "$build_log"; then
        echo templateflow
    elif grep -q "warning: TemplateFlow .* could not be fetched" "$build_log"; then
        if [[ -n $seed && -d $seed ]]; then
            log "FAILED: the seeded template ($seed) was not baked" >&2
            return 1
        fi
        echo synthetic
    else
        log "FAILED: the build log says neither that the template was baked nor that it could not be fetched" >&2
        return 1
    fi
}
