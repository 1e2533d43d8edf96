"""The training loop: one plain loop that reads top to bottom.

restore the latest checkpoint -> for each step: train, log, run instruments,
evaluate, checkpoint -> final evaluation and checkpoint. A run killed at any
moment and started again with the same workdir resumes from its last
checkpoint and ends with the same parameters and the same metrics.jsonl as an
uninterrupted run. A run told to stop (SIGTERM, SIGINT) stops at the next step
boundary with that step saved and raises ``Preempted`` (see ``preemption``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from gradlab.train import checkpoint as ckpt_lib
from gradlab.train import preemption
from gradlab.train.atomic import write_json_atomically
from gradlab.train.lock import workdir_lock
from gradlab.train.metrics import MetricsWriter, read_metrics, to_python
from gradlab.train.state import TrainState

# An instrument measures the parameters every few steps: (params, batch, key)
# -> {name: scalar}. Curvature and gradient-statistics probes plug in here.
InstrumentFn = Callable[[Any, Any, jax.Array], Mapping[str, jax.Array]]

# Folded into the step key so that instruments never reuse the step's draws.
_INSTRUMENT_SALT = 0x1A57


class Instrument(NamedTuple):
  """A probe of every ``every``-th step, logged as ``{name}/{key}`` in that
  step's metrics record. It sees the parameters the step updates and the step's
  batch (the point where the step's loss and gradient are measured); eval
  sees the state after the step."""

  name: str
  fn: InstrumentFn
  every: int


def fit(
  state: TrainState,
  train_step: Callable[[TrainState, Any], tuple[TrainState, dict]],
  batches: Callable[[int], Iterator[Any]],
  *,
  num_steps: int,
  workdir: str,
  checkpoint_every: int,
  max_to_keep: int = 3,
  log_every: int = 10,
  eval_fn: Callable[[Any], Mapping[str, Any]] | None = None,
  eval_every: int = 0,
  instruments: Sequence[Instrument] = (),
  progress_every: int = 100,
  stop_on_nonfinite: bool = True,
) -> tuple[TrainState, dict[str, Any]]:
  """Trains ``state`` to ``num_steps`` updates, resuming from ``workdir``.

  Args:
    state: the initial state; also the template (structure and shardings) a
      checkpoint is restored onto.
    train_step: ``(state, batch) -> (state, metrics)``, e.g. from
      ``make_train_step``; if it has a ``lean`` attribute (the same update
      with cheaper metrics), that runs on the steps that log nothing.
    batches: ``start_step -> iterator`` of batches from that step on (the
      iterator must be a pure function of the step, as ``iterate_batches`` is).
    num_steps: the total number of updates of the run.
    workdir: holds ``checkpoints/`` and ``metrics.jsonl``.
    checkpoint_every: save every this many steps (and always at the end).
    max_to_keep: checkpoints kept.
    log_every: write a metrics record every this many steps (and at the end).
    eval_fn: ``params -> {name: scalar}``, logged as ``eval/{name}``.
    eval_every: evaluate every this many steps (0: only at the end).
    instruments: probes run every ``instrument.every`` steps.
    progress_every: log progress to the terminal every this many steps.
    stop_on_nonfinite: on every logged step (and every checkpoint step is
      one) the loop checks that the loss and the parameters are finite; if
      not, it raises :class:`NonFiniteError` naming the step and what went
      non-finite, and the last checkpoint (a finite one) is kept. ``False``
      trains on and records the values (for studies of divergence).

  Returns:
    The final state and the last metrics record.

  Raises:
    Preempted: the process received SIGTERM or SIGINT (on several processes:
      JAX's preemption notice reached them); the loop stopped after the step
      it was in (every process after the same one), saved that step as a
      checkpoint, waited for it and verified it. Started again, the run
      resumes there and ends as an uninterrupted run would.
    NonFiniteError: see ``stop_on_nonfinite``.
    WorkdirBusy: another process is training in ``workdir``.
    ValueError: a bad argument, or a restart that would corrupt the run's
      records (a ``num_steps`` below the checkpointed step, another
      ``log_every`` or ``eval_every`` than the run was started with).
  """
  for name, value in (
    ("num_steps", num_steps),
    ("checkpoint_every", checkpoint_every),
    ("log_every", log_every),
    ("progress_every", progress_every),
  ):
    if value < 1:
      raise ValueError(f"{name}: expected an integer >= 1, got {value}")
  if eval_every < 0:
    raise ValueError(f"eval_every: expected an integer >= 0, got {eval_every}")
  for inst in instruments:
    if inst.every < 1:
      raise ValueError(f"instruments: {inst.name!r} has every={inst.every}, expected >= 1")

  with workdir_lock(workdir), preemption.stop_on_signals() as should_stop:
    return _fit(
      state,
      train_step,
      batches,
      num_steps=num_steps,
      workdir=workdir,
      checkpoint_every=checkpoint_every,
      max_to_keep=max_to_keep,
      log_every=log_every,
      eval_fn=eval_fn,
      eval_every=eval_every,
      instruments=instruments,
      progress_every=progress_every,
      stop_on_nonfinite=stop_on_nonfinite,
      should_stop=should_stop,
    )


class NonFiniteError(RuntimeError):
  """The loss or the parameters became NaN or Inf."""


class RestartMismatch(ValueError):
  """A restart whose arguments would corrupt the run's records."""


def _check_cadence(workdir: str, cadence: dict[str, int]) -> None:
  """A restart keeps the cadence the run started with (metrics.jsonl reads as one run)."""
  path = os.path.join(workdir, "fit.json")
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    for k, v in cadence.items():
      if k in old and old[k] != v:
        raise RestartMismatch(
          f"{k}: the run in {workdir} was started with {k}={old[k]}; "
          f"restarting with {v} would mix cadences in metrics.jsonl (use "
          f"{old[k]}, or a new workdir)"
        )
  elif jax.process_index() == 0:
    write_json_atomically(path, cadence)


def _nonfinite(metrics: Mapping[str, Any], params: Any) -> str | None:
  """What is non-finite among the loss and the parameters, if anything."""
  loss = np.asarray(metrics.get("loss", 0.0), np.float64)
  if not np.all(np.isfinite(loss)):
    return f"the loss is {loss.tolist()}"
  if "param_norm" in metrics:  # the step measured it anyway
    finite = np.all(np.isfinite(np.asarray(metrics["param_norm"], np.float64)))
  else:
    finite = bool(_params_finite(params))
  return None if finite else "the parameters hold NaN or Inf"


@jax.jit
def _params_finite(params):
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))


def _preempted(step: int, saved: str) -> preemption.Preempted:
  """The exception, after a line on stdout (process 0) and in the log."""
  error = preemption.preempted(step, saved)
  logging.warning("%s", error)
  if jax.process_index() == 0:
    print(f"gradlab: {error}", flush=True)
  return error


def _fit(
  state,
  train_step,
  batches,
  *,
  num_steps,
  workdir,
  checkpoint_every,
  max_to_keep,
  log_every,
  eval_fn,
  eval_every,
  instruments,
  progress_every,
  stop_on_nonfinite,
  should_stop,
):
  _check_cadence(workdir, {"log_every": log_every, "eval_every": eval_every})
  manager = ckpt_lib.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=max_to_keep)
  state, restored = ckpt_lib.restore_latest(manager, state)
  start = 0 if restored is None else restored
  if start > num_steps:
    manager.close()
    raise RestartMismatch(
      f"num_steps: {num_steps} is below step {start}, where the run in "
      f"{workdir} has its checkpoint; use num_steps >= {start} or a new workdir"
    )
  if restored is None and any(
    getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(state)
  ):
    raise ValueError(
      "state: its buffers were donated to an earlier train step (the "
      "step donates its input state); pass a freshly created state"
    )
  writer = MetricsWriter(os.path.join(workdir, "metrics.jsonl"))
  writer.truncate_after(start)
  if restored is not None:
    logging.info("Resumed from the checkpoint of step %d in %s", start, workdir)

  jitted_instruments = [(i, inst, jax.jit(inst.fn)) for i, inst in enumerate(instruments)]
  jitted_eval = jax.jit(eval_fn) if eval_fn is not None else None
  last: dict[str, Any] = (read_metrics(writer.path) or [{}])[-1]
  it = batches(start)
  t0, s0 = time.perf_counter(), start
  lean_step = getattr(train_step, "lean", train_step)
  # Step boundaries: here, and after every step. should_stop is one Python bool
  # read per step (on several processes, JAX's sync point: the same on all).
  if should_stop():  # stopped before this run trained a step: nothing new to save
    manager.close()
    saved = (
      f"checkpoint {start} in {manager.directory}" if restored is not None else "no checkpoint yet"
    )
    raise _preempted(start, f"nothing trained since the start ({saved})")
  for s in range(start + 1, num_steps + 1):
    batch = next(it)
    is_last = s == num_steps
    due = [(i, inst, fn) for i, inst, fn in jitted_instruments if s % inst.every == 0 or is_last]
    evaluate = jitted_eval is not None and ((eval_every and s % eval_every == 0) or is_last)
    checkpoint = s % checkpoint_every == 0 or is_last
    # every checkpoint step is checked before it is saved: a checkpoint is finite
    logged = bool(due) or evaluate or s % log_every == 0 or checkpoint
    record: dict[str, Any] = {}
    # Instruments measure the state the step is about to update, on the batch
    # it updates with, as the step's own loss and gradient norm do. (After the
    # step, that batch's gradient has just been reduced: a gradient statistic
    # read there is biased, e.g. a noise scale inflated several-fold.)
    for i, inst, fn in due:
      key = jax.random.fold_in(jax.random.fold_in(state.key, _INSTRUMENT_SALT + i), s)
      record.update({f"{inst.name}/{k}": v for k, v in fn(state.params, batch, key).items()})
    state, metrics = (train_step if logged else lean_step)(state, batch)
    if logged:
      if evaluate:
        record.update({f"eval/{k}": v for k, v in jitted_eval(state.params).items()})
      last = {"step": s, **to_python(metrics), **to_python(record)}
      writer.write(last)
      bad = _nonfinite(last, state.params) if stop_on_nonfinite else None
      if bad is not None:
        kept = manager.latest_step()
        manager.close()
        raise NonFiniteError(
          f"step {s}: {bad}; training stopped, the last finite checkpoint is "
          + (f"step {kept} in {workdir}" if kept is not None else "none (no step was saved)")
        )
    if checkpoint:
      ckpt_lib.save(manager, s, state)
    if s % progress_every == 0 or is_last:
      rate = (s - s0) / max(time.perf_counter() - t0, 1e-9)
      # the last logged loss and its step (a progress step that is not a logged
      # step has no loss of its own); the mean, for a state vmapped over seeds
      if "loss" in last:
        seen = "" if last["step"] == s else f" (at step {last['step']})"
        loss = f"  loss {float(np.mean(last['loss'])):.4f}{seen}"
      else:
        loss = ""
      logging.info("step %d/%d%s  %.1f steps/s", s, num_steps, loss, rate)
    if should_stop():
      if not logged and stop_on_nonfinite and not bool(_params_finite(state.params)):
        kept = manager.latest_step()  # a checkpoint is finite: keep the last one
        manager.close()
        raise NonFiniteError(
          f"step {s}: the parameters hold NaN or Inf; told to stop, the run saved "
          "nothing; the last finite checkpoint is "
          + (f"step {kept} in {workdir}" if kept is not None else "none (no step was saved)")
        )
      done = ckpt_lib.save_verified(manager, s, state, saved=checkpoint)
      manager.close()
      raise _preempted(s, done)
  manager.wait_until_finished()
  manager.close()
  return state, last
