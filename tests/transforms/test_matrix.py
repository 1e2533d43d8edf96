"""One matrix every transform goes through (optax's ``_common_test`` idea):
inside ``optax.chain``, jitted inside ``gradlab.train.make_train_step``, on 8
simulated devices (equal to one device), and the non-finite policy."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import models, sharding, train, transforms

MODEL = models.MLP((16, 3))


def _loss_fn(p, b, key):
  del key
  logits = MODEL.apply(p, b["x"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean(), {}


@functools.cache
def _params():
  # flax's init under jit: one compile, not one per operation
  return jax.jit(MODEL.init)(jax.random.key(0), jnp.zeros((1, 5)))


def _data(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "x": rng.normal(size=(n, 5)).astype(np.float32),
    "y": rng.integers(0, 3, size=n).astype(np.int32),
  }


def _layer_labels(params):
  return jax.tree_util.tree_map_with_path(
    lambda path, _: "hidden" if "dense_0" in jax.tree_util.keystr(path) else "head", params
  )


FULL = _data(48, seed=9)
_full_grad = jax.grad(lambda p: _loss_fn(p, FULL, None)[0])

CASES = {
  "spam": (
    lambda: transforms.spam(1e-2, threshold=50.0, reset_interval=3, warmup_steps=2, clip_after=1),
    None,
  ),
  "spike_clip": (
    lambda: optax.chain(transforms.spike_clip(warmup_steps=2), optax.adam(1e-2)),
    None,
  ),
  "per_layer_clip": (lambda: optax.chain(transforms.per_layer_clip(0.5), optax.sgd(0.1)), None),
  "layerwise_normalize": (
    lambda: optax.chain(transforms.layerwise_normalize(), optax.sgd(0.01)),
    None,
  ),
  "diffgrad": (lambda: transforms.diffgrad(1e-2), None),
  "orthogonal_gradient": (
    lambda: optax.chain(transforms.orthogonal_gradient(), optax.sgd(0.1)),
    None,
  ),
  "scale": (lambda: transforms.column_normalized_sgd(1e-2, last_layer="dense_1/kernel"), None),
  "agvm": (
    lambda: optax.chain(
      optax.sgd(0.1, momentum=0.9), transforms.agvm(_layer_labels, "hidden", start=0, interval=1)
    ),
    transforms.half_batch_grads(_loss_fn),
  ),
  "adam_8bit": (lambda: transforms.adam_8bit(1e-2, min_8bit_size=0), None),
  "storm": (lambda: transforms.storm(k=0.1, w=0.1, c=10.0), transforms.grad_fn_extra_args),
  "mars": (lambda: transforms.mars(1e-2), None),
  "mfac": (lambda: transforms.mfac(1e-2, num_grads=4, damping=1e-2), None),
  "mars_exact": (lambda: transforms.mars(1e-2, exact=True), transforms.grad_fn_extra_args),
  "svrg": (
    lambda: optax.chain(transforms.svrg(2), optax.sgd(0.1)),
    lambda state, batch, key, grad_fn: {"grad_fn": grad_fn, "full_grad_fn": _full_grad},
  ),
  # curvature from make_update's obj_fn (optax's Sophia: test_sophia_* below)
  "adahessian": (lambda: transforms.adahessian(1e-2, key=jax.random.key(0)), None),
  # make_update's value (the loss) and the gradient norm against their history
  "skip_spikes": (lambda: transforms.skip_spikes(optax.adam(1e-2), window=4, warmup=3), None),
}


# The chains whose optax members keep state: only the gradlab member (this
# index) is guaranteed untouched; optax.apply_if_finite makes the whole skip atomic.
MEMBER = {"spike_clip": 0, "agvm": 1}


@pytest.mark.parametrize("name", sorted(CASES))
def test_train_step_on_8_devices_equals_one_device(name):
  make_tx, extra_args_fn = CASES[name]
  params = _params()
  batches = [_data(16, seed=s) for s in range(4)]
  finals = []
  for mesh in (None, sharding.make_mesh()):
    tx = make_tx()
    state = train.TrainState.create(params, tx, jax.random.key(1))
    step = train.make_train_step(_loss_fn, tx, mesh=mesh, extra_args_fn=extra_args_fn, donate=False)
    for b in batches:
      state, metrics = step(state, sharding.shard_batch(b, mesh) if mesh else b)
      chex.assert_tree_all_finite(metrics["loss"])
    finals.append(state.params)
  moved = optax.tree.norm(optax.tree.sub(finals[0], params))
  assert float(moved) > 0
  # an 8-way sharded mean sums in another order: float32 rounding only
  chex.assert_trees_all_close(finals[0], finals[1], rtol=2e-4, atol=2e-5)


def _direct_extra(name, grads):
  if name in ("storm", "mars_exact"):
    return {"grad_fn": lambda p: grads}
  if name == "agvm":
    return {"split_grads": jax.tree.map(lambda g: jnp.stack([g, 0.5 * g]), grads)}
  if name == "svrg":
    return {"grad_fn": lambda p: grads, "full_grad_fn": lambda p: grads}
  if name == "adahessian":
    return {"obj_fn": lambda p: _loss_fn(p, _data(), None)[0]}
  if name == "skip_spikes":
    return {"value": jnp.asarray(1.0)}
  return {}


def _jitted_update(tx, name):
  """``tx.update`` with the case's extra arguments, jitted once (their
  functions are built inside the trace)."""
  return jax.jit(lambda g, s, p: tx.update(g, s, p, **_direct_extra(name, g)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("name", sorted(CASES))
def test_nonfinite_gradients_are_skipped_and_leave_the_state_alone(name, bad):
  make_tx, _ = CASES[name]
  tx = make_tx()
  params = _params()
  good = jax.grad(lambda p: _loss_fn(p, _data(), None)[0])(params)
  state = tx.init(params)
  update = _jitted_update(tx, name)
  for _ in range(3):  # some history first
    _, state = update(good, state, params)
  poisoned = jax.tree.map(lambda g: g, good)
  leaf = poisoned["params"]["dense_0"]["kernel"]
  poisoned["params"]["dense_0"]["kernel"] = leaf.at[0, 0].set(bad)
  updates, new_state = update(poisoned, state, params)
  member = MEMBER.get(name)
  if member is None:  # a whole gradlab optimizer (or one whose other members are stateless)
    chex.assert_trees_all_equal(updates, optax.tree.zeros_like(updates))
    chex.assert_trees_all_equal(*(optax.tree.unwrap_random_key_data(t) for t in (new_state, state)))
  else:  # a chain with an optax member: the gradlab member's state is untouched
    chex.assert_trees_all_equal(new_state[member], state[member])
  if member is not None:
    return  # (an optax member before ours, e.g. agvm's sgd trace, did take the NaN)
  # and the next good step proceeds normally
  updates, _ = update(good, new_state, params)
  assert any(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(updates))


def test_sophia_through_make_train_step_matches_its_hand_written_loop():
  # optax.contrib.sophia's Hutchinson estimator takes jvp(grad(obj_fn)); make_update
  # passes obj_fn, also on 8 devices with microbatches (their mean loss is the batch's)
  params, batch = _params(), _data(32, seed=3)
  # gamma = 10: about a quarter of the entries escape Sophia's clip (the authors' "win
  # rate" band is 0.1-0.5), so the Hessian estimate shapes the step: a half batch's
  # Hessian moves the parameters by up to 70% (relative) after these 3 steps
  opt = optax.contrib.sophia(1e-2, update_interval=1, gamma=10.0)
  obj = lambda p: _loss_fn(p, batch, None)[0]  # noqa: E731
  hand = jax.jit(lambda g, s, p: opt.update(g, s, p, obj_fn=obj))
  p, s = params, opt.init(params)
  for _ in range(3):
    u, s = hand(jax.grad(obj)(p), s, p)
    p = optax.apply_updates(p, u)
  assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(s[0].nu))  # it estimated
  mesh = sharding.make_mesh()
  state = train.TrainState.create(params, opt, jax.random.key(1))
  step = train.make_train_step(_loss_fn, opt, mesh=mesh, num_microbatches=2, donate=False)
  for _ in range(3):
    state, _ = step(state, sharding.shard_batch(batch, mesh))
  # float32 rounding: the sharded, microbatched mean sums in another order
  chex.assert_trees_all_close(state.params, p, rtol=2e-4, atol=2e-5)


def _obj_fn_spy():
  """An optimizer whose state records ``obj_fn(params)`` and its gradient (zero update)."""

  def update(updates, state, params=None, *, obj_fn, **extra):
    del state, extra
    value, grad = jax.value_and_grad(obj_fn)(params)
    return jax.tree.map(jnp.zeros_like, updates), (value, grad)

  return optax.GradientTransformationExtraArgs(
    lambda p: (jnp.zeros(()), optax.tree.zeros_like(p)), update
  )


def test_obj_fn_is_the_differentiable_loss_on_the_steps_batch():
  params, batch = _params(), _data(32, seed=4)
  loss, grad = jax.value_and_grad(lambda p: _loss_fn(p, batch, None)[0])(params)
  zero_grad = lambda p, b, k: (_loss_fn(p, b, k), optax.tree.zeros_like(p))  # noqa: E731
  for kwargs in (
    dict(mesh=sharding.make_mesh(), num_microbatches=4),
    dict(value_and_grad_fn=zero_grad),  # an estimated gradient: obj_fn stays loss_fn's
  ):
    spy = _obj_fn_spy()
    step = train.make_train_step(_loss_fn, spy, donate=False, **kwargs)
    mesh = kwargs.get("mesh")
    state, _ = step(
      train.TrainState.create(params, spy, jax.random.key(0)),
      sharding.shard_batch(batch, mesh) if mesh else batch,
    )
    value, obj_grad = state.opt_state
    np.testing.assert_allclose(float(value), float(loss), rtol=1e-6)  # float32 rounding
    chex.assert_trees_all_close(obj_grad, grad, rtol=1e-4, atol=1e-7)


def test_gradlab_member_state_is_exactly_unchanged_inside_a_chain():
  tx = optax.chain(transforms.spike_clip(warmup_steps=2), optax.adam(1e-2))
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(3):
    _, state = tx.update({"w": jnp.ones(3)}, state)
  _, new_state = tx.update({"w": jnp.array([1.0, jnp.nan, 1.0])}, state)
  chex.assert_trees_all_equal(new_state[0], state[0])
  # wrapping the whole chain makes the skip atomic (optax's apply_if_finite)
  guarded = optax.apply_if_finite(tx, max_consecutive_errors=5)
  gs = guarded.init(params)
  _, gs2 = guarded.update({"w": jnp.array([jnp.nan, 1.0, 1.0])}, gs)
  assert int(gs2.notfinite_count) == 1
  chex.assert_trees_all_equal(gs2.inner_state, gs.inner_state)


def test_dp_aggregate_jits_skips_nonfinite_and_adds_calibrated_noise():
  tx = transforms.dp_per_layer_aggregate(1.0, 2.0, jax.random.key(0))
  per_example = {"a": jnp.zeros((4, 300)), "b": jnp.zeros((4, 200))}
  state = tx.init(None)
  upd, state2 = jax.jit(tx.update)(per_example, state)
  # zero gradients: the output is pure noise, N(0, (z C)^2) / B per coordinate
  noise = np.concatenate([np.asarray(upd["a"]), np.asarray(upd["b"])]) * 4
  sd = noise.std(ddof=1)
  # std of the sample std for n = 500 normals is sigma / sqrt(2(n-1)): 4 sigma band
  assert abs(sd - 2.0) < 4 * 2.0 / np.sqrt(2 * 499)
  bad = {"a": per_example["a"].at[0, 0].set(jnp.nan), "b": per_example["b"]}
  upd, state3 = jax.jit(tx.update)(bad, state2)
  chex.assert_trees_all_equal(upd, optax.tree.zeros_like(upd))
  chex.assert_trees_all_equal(jax.random.key_data(state3.key), jax.random.key_data(state2.key))


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: transforms.spam(1e-3, b1=1.0), "b1"),
    (lambda: transforms.spike_clip(warmup_steps=0), "warmup_steps"),
    (lambda: transforms.spike_clip(clip_option="median"), "clip_option"),
    (lambda: transforms.per_layer_clip(-1.0), "max_norm"),
    (lambda: transforms.per_layer_clip(1.0, budget="flat"), "budget"),
    (lambda: transforms.dp_per_layer_aggregate(1.0, 1.0, 0), "key"),
    (
      lambda: transforms.column_normalized_sgd(1e-3, last_layer="nope").init(
        {"Dense_0": {"kernel": jnp.zeros((2, 2))}}
      ),
      "last_layer",
    ),
    (lambda: transforms.column_normalize().update({"b": jnp.zeros(3)}, ()), "route 1-D"),
    (lambda: transforms.agvm({"a": "x"}, "y").init({"a": jnp.zeros(2)}), "reference"),
    (
      lambda: transforms.agvm({"a": "x"}, "x").update(
        {"a": jnp.zeros(2)}, transforms.agvm({"a": "x"}, "x").init({"a": jnp.zeros(2)})
      ),
      "split_grads",
    ),
    (
      lambda: transforms.storm().update(
        {"a": jnp.zeros(2)}, transforms.storm().init({"a": jnp.zeros(2)}), {"a": jnp.zeros(2)}
      ),
      "grad_fn",
    ),
    (lambda: transforms.svrg(0), "snapshot_every"),
    (lambda: transforms.adam_8bit(1e-3, block_size=0), "block_size"),
  ],
)
def test_bad_arguments_get_a_clear_error(call, message):
  with pytest.raises(ValueError, match=message):
    call()


# ---------------------------------------------------------------------------
# optax's wrappers, as optax's own alias tests use them (optax/_src/alias_test.py):
# every alias with its numeric hyperparameters injected (traced under jit),
# inside MultiSteps, apply_if_finite, and a chain with reduce_on_plateau.


def _skip_spikes_adam(learning_rate, threshold, window, warmup):
  return transforms.skip_spikes(
    optax.adam(learning_rate), threshold=threshold, window=window, warmup=warmup
  )


ALIASES = {
  # name: (factory, kwargs, static_args, needs: True for grad_fn, or the extra argument's name)
  "adahessian": (
    transforms.adahessian,
    dict(learning_rate=1e-2, weight_decay=1e-3, key=jax.random.key(0)),
    ("num_probes",),
    "obj_fn",
  ),
  "skip_spikes": (
    _skip_spikes_adam,
    dict(learning_rate=1e-2, threshold=6.0, window=4, warmup=3),
    ("window", "warmup"),
    "value",
  ),
  "spam": (
    transforms.spam,
    dict(learning_rate=1e-2, threshold=50.0, reset_interval=3, warmup_steps=2, clip_after=2),
    (),
    False,
  ),
  "diffgrad": (transforms.diffgrad, dict(learning_rate=1e-2, weight_decay=1e-3), (), False),
  "adam_8bit": (
    transforms.adam_8bit,
    dict(learning_rate=1e-2, min_8bit_size=0, block_size=4),
    ("block_size", "min_8bit_size"),
    False,
  ),
  "mars": (transforms.mars, dict(learning_rate=1e-2, weight_decay=1e-3), (), False),
  "mfac": (
    transforms.mfac,
    dict(learning_rate=1e-2, num_grads=4, damping=1e-2, momentum=0.5),
    ("num_grads",),
    False,
  ),
  "mars_exact": (transforms.mars, dict(learning_rate=1e-2, exact=True), (), True),
  "scale": (transforms.column_normalized_sgd, dict(learning_rate=1e-2, last_layer="b"), (), False),
  "storm": (transforms.storm, dict(k=0.1, w=0.1, c=10.0), (), True),
}
_P = {"a": -jnp.ones((2, 3)), "b": jnp.ones((5, 2)), "c": jnp.ones(4)}
_G = {"a": jnp.ones((2, 3)), "b": -jnp.ones((5, 2)), "c": 0.5 * jnp.ones(4)}


def _extras(needs):
  if needs == "obj_fn":  # Hessian diagonal 1 + 3 p^2
    return {
      "obj_fn": lambda p: (
        optax.tree.vdot(p, p) / 2 + optax.tree.sum(jax.tree.map(lambda x: x**4 / 4, p))
      )
    }
  if needs == "value":  # a flat loss (as the plateau test below feeds)
    return {"value": jnp.asarray(1.0)}
  return {"grad_fn": lambda p: _G} if needs else {}


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_under_inject_hyperparams_equals_the_plain_alias(name):
  factory, kwargs, static, needs = ALIASES[name]
  plain = factory(**kwargs)
  injected = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
  extra = _extras(needs)
  for tx in (plain, injected):
    state = jax.jit(tx.init)(_P)
    update = jax.jit(functools.partial(tx.update, **extra))
    for _ in range(3):
      updates, state = update(_G, state, _P)
    if tx is plain:
      expected, plain_state = updates, state
  chex.assert_trees_all_close(updates, expected, rtol=1e-6, atol=1e-7)
  assert any(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(updates))
  # a hyperparameter can be changed in the state, as with optax's own aliases
  if "learning_rate" in kwargs:
    state.hyperparams["learning_rate"] = jnp.zeros_like(state.hyperparams["learning_rate"])
    zero, _ = jax.jit(functools.partial(injected.update, **extra))(_G, state, _P)
    chex.assert_trees_all_equal(zero, optax.tree.zeros_like(zero))
  del plain_state


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_inside_multisteps_accumulates_then_steps(name):
  factory, kwargs, _, needs = ALIASES[name]
  tx = optax.MultiSteps(factory(**kwargs), every_k_schedule=3)
  state = jax.jit(tx.init)(_P)
  update = jax.jit(functools.partial(tx.update, **_extras(needs)))
  for i in range(3):
    updates, state = update(_G, state, _P)
    nonzero = any(np.any(np.asarray(u) != 0) for u in jax.tree.leaves(updates))
    assert nonzero == (i == 2), (name, i)


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_inside_apply_if_finite_and_reduce_on_plateau(name):
  factory, kwargs, _, needs = ALIASES[name]
  tx = optax.apply_if_finite(
    optax.chain(factory(**kwargs), optax.contrib.reduce_on_plateau(patience=1, factor=0.5)),
    max_consecutive_errors=3,
  )
  state = jax.jit(tx.init)(_P)
  update = jax.jit(functools.partial(tx.update, **_extras(needs)))
  loss = jnp.asarray(1.0)
  first, state = update(_G, state, _P, value=loss)
  for _ in range(3):  # a flat loss: the plateau halves the scale
    updates, state = update(_G, state, _P, value=loss)
  assert float(state.inner_state[1].scale) < 1.0
  bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), _G)
  skipped, new_state = update(bad, state, _P, value=loss)
  assert int(new_state.notfinite_count) == 1
  chex.assert_trees_all_equal(skipped, optax.tree.zeros_like(skipped))
  chex.assert_trees_all_equal(
    optax.tree.unwrap_random_key_data(new_state.inner_state),
    optax.tree.unwrap_random_key_data(state.inner_state),
  )
  del first


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_keeps_float32_params_dtypes_under_x64(name):
  make_tx, _ = CASES[name]
  params = {
    "params": {
      "dense_0": {"kernel": jnp.ones((5, 16), jnp.float32), "bias": jnp.zeros(16, jnp.float32)},
      "dense_1": {"kernel": jnp.ones((16, 3), jnp.float32), "bias": jnp.zeros(3, jnp.float32)},
    }
  }
  grads = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)
  with jax.enable_x64(True):
    tx = make_tx()
    state = tx.init(params)
    update = _jitted_update(tx, name)
    updates, new_state = update(grads, state, params)  # the repro: storm raised here
    updates, new_state = update(grads, new_state, params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_trees_all_equal_dtypes(new_state, state)
  for a in jax.tree.leaves(new_state):
    assert a.dtype != jnp.float64, (name, a.shape)


@pytest.mark.parametrize(
  "name, make",
  [
    ("storm", lambda: transforms.storm()),
    ("mars_exact", lambda: transforms.mars(1e-2, exact=True)),
    ("svrg", lambda: transforms.svrg(1)),
  ],
)
def test_nonfinite_gradient_from_an_extra_argument_skips_the_step(name, make):
  tx = make()
  p = {"w": jnp.ones(3)}
  good = {"w": jnp.ones(3)}
  poisoned = lambda q: {"w": jnp.array([1.0, jnp.nan, 1.0])}  # noqa: E731
  state = tx.init(p)
  extra = {"grad_fn": lambda q: good, "full_grad_fn": lambda q: good}
  _, state = tx.update(
    good, state, p, **{k: v for k, v in extra.items() if name == "svrg" or k == "grad_fn"}
  )
  for bad_name in ("grad_fn", "full_grad_fn") if name == "svrg" else ("grad_fn",):
    bad_extra = {**extra, bad_name: poisoned}
    if name != "svrg":
      bad_extra.pop("full_grad_fn")
    updates, new_state = jax.jit(functools.partial(tx.update, **bad_extra))(good, state, p)
    chex.assert_trees_all_equal(updates, optax.tree.zeros_like(updates))
    chex.assert_trees_all_equal(new_state, state)


def test_spike_clip_recovers_from_an_all_zero_warmup():
  # RLVR before any sample succeeds: every warmup gradient is exactly zero.
  tx = transforms.spike_clip(warmup_steps=3)
  p = {"w": jnp.zeros(4)}
  state = tx.init(p)
  for _ in range(5):
    _, state = tx.update({"w": jnp.zeros(4)}, state)
  g = {"w": jnp.array([1.0, -2.0, 0.5, 0.0])}
  for _ in range(5):  # the first real gradients pass unclipped (they are the warmup now)
    out, state = tx.update(g, state)
    np.testing.assert_array_equal(out["w"], g["w"])
  # and the statistics are those of the non-zero norms alone
  np.testing.assert_allclose(float(state.mean), float(optax.tree.norm(g)), rtol=1e-6)


@pytest.mark.parametrize(
  "make",
  [
    lambda: transforms.spam(1e-2, eps=0.0),
    lambda: transforms.diffgrad(1e-2, eps=0.0),
    lambda: transforms.adam_8bit(1e-2, eps=0.0),
    lambda: transforms.mars(1e-2, eps=0.0),
    lambda: transforms.layerwise_normalize(eps=0.0),
    lambda: transforms.scale_by_torch_adam(eps=0),
  ],
)
def test_eps_zero_is_refused_where_it_divides(make):
  with pytest.raises(ValueError, match="eps: expected a finite value > 0"):
    make()
