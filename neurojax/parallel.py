"""Devices, the mesh, shardings and multi-process start-up.

One `jax.sharding.Mesh` with a `data` axis. Batches are sharded on `data`;
each process feeds only its own rows of the global batch. The train state
(params, optimizer state, EMA, masks) is replicated, or, with
`config.parallel.state="fsdp"`, sharded over `data` leaf by leaf as
`config.parallel.rules` say (ZeRO-3/FSDP: each device holds 1/n of a
sharded leaf; XLA all-gathers the params where the step uses them and
reduces their gradients to each device's slice: GPU and TPU compile that to
a reduce-scatter, XLA:CPU to an all-reduce and a slice). `state_shardings`
turns the rules into NamedShardings, `place` puts a state on them; the train
step constrains its state to them.
"""

from __future__ import annotations

import dataclasses
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


STATE_LAYOUTS = ("replicated", "fsdp")
RULE_KINDS = ("fsdp", "replicated")
DEFAULT_FSDP_RULES = ((".*", "fsdp"),)


@dataclasses.dataclass(frozen=True)
class Rules:
  """How the train state is laid out: (regex, "fsdp" | "replicated") rules
  in order, and the fewest elements a leaf needs to be sharded."""
  rules: tuple = DEFAULT_FSDP_RULES
  min_size: int = 2**14


def state_rules(parallel_config) -> Rules | None:
  """The `Rules` of `config.parallel`, or None: replicate everything."""
  if parallel_config.state == "replicated":
    return None
  return Rules(tuple(tuple(r) for r in parallel_config.rules) or DEFAULT_FSDP_RULES,
               int(parallel_config.min_size))


def validate_parallel(parallel_config) -> None:
  """Raises ValueError naming the field of a bad `config.parallel`."""
  if parallel_config.state not in STATE_LAYOUTS:
    raise ValueError(f"config.parallel.state={parallel_config.state!r} is not valid; choose one "
                     f"of: {', '.join(STATE_LAYOUTS)}")
  for i, rule in enumerate(parallel_config.rules):
    if len(rule) != 2 or rule[1] not in RULE_KINDS:
      raise ValueError(f"config.parallel.rules[{i}]={tuple(rule)!r} must be (regex, kind) with "
                       f"kind one of: {', '.join(RULE_KINDS)}")
    try:
      re.compile(rule[0])
    except re.error as e:
      raise ValueError(f"config.parallel.rules[{i}]: {rule[0]!r} is not a regex ({e})") from None
  if parallel_config.min_size < 0:
    raise ValueError(f"config.parallel.min_size={parallel_config.min_size} must be >= 0")


def fsdp_spec(shape, n: int, min_size: int) -> P:
  """Shards the largest dimension that `n` divides (the last of equals), if
  the leaf has at least `min_size` elements; else replicated."""
  if n <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  dims = [d for d in range(len(shape)) if shape[d] % n == 0]
  if not dims:
    return P()
  d = max(dims, key=lambda d: (shape[d], d))
  return P(*([None] * d + [DATA_AXIS]))


def state_shardings(mesh: Mesh, tree, rules: Rules | None):
  """NamedShardings for every leaf of `tree` (a train state, arrays or
  shapes): the first rule whose regex `re.search`es the leaf's path
  ("params/conv1/kernel", "opt_state/0/mu/conv1/kernel", ...) decides;
  unmatched leaves, and all with rules None, are replicated."""
  rep = replicated(mesh)
  if rules is None:
    return jax.tree.map(lambda _: rep, tree)
  compiled = [(re.compile(regex), kind) for regex, kind in rules.rules]
  n = mesh.shape[DATA_AXIS]

  def one(path, leaf):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    for regex, kind in compiled:
      if regex.search(name):
        if kind == "fsdp":
          return NamedSharding(mesh, fsdp_spec(np.shape(leaf), n, rules.min_size))
        break
    return rep
  return jax.tree_util.tree_map_with_path(one, tree)


def place(tree, mesh: Mesh, rules: Rules | None):
  """`tree` (a train state or a part of one) on the mesh as `rules` lay it out."""
  return jax.device_put(tree, state_shardings(mesh, tree, rules))


def per_device_bytes(tree) -> int:
  """The bytes one device holds of a tree of sharded arrays or shapes."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


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
  """numpy copies of a pytree of arrays, also when they span other
  processes' devices: each process reads its own replica of a replicated
  array; a sharded one is gathered (a collective: every process calls it)."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
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
