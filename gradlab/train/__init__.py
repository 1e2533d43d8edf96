"""Training: the state, the sharded train step, checkpoints, metrics, the loop."""

from gradlab.train.checkpoint import make_manager, restore_latest
from gradlab.train.loop import Instrument, fit
from gradlab.train.metrics import MetricsWriter, read_metrics
from gradlab.train.state import TrainState
from gradlab.train.step import make_train_step, make_value_and_grad
from gradlab.train.toy_tasks import TASKS as TOY_TASKS, Task, make_task, train_curves

__all__ = ["Instrument", "MetricsWriter", "TrainState", "fit", "make_manager",
           "make_task", "make_train_step", "make_value_and_grad", "read_metrics", "restore_latest",
           "TOY_TASKS", "Task", "train_curves"]
