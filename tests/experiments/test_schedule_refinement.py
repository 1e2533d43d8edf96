"""schedule_refinement's small setting: the table, the verdicts, the resume, the figure."""

import csv
import json

import numpy as np

from tests.experiments.run_main import run_main

SMALL = ("--seeds=2", "--num_steps=30", "--hidden=16", "--checkpoint_every=30", "--log_every=10")


def test_small_run_writes_the_table_verdicts_and_the_refined_schedule(tmp_path):
  proc = run_main("schedule_refinement", f"--workdir={tmp_path}", *SMALL)
  assert proc.returncode == 0, proc.stderr
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["optimizer"], r["schedule"]) for r in rows] == [
    (o, s) for o in ("sgd", "adam") for s in ("linear", "cosine", "refined")
  ]
  for r in rows:
    for key in ("test_loss mean", "test_loss se", "test_accuracy mean", "train_loss mean"):
      assert np.isfinite(float(r[key])), (r, key)
  md = (tmp_path / "results.md").read_text()
  verdicts = [line for line in md.splitlines() if line.startswith("- ")]
  assert len(verdicts) == 4  # two claims x two optimizers
  for line in verdicts:
    assert line.count("agrees") + line.count("contradicts") + line.count("inconclusive") == 3
  assert (tmp_path / "schedules.png").stat().st_size > 0

  # the refinement's input: the linear run's l2 gradient norm of every step
  lin = json.loads((tmp_path / "runs/sgd/linear/seed0.json").read_text())
  assert len(lin["grad_norms"]) == 30  # one norm per step (the linear run logs every step)
  records = [json.loads(line) for line in (tmp_path / "runs/sgd/linear/seed0/metrics.jsonl").open()]
  assert [r["grad_norm"] for r in records] == lin["grad_norms"]

  # a restart reuses every finished run and writes the same table
  before = (tmp_path / "results.csv").read_text()
  again = run_main("schedule_refinement", f"--workdir={tmp_path}", *SMALL)
  assert again.returncode == 0, again.stderr
  assert (tmp_path / "results.csv").read_text() == before
