"""Devices, the mesh, shardings and multi-process start-up.

One `jax.sharding.Mesh` with a `data` axis. Batches are sharded on `data`;
params and optimizer state are replicated (explicit NamedShardings, so a
`model` axis can be added later without touching the steps). Each process
feeds only its own rows of the global batch.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize(dist_config) -> None:
  """Calls `jax.distributed.initialize` when several processes are configured.

  `dist_config` has `num_processes`, `process_id`, `coordinator_address` and
  `auto` (TPU pods and SLURM: let JAX discover everything). On CPU the
  collectives go through gloo.
  """
  if jax.distributed.is_initialized():
    return
  if dist_config.num_processes <= 1 and not dist_config.auto:
    return
  # Only affects CPU devices (tests, and CPU-only multi-host runs).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if dist_config.auto:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(
        coordinator_address=dist_config.coordinator_address,
        num_processes=dist_config.num_processes,
        process_id=dist_config.process_id,
    )
  _orbax_barriers_off_the_devices()


def _orbax_barriers_off_the_devices() -> None:
  """Makes orbax's barriers wait on the distributed client, not on a device
  all-gather (its default). Its async-save thread runs barriers while the
  main thread's train steps all-reduce; as device collectives the two can
  reach the processes in different orders and deadlock them (seen with
  gloo, 1 run in many). The client's barrier touches no device."""
  import orbax.checkpoint  # pylint: disable=g-import-not-at-top,unused-import  (defines the flag)
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():   # a library user's process: absl flags keep their defaults
    flags.FLAGS.mark_as_parsed()
  flags.FLAGS["experimental_orbax_use_distributed_barrier"].value = True


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all devices (of all processes) with axis `data`.

  Devices are ordered by process, so process p's devices hold a contiguous
  block of the batch, matching `jax.make_array_from_process_local_data`.
  """
  devices = jax.devices() if devices is None else devices
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(batch, mesh: Mesh):
  """Puts this process's rows of a global batch on the mesh.

  Every process passes its local rows (a dict of numpy arrays); the result
  is a dict of global `jax.Array`s sharded over `data`.
  """
  sharding = data_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def check_batch_size(batch_size: int, field: str, mesh: Mesh | int) -> None:
  """Raises ValueError if `batch_size` does not split evenly over the devices
  of `mesh` (or over `mesh` devices, a count), of all processes together."""
  n = mesh if isinstance(mesh, int) else mesh.devices.size
  if batch_size % n:
    lower, higher = max(n, batch_size // n * n), (batch_size // n + 1) * n
    options = f"{lower} or {higher}" if lower != higher else f"{higher}"
    raise ValueError(
        f"config.{field}={batch_size} must be a multiple of the number of devices "
        f"({n}, all processes together); try {options}.")


def is_main_process() -> bool:
  """Whether this is process 0, the one that writes files and prints."""
  return jax.process_index() == 0


def to_host(tree):
  """numpy copies of a pytree of replicated arrays, also when they span
  other processes' devices (each process reads its own replica)."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x) if isinstance(x, jax.Array) else x
  return jax.tree.map(get, tree)


_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+(all-reduce|all-gather|reduce-scatter|all-to-all|"
    r"ragged-all-to-all|collective-permute|collective-broadcast)(?:-start)?\(", re.M)
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+[a-z0-9]*)\[([\d,]*)\]")


def hlo_collectives(hlo_text: str) -> list[tuple[str, list[int]]]:
  """The collectives of an HLO module's text (`jitted.lower(...).compile().as_text()`):
  (op, the byte size of each array of its result), in the text's order.

  XLA combines all-reduces into one over a tuple, so an op may have several
  arrays; its bytes are their sum. Each op counts once as written (also one
  in a loop body); async pairs count once, at the `-start` (an async
  all-gather's result also holds its operand).
  """
  def nbytes(dtype, dims):
    bits = 8 if dtype == "pred" else int(re.search(r"\d+", dtype).group())
    return int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64)) * bits // 8
  return [(m.group(2), [nbytes(*a) for a in _ARRAY.findall(m.group(1))])
          for m in _COLLECTIVE.finditer(hlo_text)]
