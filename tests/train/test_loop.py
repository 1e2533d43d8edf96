import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import data, sharding, train
from gradlab.train import loop


def _setup(mesh):
  rng = np.random.default_rng(0)
  arrays = {"x": rng.normal(size=(256, 4)).astype(np.float32)}
  arrays["y"] = arrays["x"] @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)
  params = {"w": jnp.zeros(4)}

  def loss_fn(p, b, key):
    del key
    return jnp.mean((b["x"] @ p["w"] - b["y"]) ** 2), {}

  opt = optax.sgd(0.05)
  state = jax.device_put(
    train.TrainState.create(params, opt, jax.random.key(0)), sharding.replicated(mesh)
  )
  step = train.make_train_step(loss_fn, opt, mesh=mesh)
  batches = lambda s: data.iterate_batches(arrays, batch_size=32, seed=0, start_step=s, mesh=mesh)
  return state, step, batches, loss_fn


def test_instruments_and_eval_are_logged_on_their_schedule(tmp_path, monkeypatch):
  mesh = sharding.make_mesh()
  state, step, batches, loss_fn = _setup(mesh)
  progress = []
  monkeypatch.setattr(
    loop.logging, "info", lambda f, *a: progress.append(str(f) % a if a else str(f))
  )

  def probe(params, batch, key):
    g = jax.grad(lambda p: loss_fn(p, batch, key)[0])(params)
    return {"grad_norm": optax.tree.norm(g), "u": jax.random.uniform(key)}

  state, last = train.fit(
    state,
    step,
    batches,
    num_steps=20,
    workdir=str(tmp_path),
    checkpoint_every=10,
    log_every=4,
    instruments=[train.Instrument("probe", probe, every=5)],
    eval_fn=lambda p: {"w0": p["w"][0]},
    eval_every=10,
    progress_every=3,
  )
  records = train.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in records] == [4, 5, 8, 10, 12, 15, 16, 20]
  # progress lines show the last logged loss and its step, never a loss of nan
  lines = {int(x.split()[1].split("/")[0]): x for x in progress if x.startswith("step ")}
  assert sorted(lines) == [3, 6, 9, 12, 15, 18, 20] and not any("nan" in x for x in progress)
  assert "loss" not in lines[3]  # nothing logged yet
  loss5 = next(r["loss"] for r in records if r["step"] == 5)
  assert f"loss {loss5:.4f} (at step 5)" in lines[6]
  assert "loss" in lines[12] and "(at step" not in lines[12]
  assert all("grad_norm" in r for r in records)  # logged steps run the full step
  with_probe = [r["step"] for r in records if "probe/grad_norm" in r]
  assert with_probe == [5, 10, 15, 20]
  assert [r["step"] for r in records if "eval/w0" in r] == [10, 20]
  assert last["step"] == 20 and np.isclose(last["eval/w0"], float(state.params["w"][0]))
  # instrument keys differ from step to step
  assert len({r["probe/u"] for r in records if "probe/u" in r}) == 4


def test_extending_a_finished_run_continues_its_metrics(tmp_path):
  mesh = sharding.make_mesh()
  kw = dict(workdir=str(tmp_path), checkpoint_every=10, log_every=10)
  state, step, batches, _ = _setup(mesh)
  straight, _ = train.fit(
    state, step, batches, num_steps=30, **dict(kw, workdir=str(tmp_path / "a"))
  )
  with pytest.raises(ValueError, match="state: its buffers were donated"):
    train.fit(state, step, batches, num_steps=20, **kw)  # state was donated above
  train.fit(_setup(mesh)[0], step, batches, num_steps=20, **kw)
  # a finished run's checkpoint replaces the (donated) template's values
  resumed, last = train.fit(state, step, batches, num_steps=30, **kw)
  assert [r["step"] for r in train.read_metrics(str(tmp_path / "metrics.jsonl"))] == [10, 20, 30]
  np.testing.assert_array_equal(resumed.params["w"], straight.params["w"])
  assert last["step"] == 30


def test_torn_metrics_line_is_dropped_on_resume(tmp_path):
  w = train.MetricsWriter(str(tmp_path / "m.jsonl"))
  for s in (1, 2, 3):
    w.write({"step": s})
  with open(w.path, "a") as f:
    f.write('{"step": 4, "lo')
  w.truncate_after(2)
  assert train.read_metrics(w.path) == [{"step": 1}, {"step": 2}]
