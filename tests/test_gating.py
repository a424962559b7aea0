"""neurojax.nn.gating: the myKakuritsu layer, its sampling, gradients and memory."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neurojax.nn import Gate, GatedHead, Kakuritsu, gated_matmul


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


def _documented_mask(key, p, shape):
  """The draws the module docstring documents, written out in NumPy."""
  for m in (1, 2, 4, 8):
    if float(p * 2**m).is_integer():
      per_word = 32 // m
      words = np.asarray(jax.random.bits(key, (shape[0], -(-shape[1] // per_word)), jnp.uint32))
      values = [(words >> np.uint32(m * k)) & np.uint32(2**m - 1) for k in range(per_word)]
      gates = np.stack(values, axis=-1).reshape(shape[0], -1)[:, :shape[1]]
      return gates < round(p * 2**m)
  return np.asarray(jax.random.bernoulli(key, p, shape))


@pytest.mark.parametrize("p", [0.5, 0.25, 0.3])       # 1 bit, 2 bits, a uniform float per gate
def test_matches_a_hand_computation_with_the_documented_draws(p):
  x, w = _data(fan_in=70)                               # not a multiple of 32: a partial word
  key = jax.random.PRNGKey(3)
  y = gated_matmul(x, w, key, p)
  masks = np.stack([_documented_mask(jax.random.fold_in(key, j), p, x.shape)
                    for j in range(w.shape[1])], axis=-1)       # [B, in, out]
  expected = np.einsum("bij,ij,bi->bj", masks.astype(np.float64), np.float64(w), np.float64(x))
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
  assert abs(masks.mean() - p) < 0.05


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
  forward+backward needs far less scratch memory, set by max_elements."""
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
  default = scratch(1 << 22)
  assert default < full_mask / 5, f"{default / 2**20:.0f} MiB of scratch"
  assert scratch(1 << 20) < default / 2


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
