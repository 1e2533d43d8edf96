"""data_pruning in a small setting: it scores, prunes, retrains, judges, and resumes."""

import csv
import json

import numpy as np

from experiments import data_pruning, reporting
from gradlab import data
from tests.experiments.run_main import run_main

FLAGS = (
  "--dataset=digits", "--num_train=200", "--hidden=16", "--epochs=2", "--batch_size=50",
  "--score_seeds=2", "--score_epoch=1", "--vog_checkpoints=2", "--seeds=2", "--fractions=0.5",
)  # fmt: skip


def test_keep_max_keeps_the_highest_scores_as_data_diet_does():
  # data_diet's keep_max_scores: scores.argsort()[-size:]
  scores = np.array([0.1, 0.7, 0.3, 0.9, 0.5])
  np.testing.assert_array_equal(data_pruning._keep_max(scores, 2), [0, 1, 0, 1, 0])  # noqa: SLF001


def test_small_setting_prunes_retrains_judges_and_resumes(tmp_path):
  proc = run_main("data_pruning", f"--workdir={tmp_path}", *FLAGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["method"] for r in rows] == ["full data", "el2n", "grand", "vog", "random"]
  assert [int(r["kept"]) for r in rows] == [200, 100, 100, 100, 100]
  for r in rows:
    assert 0 <= float(r["test accuracy"]) <= 1 and float(r["se"]) >= 0
  for r in rows[1:3]:  # the claimed scores carry the one verdict rule
    assert r["verdict"] == reporting.verdict(float(r["z"]))
  assert rows[3]["verdict"] == "no claim"
  with open(tmp_path / "scores.json") as f:
    scores = json.load(f)["scores"]
  # EL2N is the norm of a difference of two points of the simplex: in [0, sqrt(2)].
  assert 0 <= min(scores["el2n"]) and max(scores["el2n"]) <= np.sqrt(2)
  assert min(scores["grand"]) > 0
  # Class-normalized VoG: mean 0 and (population) standard deviation 1 within each class;
  # float32 sums of ~20 O(1) terms: 1e-5.
  labels = data.load_dataset("digits").y_train[:200]
  vog = np.asarray(scores["vog"])
  for c in np.unique(labels):
    assert abs(vog[labels == c].mean()) < 1e-5 and abs(vog[labels == c].std() - 1) < 1e-5
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert len([r for r in records if r["phase"] == "retrain"]) == 2 * (1 + 4)
  assert (tmp_path / "pruning.png").stat().st_size > 0
  assert "Paul, Ganguli & Dziugaite" in (tmp_path / "results.md").read_text()
  # Started again, it reuses the finished units (not rewritten) and writes the same table.
  units = ["scores.json", "retrain_full.json", "retrain_0.5.json"]
  stamps = [(tmp_path / u).stat().st_mtime_ns for u in units]
  table = (tmp_path / "results.csv").read_text()
  again = run_main("data_pruning", f"--workdir={tmp_path}", *FLAGS)
  assert again.returncode == 0 and (tmp_path / "results.csv").read_text() == table
  assert [(tmp_path / u).stat().st_mtime_ns for u in units] == stamps
