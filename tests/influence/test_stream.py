"""Streamed attribution against the materialized formulas: every method, to float64
rounding; files on disk resumed after a kill; bounded memory; the split scores."""

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from gradlab import curvature
from gradlab import influence as gi
from gradlab.influence import factored

N, M, T = 30, 6, 3  # train sequences, queries, tokens per sequence


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):  # [T, 4] -> [T, 3]: the Dense layers see T tokens
    return nn.Dense(3, name="out")(jnp.tanh(nn.Dense(5, name="hidden")(x)))


NET = _Net()


def _token_loss(p, e):
  lp = jax.nn.log_softmax(NET.apply(p, e["x"]))
  return -jnp.take_along_axis(lp, e["y"][:, None], 1)[:, 0]


def _loss(p, e):
  return jnp.sum(_token_loss(p, e))


def _measure(p, e):  # a measurement other than the loss: the first token's margin
  return gi.margin(NET.apply(p, e["x"])[0], e["y"][0])


def make_setup():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N + M, T, 4))
    y = rng.integers(0, 3, size=(N + M, T))
    mk = lambda s: {"x": jnp.asarray(x[s]), "y": jnp.asarray(y[s])}
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), NET.init(jax.random.key(0), x[0]))
    return params, mk(slice(0, N)), mk(slice(N, N + M))


@pytest.fixture(scope="module")
def setup():
  return make_setup()


def _grads(fn, p, e):  # the [n, d] rows the streamed scores avoid
  # jitted, as every reference here: eagerly, each vmapped op would compile alone
  return jax.jit(lambda p, e: gi.per_example_gradients(fn, p, e))(p, e)


SOLVERS = {
  "explicit": dict(solver=gi.explicit(), damping=0.1),
  "cg": dict(solver=gi.cg(max_iterations=60, tol=1e-14), damping=0.1),
  "ekfac": dict(solver=gi.ekfac_solver(), damping=0.1),
}


# LiSSA and Arnoldi stream through the same generic train side as explicit and CG (only
# their Solver differs, and inverse_hvp is that Solver): explicit and CG cover that path
@pytest.mark.parametrize("method", ["explicit", "cg", "ekfac"])
def test_streamed_influence_equals_materialized(setup, method):
  params, train, test = setup
  kw = SOLVERS[method]
  with jax.enable_x64(True):
    g_train, g_test = _grads(_loss, params, train), _grads(_measure, params, test)
    # the materialized formula: every train gradient held, (1/n) q g_train^T
    q = gi.inverse_hvp(_loss, params, train, g_test, **kw)
    exact = q @ g_train.T / N
    got = gi.influence(_loss, params, train, test, chunk_size=7, measurement_fn=_measure, **kw)
    np.testing.assert_allclose(got, exact, rtol=1e-10, atol=1e-12 * np.abs(exact).max())
    if method not in ("cg", "ekfac"):
      return  # the split scores share one train side per path: generic (cg) and factored (ekfac)
    # per-module scores sum to the total; per-token scores sum to the sequence's
    split = gi.influence(
      _loss, params, train, test, chunk_size=7, measurement_fn=_measure,
      per_module=True, **kw,
    )  # fmt: skip
    assert set(split) == {"hidden", "out"}
    np.testing.assert_allclose(sum(split.values()), exact, rtol=1e-10, atol=1e-12)
    tokens = gi.influence(
      _loss, params, train, test, chunk_size=7, measurement_fn=_measure,
      token_loss_fn=_token_loss, **kw,
    )  # fmt: skip
    assert tokens.shape == (M, N, T)
    np.testing.assert_allclose(tokens.sum(-1), exact, rtol=1e-10, atol=1e-12)
    # a token's score is the removal of its loss term: the query dotted with its gradient
    g_tok = jax.jacrev(_token_loss)(params, jax.tree.map(lambda a: a[4], train))
    rows = jax.vmap(lambda t: ravel_pytree(jax.tree.map(lambda a: a[t], g_tok))[0])(jnp.arange(T))
    np.testing.assert_allclose(tokens[:, 4, :], q @ rows.T / N, rtol=1e-10, atol=1e-12)


def test_low_rank_ekfac_queries_are_exact_at_full_rank_and_within_their_bound(setup):
  params, train, test = setup
  with jax.enable_x64(True):
    factors = curvature.ekfac(_loss, params, train)
    exact = gi.influence(
      _loss, params, train, test, solver=gi.ekfac_solver(factors=factors), damping=None
    )
    full = gi.influence(
      _loss,
      params,
      train,
      test,
      solver=gi.ekfac_solver(factors=factors),
      damping=None,
      query_rank=5,
    )
    np.testing.assert_allclose(full, exact, rtol=1e-10, atol=1e-14)  # rank 5 = min(d_in+1, d_out)
    low = gi.influence(
      _loss,
      params,
      train,
      test,
      solver=gi.ekfac_solver(factors=factors),
      damping=None,
      query_rank=1,
    )
    # |<Q - Q_1, G>| <= ||Q - Q_1||_F ||G||_F per layer (Cauchy-Schwarz), summed over layers
    g_test = _grads(_loss, params, test)
    q = factored.layer_queries(factors, params, factors_inverse(factors, params, g_test))
    _, err = factored.low_rank_queries(q, 1)
    g = factored.layer_queries(factors, params, _grads(_loss, params, train))
    bound = (
      sum(
        (err[k] * jnp.linalg.norm(q[k], axis=(1, 2)))[:, None] * jnp.linalg.norm(g[k], axis=(1, 2))
        for k in q
      )
      / N
    )
    assert np.all(np.abs(low - exact) <= bound + 1e-14)
    assert np.abs(low - exact).max() > 1e-6  # rank 1 does truncate


def factors_inverse(factors, params, rows, damping=None):
  _, unravel = ravel_pytree(params)
  inverse = factors.inverse(damping)
  return jax.jit(jax.vmap(lambda v: ravel_pytree(inverse(unravel(v)))[0]))(rows)


def test_every_streamed_score_equals_its_materialized_formula(setup):
  params, train, test = setup
  key = jax.random.key(2)
  with jax.enable_x64(True):
    g_train, g_test = _grads(_loss, params, train), _grads(_loss, params, test)
    tol = dict(rtol=1e-10, atol=1e-12)
    got = gi.grad_similarity(_loss, params, train, test, chunk_size=4)
    np.testing.assert_allclose(got, gi.grad_dot(g_train, g_test), **tol)
    got = gi.grad_similarity(_loss, params, train, test, cosine=True, key=key, dim=16, chunk_size=4)
    ref = gi.grad_cos(gi.project(g_train, key, 16), gi.project(g_test, key, 16))
    np.testing.assert_allclose(got, ref, **tol)
    ckpts = [params, jax.tree.map(lambda a: 0.9 * a, params)]
    ref = sum(
      lr * _grads(_loss, p, test) @ _grads(_loss, p, train).T for lr, p in zip([0.1, 0.3], ckpts)
    )
    np.testing.assert_allclose(gi.tracin_cp(_loss, ckpts, [0.1, 0.3], train, test, chunk_size=4),
                               ref, **tol)  # fmt: skip
    si = gi.self_influence(_loss, params, train, solver=gi.explicit(), damping=0.1, chunk_size=4)
    q = gi.inverse_hvp(_loss, params, train, g_train, solver=gi.explicit(), damping=0.1)
    np.testing.assert_allclose(si, jnp.sum(q * g_train, 1) / N, **tol)
    mom = [(jax.tree.map(lambda a: 0.1 * a, p), jax.tree.map(lambda a: 0.01 + a * a, p))
           for p in ckpts]  # fmt: skip
    feats = lambda ex, **kw: jnp.stack([
      gi.less_features(_loss, p, ex, key, dim=8, adam_moments=m if kw else None)
      for p, m in zip(ckpts, mom)
    ])  # fmt: skip
    ref = gi.less_scores(feats(train, adam=True), feats(test), [1.0, 3.0], num_groups=2)
    got = gi.less_attribution(_loss, ckpts, mom, train, test, key, dim=8,
                              checkpoint_weights=[1.0, 3.0], num_groups=2, chunk_size=4)  # fmt: skip
    np.testing.assert_allclose(got, ref, **tol)


def test_trak_formula(setup):
  """TRAK's score against its formula written out: features, kernel inverse, Q weights."""
  params, train, test = setup
  key = jax.random.key(5)
  with jax.enable_x64(True):
    k0 = jax.random.fold_in(key, 0)
    phi = gi.project(_grads(_measure, params, train), k0, 8)
    phi_t = gi.project(_grads(_measure, params, test), k0, 8)
    qw = 1 - jax.nn.sigmoid(jax.vmap(_measure, (None, 0))(params, train))
    ref = phi_t @ jnp.linalg.solve(phi.T @ phi + 0.01 * jnp.eye(8), phi.T) * qw[None, :]
    got = gi.trak(_measure, [params], train, test, key, dim=8, damping=0.01, chunk_size=4)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    # kind="logra": the same formula on LoGra's Kronecker-projected features
    phi = gi.logra_features(_measure, params, train, k0, rank=(3, 2))
    phi_t = gi.logra_features(_measure, params, test, k0, rank=(3, 2))
    ref = phi_t @ jnp.linalg.solve(phi.T @ phi + 0.01 * jnp.eye(12), phi.T) * qw[None, :]
    got = gi.trak(_measure, [params], train, test, key, kind="logra", rank=(3, 2), damping=0.01,
                  chunk_size=4)  # fmt: skip
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


def test_scores_on_disk_equal_in_memory_and_resume_after_a_kill(setup, tmp_path):
  params, train, test = setup
  with jax.enable_x64(True):
    mem = gi.influence(
      _loss, params, train, test, solver=gi.ekfac_solver(), damping=0.1, chunk_size=4
    )
    path = str(tmp_path / "scores.npy")
    disk = gi.influence(
      _loss, params, train, test, solver=gi.ekfac_solver(), damping=0.1, chunk_size=4, path=path
    )
    assert isinstance(disk, np.memmap) or isinstance(disk.base, np.memmap)
    np.testing.assert_array_equal(np.asarray(disk), np.asarray(mem))
    np.testing.assert_array_equal(np.load(path).T, np.asarray(mem))  # train-major on disk
    # trak through a file: two passes over the train set, the same scores
    key = jax.random.key(2)
    a = gi.trak(_measure, [params], train, test, key, dim=8, damping=0.01, chunk_size=4)
    b = gi.trak(_measure, [params], train, test, key, dim=8, damping=0.01, chunk_size=4,
                path=str(tmp_path / "trak.npy"))  # fmt: skip
    np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


_KILLED = """
import os, signal, sys
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, {root!r})
from tests.influence import test_stream as ts
from gradlab import influence as gi
params, train, test = ts.make_setup()
def stop(done, total):
  if done == {kill_after}:
    os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no cleanup, no exception handler
gi.influence(ts._loss, params, train, test, solver=gi.cg(), damping=0.1, chunk_size=4,
             path={path!r}, callback=stop)
"""


def test_killed_run_resumes_and_its_file_equals_an_uninterrupted_one(setup, tmp_path):
  params, train, test = setup
  killed = str(tmp_path / "killed.npy")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  code = textwrap.dedent(_KILLED.format(root=root, kill_after=3, path=killed))
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert not os.path.exists(killed)  # nothing half-written is taken as finished
  assert os.path.exists(killed + ".partial")
  with jax.enable_x64(True):
    blocks = []
    resumed = gi.influence(
      _loss, params, train, test, solver=gi.cg(), damping=0.1, chunk_size=4, path=killed,
      callback=lambda done, total: blocks.append(done),
    )  # fmt: skip
    assert blocks == [4, 5, 6, 7, 8]  # 8 blocks of 4 (the last of 2); 3 were done
    clean = gi.influence(
      _loss, params, train, test, solver=gi.cg(), damping=0.1, chunk_size=4,
      path=str(tmp_path / "clean.npy"),
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(resumed), np.asarray(clean))
    # another run's arguments on the same path are refused, not mixed in
    with pytest.raises(ValueError, match="^path: .* belongs to another run"):
      gi.influence(
        _loss, params, train, test, solver=gi.cg(), damping=0.2, chunk_size=4, path=killed
      )


class _Mlp(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(2)(jnp.tanh(nn.Dense(12)(x)))


def _mlp_loss(p, e):
  return jnp.sum((_Mlp().apply(p, e["x"]) - e["y"]) ** 2)


def _compiled(n, method, chunk):
  rng = np.random.default_rng(0)
  small = {"x": jnp.asarray(rng.normal(size=(64, 16)), jnp.float32), "y": jnp.zeros((64, 2))}
  params = _Mlp().init(jax.random.key(0), small["x"][0])
  factors = curvature.ekfac(_mlp_loss, params, small)  # fitted elsewhere: the scores alone
  train = {"x": jax.ShapeDtypeStruct((n, 16), jnp.float32),
           "y": jax.ShapeDtypeStruct((n, 2), jnp.float32)}  # fmt: skip
  test = jax.tree.map(lambda a: a[:4], small)
  scores = {
    "ekfac": lambda tr: gi.influence(
      _mlp_loss,
      params,
      tr,
      test,
      solver=gi.ekfac_solver(factors=factors),
      damping=0.1,
      chunk_size=chunk,
    ),
    "grad_dot": lambda tr: gi.grad_similarity(_mlp_loss, params, tr, test, chunk_size=chunk),
    "tracin": lambda tr: gi.tracin_cp(
      _mlp_loss, [params] * 2, [0.1, 0.2], tr, test, chunk_size=chunk
    ),  # fmt: skip
  }
  fn = jax.jit(scores[method])
  return fn.trace(train), fn.lower(train).compile().memory_analysis()


def _shapes(jaxpr):
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      yield tuple(getattr(v.aval, "shape", ()))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _shapes(sub)


@pytest.mark.parametrize("method", ["ekfac", "grad_dot", "tracin"])
def test_compiled_scores_hold_no_n_by_d_array_and_flat_memory(method):
  d = 16 * 12 + 12 + 12 * 2 + 2
  temps = []
  for n in (2048, 32768):
    traced, mem = _compiled(n, method, 256)
    big = [s for s in _shapes(traced.jaxpr.jaxpr) if n in s and np.prod(s) >= n * 16]
    assert not big, big  # nothing n-sized beyond the [4, n] scores (and the inputs)
    temps.append(mem.temp_size_in_bytes)
  # temporaries: one chunk's rows, not the n x d x 4 bytes of the train gradients
  assert temps[1] < 32768 * d * 4 / 20, temps
  assert temps[1] <= 1.05 * temps[0] + 4 * 4 * 32768, temps  # flat, but for the [4, n] scores


def test_bad_input_one_line(setup, tmp_path):
  params, train, test = setup
  with jax.enable_x64(True):
    _bad_input(params, train, test, tmp_path)


def _bad_input(params, train, test, tmp_path):
  run = lambda **kw: gi.influence(
    _loss, params, train, test, solver=gi.explicit(), damping=0.1, **kw
  )
  with pytest.raises(ValueError, match=r"^measurement_fn: expected a real scalar per example"):
    run(measurement_fn=lambda p, e: NET.apply(p, e["x"]))
  with pytest.raises(ValueError, match=r"^chunk_size: 31 exceeds the 30 train examples"):
    run(chunk_size=31)
  with pytest.raises(ValueError, match=r"^path: the directory .* does not exist"):
    run(path=str(tmp_path / "missing" / "s.npy"))
  with pytest.raises(ValueError, match=r"^path: expected a file name ending in .npy"):
    run(path=str(tmp_path / "s.txt"))
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  if not os.access(locked, os.W_OK):  # root may write anywhere
    with pytest.raises(ValueError, match=r"^path: the directory .* is not writable"):
      run(path=str(locked / "s.npy"))
  with pytest.raises(ValueError, match=r"^token_loss_fn: its tokens sum to"):
    run(token_loss_fn=lambda p, e: 2 * _token_loss(p, e))
  with pytest.raises(ValueError, match=r"^query_rank: applies to solver=ekfac_solver\(\) only"):
    run(query_rank=2)
  with pytest.raises(
    ValueError, match=r"^damping: None .* applies to solver=ekfac_solver\(\) only"
  ):
    gi.influence(_loss, params, train, test, solver=gi.cg(), damping=None)
  (tmp_path / "taken.npy").write_bytes(b"not ours")
  with pytest.raises(ValueError, match=r"^path: .* exists and is not a finished run"):
    run(path=str(tmp_path / "taken.npy"))


def test_causal_transformer_token_and_module_scores():
  """On gradlab.models.TinyTransformer (DenseGeneral attention, an Embed, LayerNorms and
  positions left out of EK-FAC): the factored scores equal the materialized formula, the
  per-module scores sum to them, the per-token scores to each sequence's."""
  from gradlab.models import TinyTransformer

  model = TinyTransformer(vocab=7, dim=8, heads=2, layers=1, max_len=6)
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, 7, size=(14, 6)))
    params = jax.tree.map(
      lambda a: jnp.asarray(a, jnp.float64), jax.jit(model.init)(jax.random.key(0), tokens[:1])
    )

    def token_loss(p, seq):
      lp = jax.nn.log_softmax(model.apply(p, seq[None])[0, :-1])
      return -jnp.take_along_axis(lp, seq[1:, None], 1)[:, 0]

    loss = lambda p, seq: jnp.sum(token_loss(p, seq))
    last = lambda p, seq: -token_loss(p, seq)[-1]  # the measurement: the last token's log-prob
    train, test = tokens[:10], tokens[10:]
    factors = curvature.ekfac(loss, params, train, uncovered="ignore")
    kw = dict(
      solver=gi.ekfac_solver(factors=factors), damping=0.1, measurement_fn=last, chunk_size=5
    )
    q = factors_inverse(factors, params, _grads(last, params, test), damping=0.1)
    exact = q @ _grads(loss, params, train).T / 10
    split = gi.influence(loss, params, train, test, per_module=True, **kw)
    assert "block_0/attn/query" in split and "embed" in split
    np.testing.assert_allclose(sum(split.values()), exact, rtol=1e-10, atol=1e-13)
    tokens_ = gi.influence(loss, params, train, test, token_loss_fn=token_loss, **kw)
    assert tokens_.shape == (4, 10, 5)
    np.testing.assert_allclose(tokens_.sum(-1), exact, rtol=1e-10, atol=1e-13)
