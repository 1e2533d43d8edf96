"""Preemption: a run sent SIGTERM or SIGINT stops after the step it is in, with
that step saved and verified, and a restart ends bit for bit where an
uninterrupted run ends. The signals are sent to this process from inside the
train step (the handlers only record them), so each stop lands on a known step.
The two-process case is in tests/test_multiprocess.py."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradlab import sharding, train
from gradlab.train import checkpoint as ckpt_lib
from gradlab.train import preemption
from tests.train.test_loop import _setup

NUM_STEPS = 40
KW = dict(checkpoint_every=10, log_every=5, max_to_keep=10)


@pytest.fixture(scope="module")
def problem():
  """The linear regression of test_loop: one compiled step for every run here."""
  mesh = sharding.make_mesh()
  _, step, batches, _ = _setup(mesh)

  def fresh():  # the step donates its input: every run starts from a new state
    state = train.TrainState.create({"w": jnp.zeros(4)}, optax.sgd(0.05), jax.random.key(0))
    return jax.device_put(state, sharding.replicated(mesh))

  return fresh, step, batches


@pytest.fixture(scope="module")
def clean(problem, tmp_path_factory):
  """The uninterrupted run: its final parameters and its metrics.jsonl."""
  fresh, step, batches = problem
  workdir = tmp_path_factory.mktemp("clean")
  state, _ = train.fit(fresh(), step, batches, num_steps=NUM_STEPS, workdir=str(workdir), **KW)
  return np.asarray(state.params["w"]), train.read_metrics(str(workdir / "metrics.jsonl"))


def _signalling(step, at: dict[int, int]):
  """``step`` that sends this process the signal ``at[s]`` as it starts step ``s``."""

  def wrap(fn):
    def wrapped(state, batch):
      s = int(state.step) + 1
      if s in at:
        # only while fit's handler is installed: never kill the test process
        assert signal.getsignal(at[s]) is preemption._record  # noqa: SLF001
        os.kill(os.getpid(), at[s])
      return fn(state, batch)

    return wrapped

  wrapped = wrap(step)
  wrapped.lean = wrap(step.lean)
  return wrapped


def _fit(problem, workdir, at=None):
  fresh, step, batches = problem
  step = _signalling(step, at) if at else step
  return train.fit(fresh(), step, batches, num_steps=NUM_STEPS, workdir=str(workdir), **KW)


def _checkpoints(workdir):
  manager = train.make_manager(str(workdir / "checkpoints"))
  try:
    return {s: ckpt_lib.verify(manager, s) for s in manager.all_steps()}
  finally:
    manager.close()


def test_stopped_runs_save_the_step_they_were_in_and_resume_bit_identical(
  problem, clean, tmp_path, capsys
):
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  # seed 20 draws steps 11, 34 (steps that log and checkpoint nothing) and 40
  # (the last step, itself a checkpoint); SIGTERM and SIGINT alternate
  stops = sorted(np.random.default_rng(20).choice(np.arange(1, NUM_STEPS + 1), 3, replace=False))
  for n, stop in enumerate(stops):
    signum = (signal.SIGTERM, signal.SIGINT)[n % 2]
    with pytest.raises(train.Preempted) as caught:
      _fit(problem, tmp_path, at={int(stop): signum})
    e = caught.value
    assert (e.step, e.signal_name, e.exit_code) == (stop, signum.name, 128 + signum)
    assert str(e).startswith(f"preempted by {signum.name} at step {stop}: checkpoint {stop} in ")
    assert "saved and verified" in str(e)
    assert f"gradlab: {e}\n" in capsys.readouterr().out  # the line on stdout
    sums = _checkpoints(tmp_path)
    assert max(sums) == stop and all(why is None for why in sums.values()), sums
    # the handlers fit installed are gone again
    assert {s: signal.getsignal(s) for s in before} == before
  state, last = _fit(problem, tmp_path)  # the rest of the run, unsignalled
  assert last["step"] == NUM_STEPS
  np.testing.assert_array_equal(np.asarray(state.params["w"]), clean[0])
  # metrics.jsonl reads as the uninterrupted run's: no step lost, none twice
  assert train.read_metrics(str(tmp_path / "metrics.jsonl")) == clean[1]


def test_a_second_sigterm_during_the_save_changes_nothing(problem, clean, tmp_path, monkeypatch):
  real_digest = ckpt_lib.digest
  signalled = []

  def digest_then_signal(directory):
    # the checksum of checkpoint 23 is being taken: orbax has just finalized it
    if directory.endswith(f"{os.sep}23") and not signalled:
      signalled.append(directory)
      os.kill(os.getpid(), signal.SIGTERM)
    return real_digest(directory)

  monkeypatch.setattr(ckpt_lib, "digest", digest_then_signal)
  with pytest.raises(train.Preempted, match="at step 23: checkpoint 23 in .* saved and verified"):
    _fit(problem, tmp_path, at={23: signal.SIGTERM})
  assert signalled
  # the previous checkpoints and the new one are intact and verify
  assert _checkpoints(tmp_path) == {10: None, 20: None, 23: None}
  # the second signal was not kept for later: the restart runs to the end
  state, last = _fit(problem, tmp_path)
  assert last["step"] == NUM_STEPS
  np.testing.assert_array_equal(np.asarray(state.params["w"]), clean[0])
  assert train.read_metrics(str(tmp_path / "metrics.jsonl")) == clean[1]


def test_a_signal_before_the_loop_stops_it_at_its_first_boundary(problem, tmp_path):
  # a main's own block (e.g. around several fits) received it between two loops
  before = signal.getsignal(signal.SIGINT)
  with preemption.stop_on_signals():
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(train.Preempted, match="at step 0: nothing trained") as caught:
      _fit(problem, tmp_path)
  assert caught.value.exit_code == 130
  assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")
  assert signal.getsignal(signal.SIGINT) is before


class _Killed(BaseException):
  """Stands for the SIGKILL that ends a scheduler's grace period."""


def test_a_kill_during_the_save_leaves_the_previous_checkpoint_to_resume_from(
  problem, clean, tmp_path, monkeypatch
):
  # The process dies in the save of step 23 where it hurts most: orbax has
  # finalized the checkpoint, its checksum is not written yet. (Simulated in
  # this process: the exception unwinds nothing that touches the checkpoints.)
  real_digest = ckpt_lib.digest

  def killed_at_23(directory):
    if directory.endswith(f"{os.sep}23"):
      raise _Killed
    return real_digest(directory)

  monkeypatch.setattr(ckpt_lib, "digest", killed_at_23)
  with pytest.raises(_Killed):
    _fit(problem, tmp_path, at={23: signal.SIGTERM})
  preemption._clear()  # noqa: SLF001 - the killed process's pending signal dies with it
  monkeypatch.setattr(ckpt_lib, "digest", real_digest)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20", "23"]
  # the restart sets 23 aside (no checksum) and resumes from 20, which verifies
  state, last = _fit(problem, tmp_path)
  assert os.path.isdir(tmp_path / "checkpoints_rejected" / "23")
  assert last["step"] == NUM_STEPS
  np.testing.assert_array_equal(np.asarray(state.params["w"]), clean[0])
  assert train.read_metrics(str(tmp_path / "metrics.jsonl")) == clean[1]


def test_a_stop_on_a_step_that_diverged_saves_nothing(tmp_path):
  # sgd(2) on this regression overflows to inf around step 60 (test_faults);
  # step 97 logs nothing, so only the stop's own check can see its NaN params
  _, _, batches, loss_fn = _setup(sharding.make_mesh())
  opt = optax.sgd(2.0)
  state = train.TrainState.create({"w": jnp.zeros(4)}, opt, jax.random.key(0))
  step = _signalling(train.make_train_step(loss_fn, opt), {97: signal.SIGTERM})
  with pytest.raises(
    train.NonFiniteError, match=r"^step 97: .*told to stop, the run saved nothing"
  ):
    train.fit(
      state,
      step,
      batches,
      num_steps=100,
      workdir=str(tmp_path),
      checkpoint_every=100,
      log_every=100,
    )
  assert _checkpoints(tmp_path) == {}
