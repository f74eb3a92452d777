#!/usr/bin/env bash
# Build the image from the repository's Dockerfile and run it as a cluster would: read-only root,
# an arbitrary user id (12345), no network, no writable home, /tmp as the only scratch; the demo
# dataset is made by the image's own tmstarget-synth, mounted read-only, and the outputs checked.
#
# Needs root (or a running Docker engine). Starts Debian's dockerd on a private socket and data
# root (vfs storage, no bridge, no iptables: nothing of the host's network is touched) and stops it
# at the end. Without Docker Hub, the base image (debian:bookworm-slim) is made locally with
# debootstrap and `docker import`ed under that tag. Nothing is cached between runs.
# Skips (exit 0, with a message) when no engine can be had.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), KEEP=1 keeps the temp dir,
# DOCKER_HOST=… uses that engine instead of starting one.
set -euo pipefail
SCRIPT_NAME=test_container
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

BASE_IMAGE=debian:bookworm-slim
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml")
IMAGE=tmstarget:$VERSION
RUN_USER=12345:12345

# --- an engine ------------------------------------------------------------------------------------
packages=(docker.io)
[[ -n ${DOCKER_HOST:-} ]] || packages+=(debootstrap)
ensure_debian_packages "${packages[@]}" || skip "no Docker engine and it cannot be installed here"
# Debian's client matches Debian's daemon and has BuildKit built in (a newer client needs buildx).
DOCKER=$(command -v /usr/bin/docker || command -v docker)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tmstarget-container.XXXXXX")
chmod 755 "$WORK"
cleanup() {
    local status=$?
    if [[ -n ${OWN_DAEMON:-} ]]; then
        "$DOCKER" rm -f tmstarget-ci-synth tmstarget-ci-run tmstarget-ci-stop >/dev/null 2>&1 || true
        stop_pidfile "$WORK/dockerd.pid"
        ((status == 0)) || tail -20 "$WORK/dockerd.log" 2>/dev/null || true
    fi
    if [[ -n ${KEEP:-} ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT

# Start dockerd with storage driver $1 on the private socket; return 1 when it does not answer.
start_dockerd() {
    local driver=$1
    log "starting dockerd ($driver storage) on $DOCKER_HOST"
    dockerd --storage-driver="$driver" --data-root "$WORK/docker" --exec-root "$WORK/exec" \
        --pidfile "$WORK/dockerd.pid" --host "$DOCKER_HOST" \
        --bridge=none --iptables=false --ip6tables=false >"$WORK/dockerd.log" 2>&1 &
    for _ in $(seq 60); do
        "$DOCKER" info >/dev/null 2>&1 && { STORAGE=$driver; return 0; }
        kill -0 $! 2>/dev/null || break
        sleep 0.5
    done
    stop_dockerd
    return 1
}
stop_dockerd() { stop_pidfile "$WORK/dockerd.pid"; rm -rf "$WORK/docker" "$WORK/exec"; }

STORAGE=
if [[ -z ${DOCKER_HOST:-} ]]; then
    [[ $(id -u) == 0 ]] || skip "no DOCKER_HOST and not root: cannot start a Docker engine"
    export DOCKER_HOST=unix://$WORK/docker.sock
    OWN_DAEMON=1
    # overlay2 where the kernel and file system allow it (fast), vfs (plain copies) elsewhere.
    start_dockerd overlay2 || start_dockerd vfs || { tail -5 "$WORK/dockerd.log"; skip "dockerd did not start here"; }
fi

# --- the base image -------------------------------------------------------------------------------
# The base image: from a registry, else made with debootstrap (again after a storage change).
ensure_base_image() {
# (not indented: the here-documents' ends must start their lines)
if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1 && ! timeout 120 "$DOCKER" pull -q "$BASE_IMAGE" 2>/dev/null; then
    log "no $BASE_IMAGE from a registry: debootstrap bookworm from $MIRROR"
    rootfs=$WORK/rootfs
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -5 "$WORK/debootstrap.log"; exit 1; }
    # As Debian's official slim image: the same sources, and no docs, man pages or locales.
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    # apt keeps no downloaded packages or caches in layers (the official image's docker-clean).
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
    rm -rf "$rootfs"/usr/share/{man,info,locale}/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    tar -C "$rootfs" -c . | "$DOCKER" import - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    log "imported $BASE_IMAGE ($("$DOCKER" image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
fi
}
ensure_base_image

# --- the image ------------------------------------------------------------------------------------
# The build context: the repository's files as git sees them, plus the seeded TemplateFlow home of
# ../shared when it is there (so the template is baked without a download).
context=$WORK/context
mkdir -p "$context"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$context" 2>/dev/null) \
    || cp -r "$REPO"/{pyproject.toml,README.md,bids_app,workflows,docker,Dockerfile,.dockerignore} "$context"
seed=$REPO/../shared/data/templateflow/tpl-MNI152NLin2009cAsym
[[ -d $seed ]] && cp -r "$seed" "$context/docker/templateflow/" && chmod -R u+w "$context/docker/templateflow"

build_args=(--network host --build-arg "VERSION=$VERSION"
            --build-arg "VCS_REF=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
            --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)")
# A TLS-intercepting network: the machine's CA bundle and pip configuration as build secrets.
ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
[[ -s $ca ]] && build_args+=(--secret "id=ca,src=$ca")
pipconf=${PIP_CONFIG_FILE:-/etc/pip.conf}
[[ -s $pipconf ]] && build_args+=(--secret "id=pipconf,src=$pipconf")
for proxy in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
    [[ -n ${!proxy:-} ]] && build_args+=(--build-arg "$proxy")
done
build_image() { DOCKER_BUILDKIT=1 "$DOCKER" build --progress plain "${build_args[@]}" -t "$IMAGE" "$context"; }
# BuildKit on overlay2 storage was seen to die with "rpc error: code = Internal desc = unexpected
# EOF" (the daemon answering is no proof that builds work): such a build is tried again, and
# after a second such failure on a daemon of our own, the daemon is restarted on vfs storage.
BUILDKIT_TRANSIENT='unexpected EOF|rpc error: code = (Internal|Unavailable)'
log "building $IMAGE"
build_start=$SECONDS
if ! retry_on 2 "$BUILDKIT_TRANSIENT" "$WORK/build.log" build_image; then
    if grep -Eq "$BUILDKIT_TRANSIENT" "$WORK/build.log" && [[ -n ${OWN_DAEMON:-} && $STORAGE == overlay2 ]]; then
        tail -5 "$WORK/build.log"
        log "BuildKit failed twice on overlay2 storage: restarting dockerd on vfs"
        stop_dockerd
        start_dockerd vfs || { tail -5 "$WORK/dockerd.log"; exit 1; }
        ensure_base_image
        build_image >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
    else
        tail -30 "$WORK/build.log"
        exit 1
    fi
fi
grep -E "baked|seeded|warning: TemplateFlow" "$WORK/build.log" | sed 's/^#[0-9]* [0-9.]* /  /' || true
# What the demo generator of this image must use: the baked template, or, when the build could
# not fetch it (offline, and no ../shared seed: any clone but ours), its self-made head. With
# the seed the template is baked without network, so a build without it is a failure.
expected_head=$(expected_demo_head "$WORK/build.log" "$seed") || exit 1
[[ $expected_head == templateflow ]] \
    || log "no template in the image (offline build without ../shared): the demo must use the self-made head"
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
log "built $IMAGE in $((SECONDS - build_start)) s: $(awk -v s="$size" 'BEGIN {printf "%.0f MB", s/1e6}')"

# --- the image's own promises ---------------------------------------------------------------------
fail() { log "FAILED: $*"; exit 1; }
user=$("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE")
[[ -n $user && $user != root && $user != 0* ]] || fail "the image runs as root (User '$user')"
label=$("$DOCKER" image inspect -f '{{index .Config.Labels "org.opencontainers.image.version"}}' "$IMAGE")
[[ $label == "$VERSION" ]] || fail "OCI version label '$label', expected $VERSION"
# No compiler or pip in the final image; the entry point answers.
# shellcheck disable=SC2016  # $c is the container shell's
checks=$("$DOCKER" run --rm --network none --entrypoint /bin/sh "$IMAGE" -c \
    'for c in gcc cc c++ g++ clang make pip pip3; do command -v $c; done; tmstarget --version')
[[ $checks == "tmstarget $VERSION" ]] || fail "expected only 'tmstarget $VERSION', got: $checks"

# --- the demo, as on a cluster --------------------------------------------------------------------
# --read-only, a user id that exists nowhere in the image, no network, a home that does not exist
# (Apptainer with --no-home/--cleanenv), the input mounted read-only.
data=$WORK/data
mkdir -p "$data/fmriprep" "$data/out" "$data/work"
chown -R "$RUN_USER" "$data"
as_cluster=(--read-only --user "$RUN_USER" --tmpfs /tmp --network none --env HOME=/nonexistent)

log "demo dataset with the image's tmstarget-synth"
t=$SECONDS
"$DOCKER" run --name tmstarget-ci-synth "${as_cluster[@]}" -v "$data/fmriprep:/data/fmriprep" \
    --entrypoint tmstarget-synth "$IMAGE" /data/fmriprep --spaces MNI152NLin2009cAsym T1w \
    | tee "$WORK/synth.log"
log "synth: $((SECONDS - t)) s"

log "tmstarget participant, read-only, uid ${RUN_USER%%:*}"
t=$SECONDS
"$DOCKER" run --name tmstarget-ci-run "${as_cluster[@]}" \
    -v "$data/fmriprep:/data:ro" -v "$data/out:/out" -v "$data/work:/work" \
    "$IMAGE" /data /out participant -w /work --nprocs 2 --omp-nthreads 1 --mem-gb 8 | tee "$WORK/run.log"
log "tmstarget participant: $((SECONDS - t)) s; output $(du -sh "$data/out" | cut -f1), work dir $(du -sh "$data/work" | cut -f1)"

# The root file system was read-only; the container changed nothing in its own layer either
# (docker diff lists the mount points docker made, which are not the program's writes).
for name in tmstarget-ci-synth tmstarget-ci-run; do
    mounts=$("$DOCKER" inspect -f '{{range .Mounts}}{{.Destination}} {{end}}/tmp' "$name")
    changes=$("$DOCKER" diff "$name" | while read -r _ path; do
        for mount in $mounts; do [[ $mount == "$path" || $mount == "$path"/* ]] && continue 2; done
        echo "$path"
    done)
    [[ -z $changes ]] || fail "$name wrote into the image: $changes"
done

# --- the outputs ----------------------------------------------------------------------------------
others=$(find "$data" ! -uid "${RUN_USER%%:*}")
[[ -z $others ]] || fail "files not owned by the run's user id: $others"
python3 - "$data" "$expected_head" <<'EOF'
"""Check the container's outputs: complete, valid, and the planted target found (stdlib only)."""
import csv, json, math, sys
from pathlib import Path

data, expected_head = Path(sys.argv[1]), sys.argv[2]
out, truth = data / "out", json.loads((data / "fmriprep" / "tmstarget_synthetic_truth.json").read_text())
assert truth["head"] == expected_head, f"the demo's head is {truth['head']}, expected {expected_head}"
print(f"  demo head: {truth['head']}")
description = json.loads((out / "dataset_description.json").read_text())
assert description["DatasetType"] == "derivative", description
bidsignore = (out / ".bidsignore").read_text()
assert bidsignore.endswith("\n") and {"sub-*/log", "sub-*/tms", "*_boldmap.*"} <= set(bidsignore.split())
expected = [
    "sub-01/func/sub-01_task-rest_space-MNI152NLin2009cAsym_desc-sgACC_stat-z_boldmap.nii.gz",
    "sub-01/func/sub-01_task-rest_space-MNI152NLin2009cAsym_desc-sgACC_stat-z_boldmap.json",
    "sub-01/func/sub-01_task-rest_space-MNI152NLin2009cAsym_desc-sgACC_mask.nii.gz",
    "sub-01/func/sub-01_task-rest_space-MNI152NLin2009cAsym_desc-searchregion_mask.nii.gz",
    "sub-01/tms/sub-01_space-MNI152NLin2009cAsym_targets.tsv",
    "sub-01/tms/sub-01_space-MNI152NLin2009cAsym_targets.json",
    "sub-01/tms/sub-01_space-T1w_targets.tsv",
    "sub-01/tms/sub-01_space-T1w_desc-brainsight_targets.txt",
    "sub-01/tms/sub-01_space-T1w_desc-localite_markers.xml",
    "sub-01/tms/sub-01_space-T1w_markers.tsv",
    "sub-01/func/sub-01_task-rest_space-MNI152NLin2009cAsym_desc-targetfrequency_boldmap.nii.gz",
    "sub-01/log/config.json",
    "sub-01/log/CITATION.md",
    "sub-01.html",
]
missing = [f for f in expected if not (out / f).is_file() or (out / f).stat().st_size == 0]
assert not missing, f"missing outputs: {missing}"
leftovers = [str(p) for p in out.rglob(".*") if p.name != ".bidsignore"]
assert not leftovers, f"temporary files left: {leftovers}"
for tsv, planted in (("MNI152NLin2009cAsym", truth["target_mni"]),
                     ("T1w", truth["participants"]["01"]["target_t1w"])):
    with open(out / f"sub-01/tms/sub-01_space-{tsv}_targets.tsv") as f:
        row = next(r for r in csv.DictReader(f, delimiter="\t") if r["name"] == "connectivity")
    found = [float(row[c]) for c in "xyz"]
    distance = math.dist(found, planted)
    print(f"  {tsv}: found {found}, planted {[round(v, 1) for v in planted]}: {distance:.1f} mm, "
          f"z {float(row['seed_correlation_z']):.2f}")
    # Tests hold 4 mm on 4 mm voxels; the demo's 2 mm grid is finer.
    assert distance <= 4.0 and float(row["seed_correlation_z"]) < 0, row
reliability = json.loads((out / "sub-01/tms/sub-01_space-MNI152NLin2009cAsym_targets.json").read_text())["Reliability"]
assert reliability["Grade"] in ("high", "moderate", "low"), reliability
print(f"  reliability {reliability['Grade']}: {reliability['GradeReason']}")
print("  outputs complete (report included); planted target recovered in both spaces")
EOF
# --- docker stop: SIGTERM to the app, the container's first process ------------------------------
# It stops as Ctrl-C stops it (exit 143, one line, nothing half-written); without a handler a first
# process ignores SIGTERM, and docker would kill it once the timeout (here 30 s) is over (exit 137).
mkdir -p "$data/out-stop" "$data/work-stop"
chown -R "$RUN_USER" "$data/out-stop" "$data/work-stop"
"$DOCKER" run -d --name tmstarget-ci-stop "${as_cluster[@]}" \
    -v "$data/fmriprep:/data:ro" -v "$data/out-stop:/out" -v "$data/work-stop:/work" \
    "$IMAGE" /data /out participant -w /work --nprocs 2 --omp-nthreads 1 >/dev/null
for _ in $(seq 600); do  # until Denoise runs (its unfinished-hash marker), at most 60 s
    [[ -n $(find "$data/work-stop" -path '*denoise*' -name '_0x*_unfinished.json' 2>/dev/null) ]] && break
    sleep 0.1
done
t=$SECONDS
"$DOCKER" stop -t 30 tmstarget-ci-stop >/dev/null
stopped_in=$((SECONDS - t))
code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' tmstarget-ci-stop)
said=$("$DOCKER" logs tmstarget-ci-stop 2>&1 | grep -c "^tmstarget: interrupted by SIGTERM: " || true)
[[ $code == 143 && $said == 1 ]] \
    || fail "docker stop: exit $code after $stopped_in s, $said 'interrupted by SIGTERM' line(s), expected 143 and 1"
leftovers=$(find "$data/out-stop" -name '.*' ! -name .bidsignore)
[[ -z $leftovers ]] || fail "docker stop left temporary files: $leftovers"
log "docker stop: exit 143 after $stopped_in s, one line, nothing half-written"

log "PASSED: $IMAGE ($(awk -v s="$size" 'BEGIN {printf "%.0f MB", s/1e6}')) built and run read-only as uid ${RUN_USER%%:*} without network"
