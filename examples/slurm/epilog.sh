#!/bin/sh
# SLURM Epilog for ainftp (slurm.conf: Epilog=/etc/slurm/ainftp-epilog.sh).
# slurmd runs it as root on every node of a job once the job has ended. A
# swarm that exits detaches itself; one that was killed (SIGKILL after
# KillWait, the OOM killer) leaves its pins, and its program attached. Remove
# them; pins made by `ainftp attach` stay. An Epilog that fails drains the
# node, so this one never fails.
${AINFTP:-ainftp} detach --stale || true
exit 0
