#!/usr/bin/env bash
# Runs the workflow through SLURM with profiles/slurm (snakemake-executor-plugin-slurm) on a
# throwaway one-node cluster started on this machine, then checks that
#   - its results are identical to those of a local run of the same input, and
#   - SLURM gave each embedding job a GPU, and no other job one.
#
#   tests/slurm/run_local_slurm.sh          (as root; PYTHON=... picks the interpreter)
#
# Needs root and apt-get (Debian/Ubuntu): it installs slurm-wlm and munge when slurmctld is
# missing. The node has 4 GPUs that are /dev/null underneath: SLURM schedules them and sets
# CUDA_VISIBLE_DEVICES, and the jobs, finding no GPU driver, embed on the CPU. Everything is
# written under one temporary directory, kept when the check fails (KEEP_WORKDIR=1: always).
# The daemons are stopped at the end, whatever happens.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
SHARED=${VIRNUCPRO_SHARED:-$REPO/../shared}
READS=30
PARTITION=local  # the local cluster's only partition, and the account the jobs are charged to
ACCOUNT=local
CTLD_PORT=6817

say() { printf '\n=== %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || fail "must run as root (it installs packages and starts the SLURM daemons)"
[[ -x $PYTHON ]] || fail "no Python at $PYTHON (run 'make setup' or set PYTHON)"
[[ -f $SHARED/data/reads_1.fq.gz ]] || fail "no $SHARED/data/reads_1.fq.gz (set VIRNUCPRO_SHARED)"
# slurmd publishes its configuration in /run/slurm/conf, which every SLURM command on the machine
# would then use: never on a machine that belongs to a real cluster.
[[ ! -e /etc/slurm/slurm.conf ]] || fail "/etc/slurm/slurm.conf exists: this machine has a SLURM of its own"
if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
    fail "slurmctld or slurmd is already running"
fi

START=$SECONDS
WORK=$(mktemp -d /tmp/virnucpro-slurm.XXXXXX)
SLURM_DIR=$WORK/slurm
export SLURM_CONF=$SLURM_DIR/slurm.conf
STARTED_MUNGED=
LOCAL_RUN=

cleanup() {
    local status=$?
    set +e
    [[ -n $LOCAL_RUN ]] && kill "$LOCAL_RUN" 2>/dev/null
    say "stopping the cluster"
    if [[ -f $SLURM_DIR/slurmctld.pid ]]; then
        scancel --quiet --user=root 2>/dev/null
        sleep 1
    fi
    for daemon in slurmd slurmctld; do
        if [[ -f $SLURM_DIR/$daemon.pid ]]; then
            pid=$(cat "$SLURM_DIR/$daemon.pid")
            kill "$pid" 2>/dev/null
            for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        fi
    done
    if [[ -n $STARTED_MUNGED && -f /run/munge/munged.pid ]]; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null
    fi
    if [[ $(readlink /run/slurm/conf 2>/dev/null) == "$WORK"/* ]]; then
        rm -f /run/slurm/conf
        rmdir /run/slurm 2>/dev/null
    fi
    if [[ $status == 0 && ${KEEP_WORKDIR:-0} != 1 ]]; then
        rm -rf "$WORK"
    else
        echo "kept $WORK (SLURM logs in $SLURM_DIR, runs in $WORK/slurm-run and $WORK/local-run)"
    fi
    exit "$status"
}
trap cleanup EXIT

say "SLURM and munge"
if ! command -v slurmctld >/dev/null; then
    echo "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log"; fail "apt-get update"; }
    apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$WORK/apt.log" 2>&1 \
        || { tail -30 "$WORK/apt.log"; fail "apt-get install slurm-wlm munge"; }
fi
for command in slurmctld slurmd sbatch squeue scontrol munged; do
    command -v "$command" >/dev/null || fail "$command is missing after installing slurm-wlm and munge"
done
slurmctld -V

if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        echo "creating /etc/munge/munge.key"
        install -d -o munge -g munge -m 700 /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 755 /run/munge
    echo "starting munged"
    runuser -u munge -- munged
    STARTED_MUNGED=1
    munge -n | unmunge >/dev/null || fail "munged does not answer"
fi
echo "munge works"

say "a one-node cluster in $SLURM_DIR"
HOST=$(hostname -s)
mkdir -p "$SLURM_DIR"/{state,spool,gpus}
# The hardware as slurmd sees it, so that it accepts the node; memory a little under the real.
NODE=$(slurmd -C | sed -n "1s/ RealMemory=[0-9]*//p")
MEMORY=$(awk '/^MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
# slurmd drops a GPU without a device file, and wants a character device: /dev/null will do.
for i in 0 1 2 3; do ln -s /dev/null "$SLURM_DIR/gpus/gpu$i"; done
cat >"$SLURM_DIR/gres.conf" <<EOF
AutoDetect=off
NodeName=$HOST Name=gpu File=$SLURM_DIR/gpus/gpu[0-3]
EOF
cat >"$SLURM_CONF" <<EOF
ClusterName=virnucpro-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/slurmctld.log
SlurmdLogFile=$SLURM_DIR/slurmd.log
# slurmd fetches this file from slurmctld and offers it to the commands run in jobs, which the
# plugin starts without SLURM_CONF: nothing needs to be written to /etc/slurm.
SlurmctldParameters=enable_configless
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
# No slurmdbd: sacct has nothing to read, so the plugin asks squeue, which shows a finished job
# for MinJobAge seconds. The check of the jobs' GPUs at the end reads them from slurmctld too.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
GresTypes=gpu
$NODE RealMemory=$MEMORY NodeAddr=127.0.0.1 Gres=gpu:4 State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -f "$SLURM_CONF" || fail "slurmctld did not start (see $SLURM_DIR/slurmctld.log)"
slurmd --conf-server "127.0.0.1:$CTLD_PORT" || fail "slurmd did not start (see $SLURM_DIR/slurmd.log)"
for _ in $(seq 60); do
    [[ $(sinfo --noheader --nodes="$HOST" --format=%T 2>/dev/null) == idle ]] && break
    sleep 1
done
if [[ $(sinfo --noheader --nodes="$HOST" --format=%T 2>/dev/null) != idle ]]; then
    sinfo --Node --long || true
    tail -20 "$SLURM_DIR/slurmctld.log" "$SLURM_DIR/slurmd.log" || true
    fail "the node did not become idle within 60 s"
fi
sinfo --Node --format="%N %P %T %c %m %G"

say "input: $READS reads, config and profile"
# The config points at the built-in models by absolute path, as the runs have workdirs of their
# own; the profile is profiles/slurm with the local partition and account, and with memory the node
# has for the embedding jobs (the rules ask for more, for the real models).
"$PYTHON" - "$REPO" "$SHARED/data/reads_1.fq.gz" "$WORK" "$READS" "$PARTITION" "$ACCOUNT" <<'EOF'
import gzip, itertools, os, sys
import yaml

repo, fastq, work, reads, partition, account = sys.argv[1:]
with gzip.open(fastq, "rt") as source, gzip.open(f"{work}/reads.fq.gz", "wt") as out:
    out.writelines(itertools.islice(source, 4 * int(reads)))

def absolute(node):
    for key, value in node.items():
        if isinstance(value, dict):
            absolute(value)
        # a path in the repository: relative, and starting with one of its directories
        elif isinstance(value, str) and not value.startswith("/") and "/" in value:
            if os.path.isdir(f"{repo}/{value.split('/')[0]}"):
                node[key] = f"{repo}/{value}"

config = yaml.safe_load(open(f"{repo}/config/config.yaml"))
absolute(config)
config["samples"] = {"reads": f"{work}/reads.fq.gz"}
config["embedding"]["gpu_lock_dir"] = f"{work}/gpu-locks"
config.update(shard_tokens=1600, part_mb=0.002)  # several parts (3) and shards (2) from a small input
yaml.safe_dump(config, open(f"{work}/config.yaml", "w"), sort_keys=False)

profile = yaml.safe_load(open(f"{repo}/profiles/slurm/config.yaml"))
for resources in [profile["default-resources"], *profile["set-resources"].values()]:
    if "slurm_partition" in resources:
        resources["slurm_partition"] = partition
    if "slurm_account" in resources:
        resources["slurm_account"] = account
for resources in profile["set-resources"].values():
    resources["mem_mb"] = 1000
os.makedirs(f"{work}/profile")
yaml.safe_dump(profile, open(f"{work}/profile/config.yaml", "w"), sort_keys=False)
EOF

# Both runs use one thread per job: the node has 2 CPUs, fewer than the rules ask for, and the
# comparison should not depend on thread counts. Otherwise the SLURM run differs from the local
# one only in what it needs without slurmdbd (squeue) and in polling job states sooner. The local
# run goes on while the SLURM run mostly waits for job states. A run that hangs is stopped
# (Snakemake then cancels its SLURM jobs), so that the daemons get stopped.
say "workflow through SLURM, and the same workflow locally meanwhile"
t0=$SECONDS
timeout 600 "$PYTHON" -m snakemake --snakefile "$REPO/Snakefile" --directory "$WORK/local-run" \
    --configfile "$WORK/config.yaml" --cores 2 --max-threads 1 >"$WORK/local-run.log" 2>&1 &
LOCAL_RUN=$!
timeout 900 "$PYTHON" -m snakemake --snakefile "$REPO/Snakefile" --profile "$WORK/profile" \
    --directory "$WORK/slurm-run" --configfile "$WORK/config.yaml" --max-threads 1 \
    --slurm-status-command squeue --slurm-init-seconds-before-status-checks 1 \
    --slurm-keep-successful-logs --verbose >"$WORK/slurm-run.log" 2>&1 \
    || { tail -60 "$WORK/slurm-run.log"; fail "the SLURM run failed (log: $WORK/slurm-run.log)"; }
grep -E '^[0-9]+ of [0-9]+ steps' "$WORK/slurm-run.log" | tail -1
echo "SLURM run: $((SECONDS - t0)) s"
wait "$LOCAL_RUN" \
    || { tail -60 "$WORK/local-run.log"; fail "the local run failed (log: $WORK/local-run.log)"; }
LOCAL_RUN=
echo "both runs: $((SECONDS - t0)) s"

say "the results are identical"
SHARDS=$(tail -q -n +2 "$WORK"/slurm-run/results/reads/shards/*.tsv | wc -l)
echo "$SHARDS shards"
for name in prediction_results.txt prediction_results_highestscore.csv chunked.fa identified_nucleotide.fa \
    identified_protein.faa; do
    cmp "$WORK/slurm-run/results/reads/$name" "$WORK/local-run/results/reads/$name" \
        || fail "$name differs between the SLURM and the local run"
    echo "$name: identical"
done
"$PYTHON" - "$WORK" <<'EOF' || fail "read_predictions.parquet differs between the SLURM and the local run"
import sys
import pyarrow.parquet as pq

work = sys.argv[1]
slurm = pq.read_table(f"{work}/slurm-run/results/reads/read_predictions.parquet")
local = pq.read_table(f"{work}/local-run/results/reads/read_predictions.parquet")
assert slurm.num_rows > 0
assert slurm.equals(local, check_metadata=True), f"{slurm}\n---\n{local}"
print(f"read_predictions.parquet: identical ({slurm.num_rows} reads)")
EOF

say "SLURM gave a GPU to each embedding job and to no other"
scontrol --details --oneliner show job >"$WORK/jobs.txt"
"$PYTHON" - "$WORK/jobs.txt" "$SHARDS" "$PARTITION" "$ACCOUNT" <<'EOF' \
    || fail "the jobs' SLURM allocations are not as expected (see $WORK/jobs.txt)"
import collections, re, sys

jobs_file, shards, partition, account = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
field = lambda line, name: re.search(rf"(?:^| ){name}=(\S*)", line).group(1)
gpu_rules = {"embed_dnabert_s", "embed_esm2"}
jobs = collections.Counter()
problems = []
for line in open(jobs_file):
    # The plugin names each job's rule in its comment: rule_<rule>[_wildcards_<values>]
    rule = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", field(line, "Comment")).group(1)
    state, gres = field(line, "JobState"), field(line, "JOB_GRES")
    jobs[rule, gres] += 1
    expected_gres = "gpu:1" if rule in gpu_rules else "(null)"
    if state != "COMPLETED" or gres != expected_gres:
        problems.append(f"{rule} job {field(line, 'JobId')}: {state}, GPUs {gres} (expected {expected_gres})")
    if field(line, "Account") != account or field(line, "Partition") != partition:
        problems.append(f"{rule} job {field(line, 'JobId')}: account {field(line, 'Account')}, "
                        f"partition {field(line, 'Partition')}")
for (rule, gres), count in sorted(jobs.items()):
    print(f"{count:3d} x {rule:18s} GPUs: {gres}")
for rule in sorted(gpu_rules):
    if jobs[rule, "gpu:1"] != shards:
        problems.append(f"{jobs[rule, 'gpu:1']} {rule} jobs with a GPU, expected {shards} (one per shard)")
assert not problems, "\n".join(problems)
EOF

say "passed in $((SECONDS - START)) s"
