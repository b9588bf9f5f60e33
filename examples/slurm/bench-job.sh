#!/bin/bash
#SBATCH --nodes=4 --ntasks-per-node=1 --exclusive
# ainftp bench on the job's own nodes (README, "The bench on a SLURM cluster"):
# ainftp, the plain-TCP ring, Gloo and Open MPI (where installed on every
# node), each verified, on the interface that routes between the nodes. It
# runs once, here, and starts every rank itself through srun (one task per
# node; Open MPI through srun --mpi=pmix). Needs root on the nodes (XDP) and
# ainftp at the same path on every node (a shared file system, or sbcast).
# It leaves every node as it found it, also on scancel; the report (table,
# bench.json, charts) goes to ./bench-report-<job id>.
AINFTP=${AINFTP:-ainftp}
exec "$AINFTP" bench --slurm --report "${AINFTP_REPORT:-bench-report-$SLURM_JOB_ID}" ${AINFTP_BENCH_ARGS:-}
