"""The training-dynamics pieces under jit on a batch sharded over 8 simulated devices
equal their unsharded values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradlab import gradstats, losses, models, sharding, transforms


def test_losses_coherence_robust_aggregation_sliced_wasserstein_and_wta_crs_on_eight_devices():
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  batch = {
    "x": jnp.asarray(rng.normal(size=(64, 6)), jnp.float32),
    "y": jnp.asarray(rng.integers(0, 4, 64), jnp.int32),
  }
  shard = sharding.shard_batch(batch, mesh)
  model = models.MLP((8, 4))
  params = model.init(jax.random.key(0), batch["x"][:1])

  def all_of(b):
    logits = model.apply(params, b["x"])
    loss = lambda p, bb: optax.softmax_cross_entropy_with_integer_labels(
      model.apply(p, bb["x"]), bb["y"]
    ).mean()
    m = gradstats.gradient_moments(loss, params, b, chunk_size=8)
    per_example = gradstats.per_example_grads(loss, params, b)
    wins = transforms.winsorized_mean(3).update(per_example, optax.EmptyState())[0]
    mom = transforms.median_of_means(8).update(per_example, optax.EmptyState())[0]
    y = 0.5 + b["x"] * 1.5
    return {
      "stablemax": losses.stablemax_cross_entropy(logits, b["y"]),
      "collapse": losses.softmax_collapse_fraction(logits * 100, b["y"]),
      "coherence": gradstats.coherence(m),
      "winsorized": jax.tree.leaves(wins)[0],
      "median_of_means": jax.tree.leaves(mom)[0],
      "sw": gradstats.sliced_wasserstein_power(
        b["x"], y, jax.random.key(1), num_projections=8, control_variate="upper"
      ),
      "wta_grad": jax.grad(
        lambda w: jnp.sum(
          gradstats.wta_crs_dense(b["x"], w, jnp.zeros(3), jax.random.key(2), keep_fraction=0.3)
          ** 2
        )
      )(jnp.ones((6, 3))),
    }

  plain = all_of(batch)
  sharded = jax.jit(all_of)(shard)
  for k in plain:
    np.testing.assert_allclose(sharded[k], plain[k], rtol=2e-5, atol=1e-6, err_msg=k)
