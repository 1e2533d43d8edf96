"""Training: the state, one pure update, the sharded train step, checkpoints, metrics, the loop.

``train`` depends only on ``gradlab.sharding``: tasks, data and models are the
caller's.
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
