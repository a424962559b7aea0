#!/usr/bin/env bash
# Runs one experiment as N processes on this machine (jax.distributed + gloo
# CPU collectives), each with D fake CPU devices: a stand-in for a multi-host
# run. All processes share the workdir; only process 0 writes logs.
#
#   launch/local_multiprocess.sh N D CONFIG WORKDIR [--config.field=value ...]
#   launch/local_multiprocess.sh 2 2 configs/default.py runs/mp --config.num_steps=100
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,9p' "$0"; exit 2
fi
n=$1; d=$2; config=$3; workdir=$4; shift 4
py=${PYTHON:-.venv/bin/python}
port=$("$py" -c 'import portpicker; print(portpicker.pick_unused_port())')
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$d" JAX_PLATFORMS=cpu \
    "$py" -m neurojax.main --config="$config" --workdir="$workdir" \
    --config.distributed.num_processes="$n" --config.distributed.process_id="$i" \
    --config.distributed.coordinator_address="localhost:$port" \
    --config.progress="$([ "$i" = 0 ] && echo True || echo False)" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
