"""HGP and Hutchinson Hessian-alignment penalties against dense ``jax.hessian`` truths.

The truth of each test is the penalty written out with the dense per-domain
Hessians ``H_e`` of a small softmax head (15 parameters, 3 domains):
``(1/E) sum_e alpha |H_e g_e - H_bar g_bar|^2 + beta |g_e - g_bar|^2`` for HGP,
the same with ``diag H_e`` for Hutchinson (the official DomainBed definitions,
huawei-noah/Federated-Learning HessianAlignment/domainbed/algorithms.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from gradlab import gradstats

D, C, B, E = 4, 3, 8, 3
_rng = np.random.default_rng(0)
PARAMS = {
  "w": jnp.asarray(0.5 * _rng.normal(size=(D, C)), jnp.float32),
  "b": jnp.asarray(0.1 * _rng.normal(size=C), jnp.float32),
}
# Three domains, shifted apart so that their Hessians differ.
BATCHES = [
  {
    "x": jnp.asarray(_rng.normal(size=(B, D)) + 0.7 * e, jnp.float32),
    "y": jnp.asarray(_rng.integers(0, C, B), jnp.int32),
  }
  for e in range(E)
]
STACKED = jax.tree.map(lambda *a: jnp.stack(a), *BATCHES)


def head_loss(params, batch):
  logits = batch["x"] @ params["w"] + params["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def dense_parts(loss_fn, params, batches):
  """Per-domain gradients [E, n] and dense Hessians [E, n, n] of the flattened params."""
  flat, unravel = ravel_pytree(params)
  f = lambda v, b: loss_fn(unravel(v), b)  # noqa: E731
  grads = jnp.stack([jax.grad(f)(flat, b) for b in batches])
  hessians = jnp.stack([jax.hessian(f)(flat, b) for b in batches])
  return grads, hessians


@functools.partial(jax.jit, static_argnames=("loss_fn", "kind", "stop_gradient"))
def dense_penalty(loss_fn, params, batches, *, kind, alpha, beta, stop_gradient=True):
  grads, hessians = dense_parts(loss_fn, params, batches)
  g_bar = grads.mean(0)
  if kind == "hgp":
    matched = jnp.einsum("eij,ej->ei", hessians, grads)
    reference = hessians.mean(0) @ g_bar  # H_bar g_bar, the official reference
  else:
    matched = jnp.diagonal(hessians, axis1=1, axis2=2)
    reference = matched.mean(0)
  if stop_gradient:
    reference, g_bar = jax.lax.stop_gradient((reference, g_bar))
  return alpha * jnp.mean(jnp.sum((matched - reference) ** 2, 1)) + beta * jnp.mean(
    jnp.sum((grads - g_bar) ** 2, 1)
  )


def _max_rel(a, b):
  fa, fb = ravel_pytree(a)[0], ravel_pytree(b)[0]
  return float(jnp.max(jnp.abs(fa - fb)) / jnp.max(jnp.abs(fb)))


@pytest.mark.parametrize("form", ["list", "stacked"])
def test_hgp_penalty_equals_the_dense_hessian_form(form):
  batches = BATCHES if form == "list" else STACKED
  ours = jax.jit(lambda a, b: gradstats.hgp_penalty(head_loss, PARAMS, batches, alpha=a, beta=b))
  # 0.3 / 2 and each term alone, so that a swapped alpha / beta cannot pass
  for a, b in ((0.3, 2.0), (1.0, 0.0), (0.0, 1.0)):
    want = dense_penalty(head_loss, PARAMS, BATCHES, kind="hgp", alpha=a, beta=b)
    # float32 rounding: HVPs against an explicit Hessian (seen: 1e-7 relative)
    np.testing.assert_allclose(ours(a, b), want, rtol=1e-5)
  if form == "list":  # domains of different batch sizes (each domain weighs the same)
    uneven = [*BATCHES[:2], jax.tree.map(lambda x: x[:5], BATCHES[2])]
    np.testing.assert_allclose(
      jax.jit(lambda p: gradstats.hgp_penalty(head_loss, p, uneven))(PARAMS),
      dense_penalty(head_loss, PARAMS, uneven, kind="hgp", alpha=1e-4, beta=5e-3),
      rtol=1e-5,
    )


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_hgp_gradient_equals_the_dense_forms_through_the_head_and_the_features(stop_gradient):
  """The official set-up: Hessians of the head only, the penalty's gradient reaching
  the feature extractor through the features it closes over. (The two dense truths,
  with and without the official .detach() of H_bar g_bar, differ by >1e-2 of their
  largest entry here, so each case tests the flag.)"""
  body = np.random.default_rng(1).normal(size=(D, D))
  params = {"body": jnp.asarray(0.5 * body, jnp.float32), "head": PARAMS}

  def closed(body):
    return lambda head, b: head_loss(head, {"x": jnp.tanh(b["x"] @ body), "y": b["y"]})

  def ours(p):
    return gradstats.hgp_penalty(
      closed(p["body"]), p["head"], STACKED, alpha=1.0, beta=1.0, stop_gradient_mean=stop_gradient
    )

  def dense(p):
    return dense_penalty(
      closed(p["body"]),
      p["head"],
      BATCHES,
      kind="hgp",
      alpha=1.0,
      beta=1.0,
      stop_gradient=stop_gradient,
    )

  got, want = jax.jit(jax.grad(ours))(params), jax.jit(jax.grad(dense))(params)
  assert float(jnp.max(jnp.abs(want["body"]))) > 1e-3  # the features do get a gradient
  # float32 rounding of third derivatives (seen: <1e-6 of the largest entry)
  for part in ("body", "head"):
    assert _max_rel(got[part], want[part]) < 1e-4, part


def separable_loss(params, batch):
  """A loss whose Hessian is diagonal in every domain: sum_i c_i cosh(p_i) + a . p."""
  p = ravel_pytree(params)[0]
  return jnp.sum(jnp.mean(batch["c"], 0) * jnp.cosh(p)) + jnp.mean(batch["a"], 0) @ p


def test_hutchinson_is_exact_when_the_hessians_are_diagonal():
  n = ravel_pytree(PARAMS)[0].size
  batches = {
    "c": jnp.asarray(_rng.uniform(0.5, 2.0, size=(E, 5, n)), jnp.float32),
    "a": jnp.asarray(_rng.normal(size=(E, 5, n)), jnp.float32),
  }
  as_list = [jax.tree.map(lambda x: x[e], batches) for e in range(E)]
  want = dense_penalty(separable_loss, PARAMS, as_list, kind="hutchinson", alpha=0.7, beta=1.3)
  want_grad = jax.jit(
    jax.grad(
      lambda p: dense_penalty(separable_loss, p, as_list, kind="hutchinson", alpha=0.7, beta=1.3)
    )
  )(PARAMS)

  @jax.jit
  def ours(p, key):
    return gradstats.hutchinson_penalty(
      separable_loss, p, batches, key, num_probes=2, alpha=0.7, beta=1.3
    )

  for seed in range(3):
    # Rademacher probes: z_i^2 = 1, so every probe gives diag H exactly, whatever the key
    value, grad = jax.value_and_grad(ours)(PARAMS, jax.random.key(seed))
    np.testing.assert_allclose(value, want, rtol=1e-5)  # float32 rounding
    assert _max_rel(grad, want_grad) < 1e-5


def test_hutchinson_expectation_is_the_dense_penalty_plus_its_probe_bias():
  """E[penalty] = dense + (alpha / (E m)) sum_e (|A_e|_F^2 - |diag A_e|^2), A_e = H_e - H_bar,
  for m Rademacher probes shared by the domains (the square of a noisy mean)."""
  m, draws = 4, 2000
  alpha, beta = 1.0, 0.5
  _, hessians = jax.jit(dense_parts, static_argnums=0)(head_loss, PARAMS, BATCHES)
  a = hessians - hessians.mean(0)
  off = jnp.sum(a**2, (1, 2)) - jnp.sum(jnp.diagonal(a, axis1=1, axis2=2) ** 2, 1)
  bias = alpha * float(jnp.mean(off)) / m
  want = float(dense_penalty(head_loss, PARAMS, BATCHES, kind="hutchinson", alpha=alpha, beta=beta))

  def ours(key):
    return gradstats.hutchinson_penalty(
      head_loss, PARAMS, STACKED, key, num_probes=m, alpha=alpha, beta=beta
    )

  values = jax.jit(jax.vmap(ours))(jax.random.split(jax.random.key(42), draws))
  # 5 standard errors of the mean over the draws: fails by chance ~1 in 1.7 million
  tol = 5 * float(jnp.std(values, ddof=1)) / np.sqrt(draws)
  assert abs(float(jnp.mean(values)) - (want + bias)) < tol
  assert bias > tol  # the bias is resolved: the comparison without it would fail


def test_both_penalties_vanish_for_identical_domains():
  @jax.jit
  def both(batches):
    hgp = gradstats.hgp_penalty(head_loss, PARAMS, batches, alpha=1.0, beta=1.0)
    hutch = gradstats.hutchinson_penalty(
      head_loss, PARAMS, batches, jax.random.key(0), num_probes=3, alpha=1.0, beta=1.0
    )
    return hgp, hutch

  hgp, hutch = both(jax.tree.map(lambda x: jnp.stack([x[0]] * E), STACKED))
  # float32 rounding of the mean of E equal vectors (entries ~1), squared: ~1e-14
  assert float(hgp) < 1e-10 and float(hutch) < 1e-10
  assert min(map(float, both(STACKED))) > 1e-2  # and they do not vanish for these domains


_ONE = {"x": jnp.zeros((1, B, D)), "y": jnp.zeros((1, B), jnp.int32)}


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(domain_batches=BATCHES[:1]), "domain_batches: expected at least 2 domains, got 1"),
    (dict(domain_batches=_ONE), "domain_batches: expected at least 2 domains, got 1"),
    (
      dict(domain_batches=[BATCHES[0], {"x": BATCHES[1]["x"]}]),
      "domain_batches: domain 1's batch has structure",
    ),
    (
      dict(domain_batches=[BATCHES[0], {"x": BATCHES[1]["x"][:, :2], "y": BATCHES[1]["y"]}]),
      "domain_batches: domain 1's batch has a leaf float32[8, 2] where domain 0's has",
    ),
    (
      dict(domain_batches={"x": STACKED["x"], "y": STACKED["y"][:2]}),
      "domain_batches: expected every leaf stacked on one leading domain axis",
    ),
    (dict(alpha=-1.0), "alpha: expected a finite value >= 0"),
    (dict(beta=float("nan")), "beta: expected a finite value >= 0"),
    (dict(num_probes=0), "num_probes: expected an integer >= 1"),
    (dict(key=jax.random.PRNGKey(0)), "key: expected a typed key"),
    (dict(loss_fn=lambda p, b: b["x"] @ p["w"]), "loss_fn: expected a scalar loss"),
  ],
)
def test_bad_inputs_get_one_line_errors_naming_the_argument(kwargs, message):
  args = dict(loss_fn=head_loss, params=PARAMS, domain_batches=BATCHES)
  args.update(kwargs)
  hutch_only = {"num_probes", "key"} & set(kwargs)
  calls = [
    lambda: gradstats.hutchinson_penalty(
      args["loss_fn"],
      args["params"],
      args["domain_batches"],
      args.get("key", jax.random.key(0)),
      num_probes=args.get("num_probes", 2),
      **{k: v for k, v in args.items() if k in ("alpha", "beta")},
    )
  ]
  if not hutch_only:
    calls.append(
      lambda: gradstats.hgp_penalty(
        args["loss_fn"],
        args["params"],
        args["domain_batches"],
        **{k: v for k, v in args.items() if k in ("alpha", "beta")},
      )
    )
  for call in calls:
    with pytest.raises(ValueError) as info:
      call()
    text = str(info.value)
    assert text.startswith(message.split(":")[0] + ":") and message in text, text
    assert "\n" not in text
