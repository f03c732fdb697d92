#!/bin/bash
# Stop what tests/slurm/up.sh started in $SLURM_TEST_DIR, by PID (munged only if it started it).
S=${SLURM_TEST_DIR:?set SLURM_TEST_DIR}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
pids=("$S/slurmd.pid" "$S/slurmctld.pid")
[ -e "$S/munged.ours" ] && pids+=(/run/munge/munged.pid)
for f in "${pids[@]}"; do
  [ -s "$f" ] && $SUDO kill "$(cat "$f")" 2>/dev/null
done
for _ in $(seq 1 50); do
  alive=0
  for f in "${pids[@]}"; do [ -s "$f" ] && $SUDO kill -0 "$(cat "$f")" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && exit 0
  sleep 0.1
done
echo "still running after 5 s: ${pids[*]}" >&2
exit 0
