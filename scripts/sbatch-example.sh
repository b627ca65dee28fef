#!/bin/bash
# splitnet as a Slurm batch job. Under srun, `splitnet launch` runs every
# process of the run as a Slurm task: task 0 is the coordinator, task t the
# worker of rank t-1, each on the node Slurm put it (src/run/slurm.ts). So
# ask for one task per GPU plus one for the coordinator.
#
#   sbatch scripts/sbatch-example.sh [launch flags...]    e.g. --mode model --epochs 3
#
# One node with two GPUs: the coordinator and two workers, each worker on
# its own GPU (tasks that share a node's GPUs take the one at their
# SLURM_LOCALID).
#SBATCH --job-name=splitnet
#SBATCH --nodes=1
#SBATCH --ntasks=3
#SBATCH --gpus-per-node=2
#SBATCH --cpus-per-task=4
#SBATCH --time=02:00:00
#SBATCH --output=splitnet-%j.out
#SBATCH --open-mode=append
# A requeued job (preemption, a failed node, `scontrol requeue`) runs this
# script again with the same job id: it resumes the run from its checkpoint.
#SBATCH --requeue
#
# Two nodes with two GPUs each (four workers): replace --nodes and --ntasks
# above with these (the first node carries the coordinator as well):
#   #SBATCH --nodes=2
#   #SBATCH --ntasks=5
#   #SBATCH --ntasks-per-node=3
# `--gpus-per-task=1` instead of --gpus-per-node binds one GPU to each task;
# that works too, but the coordinator's task then holds a GPU it never uses.
set -euo pipefail

# splitnet must be installed on every node (README: Installing on a worker host).
command -v splitnet >/dev/null || { echo "splitnet is not installed on $(hostname): see README 'Installing on a worker host'" >&2; exit 1; }

# The tasks are srun's, not the launcher's children: their CURVE keys come
# from a file only you can read, on the file system every node shares.
job="$SLURM_SUBMIT_DIR/splitnet-job-$SLURM_JOB_ID"
mkdir -p -m 700 "$job"
[ -f "$job/keys" ] || splitnet keys --out "$job/keys" --workers $((SLURM_NTASKS - 1))
# Placement comes from Slurm; the config gives the keys, the ports (the
# coordinator's, then one per worker: a block per job id, so jobs sharing a
# node do not meet) and anything else of cluster.config.json.
port=$((20000 + (SLURM_JOB_ID % 500) * 64))
cat > "$job/cluster.json" <<JSON
{
  "coordinator": { "host": "placed-by-slurm", "port": $port },
  "transport": "tcp",
  "workers": [{ "host": "placed-by-slurm", "device": "cpu", "port": $((port + 1)) }],
  "keys": "$job/keys"
}
JSON

# The run directory is the job's: a requeued job finds its checkpoint there
# and continues (the same flags may be given again; one that would change the
# saved run is refused).
run="$job/run"
resume=() # expanded as ${resume[@]+...}: an empty array is "unbound" to set -u before bash 4.4
[ -f "$run/checkpoint.manifest.json" ] && resume=(--resume "$run")

# --kill-on-bad-exit: a worker that fails ends the step at once (not at the
# coordinator's next deadline); --label prefixes each line with its task.
# The job's exit code is the coordinator's (README: Exit codes): 0 finished,
# 1 failed, 2 bad input, 143 stopped by scancel after its checkpoint (rerun
# this script, or `scontrol requeue`, to continue).
srun --kill-on-bad-exit=1 --label splitnet launch --config "$job/cluster.json" --out "$run" ${resume[@]+"${resume[@]}"} "$@"
