"""Training: the state, one pure update, the sharded train step, checkpoints, metrics, the loop.

``train`` depends only on ``gradlab.sharding``: tasks, data and models are the
caller's.

* ``TrainState``; ``make_value_and_grad`` (micro-batched), ``make_update`` and
  ``make_train_step`` (jitted, sharded); ``train_curves`` (many seeds at once).
* ``fit``, the loop, with its ``Instrument``s, ``MetricsWriter`` /
  ``read_metrics`` and orbax checkpoints (``make_manager``,
  ``restore_latest``); ``workdir_lock`` keeps one run per workdir.
* Preemption for hand-written loops: inside ``stop_on_signals()``, raise
  ``preempted(step, saved)`` once the step is saved (``fit`` does this itself);
  ``Preempted`` and its ``EXIT_CODES``.
"""

from gradlab.train.checkpoint import make_manager, restore_latest
from gradlab.train.curves import train_curves
from gradlab.train.lock import WorkdirBusy, workdir_lock
from gradlab.train.loop import Instrument, NonFiniteError, RestartMismatch, fit
from gradlab.train.metrics import MetricsWriter, read_metrics
from gradlab.train.preemption import EXIT_CODES, Preempted, preempted, stop_on_signals
from gradlab.train.state import TrainState
from gradlab.train.step import make_train_step, make_update, make_value_and_grad

__all__ = [
  "EXIT_CODES",
  "Instrument",
  "MetricsWriter",
  "NonFiniteError",
  "Preempted",
  "RestartMismatch",
  "TrainState",
  "WorkdirBusy",
  "fit",
  "make_manager",
  "make_train_step",
  "make_update",
  "make_value_and_grad",
  "preempted",
  "read_metrics",
  "restore_latest",
  "stop_on_signals",
  "train_curves",
  "workdir_lock",
]
