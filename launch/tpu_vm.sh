#!/usr/bin/env bash
# Runs an experiment on every host of a Cloud TPU VM slice.
#
#   launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [--config.field=value ...]
#   launch/tpu_vm.sh my-v4-32 us-central2-b configs/default.py /mnt/shared/runs/lenet5
#
# Every host clones the same commit, installs neurojax with the `tpu` extra
# and starts the same command; `--config.distributed.auto=True` lets
# jax.distributed discover the slice. WORKDIR must be a directory all hosts
# share (e.g. a Filestore/NFS mount). Re-running the script resumes.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,11p' "$0"; exit 2
fi
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
repo=$(git remote get-url origin 2>/dev/null || echo "")
commit=$(git rev-parse HEAD)
if [ -z "$repo" ]; then
  echo "launch/tpu_vm.sh: this checkout has no 'origin' remote for the hosts to clone" >&2
  exit 2
fi
remote="set -e
if [ ! -d neurojax ]; then git clone $repo neurojax; fi
cd neurojax && git fetch -q origin && git checkout -q $commit
test -d .venv || python3 -m venv .venv
.venv/bin/pip install -q -e '.[tpu]'
.venv/bin/python -m neurojax.main --config=$config --workdir=$workdir \
  --config.distributed.auto=True $*"
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$remote"
