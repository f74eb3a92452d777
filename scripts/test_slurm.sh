#!/usr/bin/env bash
# The SLURM recipe of the README, on a real single-node SLURM cluster started here on localhost:
# munged and slurmctld/slurmd from Debian's packages with a minimal slurm.conf (proctrack/linuxproc,
# task/none, no accounting, private ports and state dirs). A 3-participant demo dataset goes through
# scripts/slurm/participant.sbatch as an array (one participant per task, one shared output dir,
# tasks running at the same time), then scripts/slurm/group.sbatch as a job depending on the array.
# The outputs are checked, the daemons stopped. Skips (exit 0) when SLURM cannot be had here.
#
# Uses the `tmstarget` on PATH (or the repository's .venv). KEEP=1 keeps the temp dir.
set -euo pipefail
SCRIPT_NAME=test_slurm
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$REPO/scripts/lib.sh"

PARTICIPANTS=(01 02 03)
[[ $(id -u) == 0 ]] || skip "not root: slurmd and munged of a private cluster need root here"
ensure_debian_packages slurm-wlm munge || skip "slurm-wlm and munge cannot be installed here"
if ! command -v tmstarget >/dev/null && [[ -x $REPO/.venv/bin/tmstarget ]]; then
    export PATH=$REPO/.venv/bin:$PATH
fi
command -v tmstarget >/dev/null || skip "no tmstarget installed (run .ci/run, or pip install . first)"
# SLURM's commands look the user up by these; a CI shell may have neither.
export USER=${USER:-$(id -un)} LOGNAME=${LOGNAME:-$(id -un)}

W=$(mktemp -d "${TMPDIR:-/tmp}/tmstarget-slurm.XXXXXX")
chmod 755 "$W"
cleanup() {
    local status=$?
    if [[ -f $W/slurm.conf ]]; then scancel --quiet --user "$USER" 2>/dev/null || true; fi
    stop_pidfile "$W/slurmd.pid"
    stop_pidfile "$W/slurmctld.pid"
    stop_pidfile "$W/munged.pid"
    if ((status != 0)); then
        for f in "$W"/*.log "$W"/jobs/*.log; do [[ -f $f ]] && { echo "--- $f"; tail -15 "$f"; }; done
    fi
    if [[ -n ${KEEP:-} ]]; then log "kept $W"; else rm -rf "$W"; fi
    exit "$status"
}
trap cleanup EXIT

# --- munge ----------------------------------------------------------------------------------------
dd if=/dev/urandom of="$W/munge.key" bs=1024 count=1 status=none
chmod 400 "$W/munge.key"
munged --force --key-file="$W/munge.key" --socket="$W/munge.sock" --pid-file="$W/munged.pid" \
    --log-file="$W/munged.log" --seed-file="$W/munged.seed"
for _ in $(seq 50); do [[ -S $W/munge.sock ]] && break; sleep 0.1; done
munge --socket="$W/munge.sock" -n | unmunge --socket="$W/munge.sock" >/dev/null \
    || skip "munged does not work here"

# --- slurm ----------------------------------------------------------------------------------------
host=$(hostname -s)
read -r ctld_port slurmd_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
mkdir -p "$W/state" "$W/spool" "$W/jobs"
cat >"$W/slurm.conf" <<EOF
ClusterName=tmstarget-ci
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$W/munge.sock
CredType=cred/munge
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldPidFile=$W/slurmctld.pid
SlurmdPidFile=$W/slurmd.pid
SlurmctldLogFile=$W/slurmctld.log
SlurmdLogFile=$W/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$W/slurm.conf
slurmctld -c -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -qx idle && break; sleep 0.5; done
sinfo -h -o %T | grep -qx idle || { sinfo || true; log "FAILED: the SLURM node did not come up"; exit 1; }
log "SLURM up: node $host, $cpus CPUs, $mem_mb MB, ports $ctld_port/$slurmd_port"

# --- the recipe -----------------------------------------------------------------------------------
data=$W/data
log "demo dataset: ${#PARTICIPANTS[@]} participants (4 mm, 160 volumes)"
tmstarget-synth "$data/fmriprep" --participants "${PARTICIPANTS[@]}" --voxel-size 4 --volumes 160 \
    --spaces MNI152NLin2009cAsym T1w >"$W/synth.log"
start=$SECONDS
cd "$W/jobs"
# One CPU per task so that two participants run at the same time on this node.
array=$(sbatch --parsable --array=1-${#PARTICIPANTS[@]} --cpus-per-task=1 --mem=3G \
        "$REPO/scripts/slurm/participant.sbatch" "$data/fmriprep" "$data/out" "$data/work")
group=$(sbatch --parsable --dependency=afterok:"$array" --mem=2G \
        "$REPO/scripts/slurm/group.sbatch" "$data/fmriprep" "$data/out" "$data/work")
log "submitted array job $array (tasks 1-${#PARTICIPANTS[@]}) and group job $group (afterok:$array)"
while [[ -n $(squeue -h -j "$array,$group" -o %i 2>/dev/null) ]]; do
    ((SECONDS - start < 1800)) || { squeue; log "FAILED: jobs still queued after 30 min"; exit 1; }
    if [[ $(squeue -h -j "$group" -o %r 2>/dev/null) == DependencyNeverSatisfied ]]; then
        scancel "$group"
        log "FAILED: an array task failed, so the group job can never start"
        exit 1
    fi
    sleep 3
done
log "all jobs left the queue after $((SECONDS - start)) s"

# --- the checks -----------------------------------------------------------------------------------
scontrol show job -o "$array" >"$W/array.txt"
scontrol show job -o "$group" >"$W/group.txt"
# The analysis levels this tmstarget offers, from its usage line (`tmstarget` alone prints it).
usage=$(tmstarget 2>&1 || true)
if grep -qE '\{([^}]*,)?group(,[^}]*)?\}' <<<"$usage"; then has_group=1; else has_group=0; fi
python3 - "$W" "$has_group" "${PARTICIPANTS[@]}" <<'EOF'
"""SLURM job states and the shared output dir (stdlib only)."""
import csv, datetime, json, math, re, sys
from pathlib import Path

w, has_group, labels = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]
out, truth = w / "data" / "out", json.loads((w / "data" / "fmriprep" / "tmstarget_synthetic_truth.json").read_text())


def jobs(text):
    fields = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in text.splitlines() if line.strip()]
    for job in fields:
        for key in ("StartTime", "EndTime"):
            job[key] = datetime.datetime.fromisoformat(job[key])
    return fields


tasks = [j for j in jobs((w / "array.txt").read_text()) if j.get("ArrayTaskId", "").isdigit()]
group = jobs((w / "group.txt").read_text())[0]
assert len(tasks) == len(labels), f"{len(tasks)} array tasks"
for task in tasks:
    assert (task["JobState"], task["ExitCode"]) == ("COMPLETED", "0:0"), task
    print(f"  task {task['ArrayTaskId']}: {task['JobState']} {task['StartTime']:%H:%M:%S}-{task['EndTime']:%H:%M:%S}")
spans = sorted((t["StartTime"], t["EndTime"]) for t in tasks)
assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), f"no two participants ran at the same time: {spans}"
print(f"  group: {group['JobState']} exit {group['ExitCode']} "
      f"{group['StartTime']:%H:%M:%S}-{group['EndTime']:%H:%M:%S}")
assert group["StartTime"] >= max(end for _, end in spans), "the group job started before the array ended"

# The shared root: written once, complete, no temporary file of any task left.
description = json.loads((out / "dataset_description.json").read_text())
assert description["DatasetType"] == "derivative"
bidsignore = (out / ".bidsignore").read_text()
assert bidsignore.endswith("\n") and {"sub-*/log", "sub-*/tms", "*_boldmap.*"} <= set(bidsignore.split())
hidden = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".bidsignore"]
assert not hidden, f"temporary files at the output root: {hidden}"
for label in labels:
    config = json.loads((out / f"sub-{label}" / "log" / "config.json").read_text())
    assert config["participant_label"] == [label], config
    for space, planted in (("MNI152NLin2009cAsym", truth["target_mni"]),
                           ("T1w", truth["participants"][label]["target_t1w"])):
        with open(out / f"sub-{label}" / "tms" / f"sub-{label}_space-{space}_targets.tsv") as f:
            row = next(r for r in csv.DictReader(f, delimiter="\t") if r["name"] == "connectivity")
        distance = math.dist([float(row[c]) for c in "xyz"], planted)
        assert distance <= 4.0, f"sub-{label} {space}: target {distance:.1f} mm from the planted one"
    print(f"  sub-{label}: outputs complete, planted target recovered in MNI and T1w")

if has_group:
    assert (group["JobState"], group["ExitCode"]) == ("COMPLETED", "0:0"), group
    files = sorted(p.relative_to(out).as_posix() for p in (out / "group").rglob("*") if p.is_file())
    assert files, "the group job wrote nothing under group/"
    assert (out / "group.html").is_file() and (out / "group.html").stat().st_size > 0
    print(f"  group outputs: {files} and group.html")
else:
    print("  this tmstarget has no 'group' level yet (its usage line): the group job ran after the "
          "array as it should; its outputs are not checked")
EOF
log "PASSED: ${#PARTICIPANTS[@]} array tasks + dependent group job in $((SECONDS - start)) s"
