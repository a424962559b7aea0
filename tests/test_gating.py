"""neurojax.nn.gating: the myKakuritsu layer, its sampling, gradients and memory."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurojax.nn import Gate, GatedHead, Kakuritsu, gated_matmul
from neurojax.nn import gating


def _data(batch=6, fan_in=7, fan_out=5, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.standard_normal((batch, fan_in)), jnp.float32),
          jnp.asarray(rng.standard_normal((fan_in, fan_out)), jnp.float32))


def test_p1_is_the_plain_linear_layer_exactly():
  x, _ = _data()
  layer = Kakuritsu(5, p=0.5)
  variables = layer.init({"params": jax.random.PRNGKey(0), "gate": jax.random.PRNGKey(1)}, x)
  kernel = variables["params"]["linear"]["kernel"]
  assert float(jnp.abs(kernel).max()) <= 0.1                  # U(-0.1, 0.1)
  y = layer.apply(variables, x, p=1.0)                         # "switch": no key needed
  chex.assert_trees_all_equal(y, x @ kernel)


def _np_threefry(key, x0, x1):
  """Threefry-2x32, 20 rounds, in NumPy uint32 (Random123's specification)."""
  k0, k1 = np.uint32(key[0]), np.uint32(key[1])
  ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
  rot = lambda v, r: (v << np.uint32(r)) | (v >> np.uint32(32 - r))  # noqa: E731
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for g in range(5):
    for r in ((13, 15, 26, 6), (17, 29, 16, 24))[g % 2]:
      x0 = x0 + x1
      x1 = rot(x1, r) ^ x0
    x0, x1 = x0 + ks[(g + 1) % 3], x1 + ks[(g + 2) % 3] + np.uint32(g + 1)
  return x0, x1


def test_threefry_is_jax_randoms_generator():
  import jax.extend.random as jr  # pylint: disable=g-import-not-at-top
  key = np.array([0x12345678, 0x9ABCDEF0], np.uint32)
  x0, x1 = np.arange(7, dtype=np.uint32), np.arange(100, 107, dtype=np.uint32)
  expected = np.asarray(jr.threefry_2x32(jnp.asarray(key), jnp.asarray(np.concatenate([x0, x1]))))
  with np.errstate(over="ignore"):
    np.testing.assert_array_equal(np.concatenate(_np_threefry(key, x0, x1)), expected)
  got = gating.threefry2x32(*map(jnp.asarray, (key[0], key[1], x0, x1)))
  np.testing.assert_array_equal(np.concatenate(got), expected)


def _documented_mask(key, p, shape, fan_out):
  """The bool [B, in, out] gates the module docstring documents, in NumPy."""
  for m in (1, 2, 4, 8, 16, 32):
    if m == 32 or float(p * 2**m).is_integer():
      break
  batch, fan_in = shape
  g = 64 // m
  calls = -(-fan_in // g)
  seed = np.asarray(jax.random.bits(key, (2,), jnp.uint32))
  j, b, k = np.meshgrid(np.arange(fan_out, dtype=np.uint32), np.arange(batch, dtype=np.uint32),
                        np.arange(calls, dtype=np.uint32), indexing="ij")
  with np.errstate(over="ignore"):
    w0, w1 = _np_threefry(seed, j, b * np.uint32(calls) + k)           # [out, B, calls]
  words = np.stack([w0, w1], axis=-1).astype(np.uint64)               # [out, B, calls, 2]
  values = np.stack([(words >> np.uint64(m * r)) & np.uint64(2**m - 1) for r in range(32 // m)],
                    axis=-1)                                         # [out, B, calls, 2, g/2]
  gates = values.reshape(fan_out, batch, calls * g)[:, :, :fan_in] < min(round(p * 2**m),
                                                                         2**32 - 1)
  return gates.transpose(1, 2, 0)


@pytest.mark.parametrize("p", [0.5, 0.25, 0.3])    # 1 bit, 2 bits, 32 bits a gate
def test_matches_a_hand_computation_with_the_documented_draws(p):
  x, w = _data(fan_in=70)                               # not a multiple of 64: a partial call
  key = jax.random.PRNGKey(3)
  y = gated_matmul(x, w, key, p)
  masks = _documented_mask(key, p, x.shape, w.shape[1])
  expected = np.einsum("bij,ij,bi->bj", masks.astype(np.float64), np.float64(w), np.float64(x))
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
  assert abs(masks.mean() - p) < 0.05


@pytest.mark.parametrize("p", [0.5, 0.25, 0.3])
def test_pallas_kernel_is_the_xla_path_exactly(p):
  """Interpret mode on CPU. Integer data make every sum exact in float32 in
  any order, so equal outputs mean equal gates: one flipped gate would change
  an output by a nonzero integer. Batch 20 and 130 columns leave partial tiles."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.integers(-4, 5, (20, 70)), jnp.float32)
  w = jnp.asarray(rng.integers(-4, 5, (70, 130)), jnp.float32)
  key = jax.random.PRNGKey(7)
  xla = gated_matmul(x, w, key, p)
  np.testing.assert_array_equal(gated_matmul(x, w, key, p, impl="pallas"), xla)
  masks = _documented_mask(key, p, x.shape, w.shape[1])
  np.testing.assert_array_equal(xla, np.einsum("bij,ij,bi->bj", masks, w, x))
  xf, wf = _data(batch=20, fan_in=70, fan_out=130)
  np.testing.assert_allclose(gated_matmul(xf, wf, key, p, impl="pallas"),
                             gated_matmul(xf, wf, key, p), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="impl='triton'.*xla, pallas"):
    gated_matmul(x, w, key, p, impl="triton")


def test_block_size_changes_memory_not_results():
  x, w = _data(batch=4, fan_in=9, fan_out=13)
  key = jax.random.PRNGKey(0)
  full = gated_matmul(x, w, key, 0.5)
  for max_elements in (1, 36, 100, 10**9):      # 1 column per block .. all at once
    np.testing.assert_allclose(gated_matmul(x, w, key, 0.5, max_elements), full,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("p", [0.5, 0.75, 0.3])
def test_mean_is_p_times_the_plain_output_and_samples_are_independent(p):
  x, w = _data(batch=2, fan_in=40, fan_out=3)
  x = x.at[1].set(x[0])                            # two identical samples
  n = 4000
  ys = jax.vmap(lambda k: gated_matmul(x, w, k, p))(jax.random.split(jax.random.PRNGKey(0), n))
  plain = np.asarray(x @ w)
  # Var of one output: p(1-p) sum_i (w_ij x_i)^2; the mean of n draws is within 5 s.e.
  se = np.sqrt(p * (1 - p) * np.einsum("bi,ij->bj", np.asarray(x)**2, np.asarray(w)**2) / n)
  np.testing.assert_array_less(np.abs(np.asarray(ys.mean(0)) - p * plain), 5 * se)
  # Same input, different samples: their gates are drawn independently.
  a, b = np.asarray(ys[:, 0, :]), np.asarray(ys[:, 1, :])
  assert not np.allclose(a, b)
  for j in range(3):
    assert abs(np.corrcoef(a[:, j], b[:, j])[0, 1]) < 0.1


def test_same_key_same_output_and_another_key_another():
  x, _ = _data()
  layer = Kakuritsu(5, p=0.5)
  variables = layer.init({"params": jax.random.PRNGKey(0), "gate": jax.random.PRNGKey(1)}, x)
  run = lambda k: layer.apply(variables, x, rngs={"gate": jax.random.PRNGKey(k)})
  chex.assert_trees_all_equal(run(7), run(7))
  assert not np.allclose(run(7), run(8))
  with pytest.raises(Exception, match="gate"):
    layer.apply(variables, x)                       # stochastic: a key is required


def test_gradients_are_those_of_the_plain_layer():
  x, _ = _data()
  layer = Kakuritsu(5, p=0.25)
  variables = layer.init({"params": jax.random.PRNGKey(0), "gate": jax.random.PRNGKey(1)}, x)
  cot = jnp.asarray(np.random.default_rng(1).standard_normal((6, 5)), jnp.float32)

  def loss(params, x, p):
    return jnp.sum(cot * layer.apply({"params": params}, x, p=p,
                                     rngs={"gate": jax.random.PRNGKey(2)}))

  gated = jax.grad(loss, argnums=(0, 1))(variables["params"], x, 0.25)
  plain = jax.grad(loss, argnums=(0, 1))(variables["params"], x, 1.0)
  chex.assert_trees_all_close(gated, plain, rtol=1e-6, atol=1e-6)
  kernel = variables["params"]["linear"]["kernel"]
  chex.assert_trees_all_close(gated[1], cot @ kernel.T, rtol=1e-6)     # dL/dx = g W^T
  chex.assert_trees_all_close(gated[0]["linear"]["kernel"], x.T @ cot, rtol=1e-6)


def test_imagenet_head_memory_stays_bounded():
  """Batch 64, 2048 -> 1000: a full float mask would be 524 MB; the compiled
  forward+backward needs 6 MiB of scratch, set by max_elements."""
  def scratch(max_elements):
    head = GatedHead(hidden=1000, num_classes=1000, weight_init="kakuritsu",
                     max_elements=max_elements)
    x = jnp.zeros((64, 2048), jnp.float32)
    params = jax.eval_shape(head.init, jax.random.PRNGKey(0), x)["params"]

    def loss(params, x, key):
      return jnp.sum(head.apply({"params": params}, x, Gate("kakuritsu", 0.5),
                                rngs={"gate": key}))

    compiled = jax.jit(jax.grad(loss)).lower(params, x, jax.random.PRNGKey(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  full_mask = 64 * 2048 * 1000 * 4
  default = scratch(gating.MAX_ELEMENTS)
  assert default < full_mask / 50, f"{default / 2**20:.0f} MiB of scratch"
  assert scratch(1 << 24) > 4 * default


def test_heads_and_eval_gates():
  x, _ = _data(batch=8, fan_in=12)
  head = GatedHead(hidden=10, num_classes=4)
  variables = head.init(jax.random.PRNGKey(0), x)
  w1, w2 = variables["params"]["fc1"]["kernel"], variables["params"]["fc2"]["kernel"]
  plain = jax.nn.relu(x @ w1) @ w2
  chex.assert_trees_all_close(head.apply(variables, x), plain, rtol=1e-6)
  rngs = {"gate": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}
  for gate in (Gate("kakuritsu", 0.5), Gate("dropout", rate=0.5)):
    assert not np.allclose(head.apply(variables, x, gate, rngs=rngs), plain)
  chex.assert_trees_all_close(head.apply(variables, x, Gate("kakuritsu", 1.0)), plain, rtol=1e-6)
  assert str(Gate("dropout", rate=0.5)) == "dropout 0.5"
  with pytest.raises(ValueError, match="none, kakuritsu, dropout"):
    Gate("gating")
  with pytest.raises(ValueError, match="p=1.5"):
    Gate("kakuritsu", 1.5)
