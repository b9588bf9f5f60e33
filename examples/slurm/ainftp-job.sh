#!/bin/bash
#SBATCH --nodes=4 --ntasks-per-node=1 --exclusive
# ainftp on every node of a SLURM job (README, "SLURM"). The swarm attaches
# the program itself and detaches it when it ends: done, failed, or cancelled
# (scancel sends SIGTERM to every task, and the swarm detaches on SIGTERM).
# A node killed outright (SIGKILL after KillWait, the OOM killer) leaves its
# pins: the Epilog (epilog.sh) removes them, and so does the next swarm.
IFACE=${AINFTP_IFACE:-eth0}
AINFTP=${AINFTP:-ainftp}
# a new 128-bit job key per job: srun passes the environment on, and every
# frame then carries a MAC under it (README, "Security")
export AINFTP_JOB_KEY=${AINFTP_JOB_KEY:-$("$AINFTP" keygen)}
# --slurm: members, rank and job id from srun; a name that does not resolve
# is looked up as a node (scontrol show node: NodeAddr)
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  "$AINFTP" swarm --slurm --iface "$IFACE" ${AINFTP_ARGS:---synthetic 16MiB --rounds 200 --verify} &
# or: ... swarm --slurm --iface "$IFACE" --serve &   (trainers: /run/ainftp/slurm-$SLURM_JOB_ID-$SLURMD_NODENAME.sock)
wait $!   # srun's exit code (the highest of the tasks'): a failed swarm fails the job
