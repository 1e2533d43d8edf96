"""The unlearning main in a small setting: every method runs from the same trained pair,
SalUn's frozen weights stay put, results.md carries the verdicts, and a restart reuses
every finished unit."""

import csv
import json

from tests.experiments.run_main import run_main

FLAGS = (
  "--dataset=digits", "--train_steps=30", "--unlearn_epochs=2", "--seeds=2", "--tune_seeds=2",
  "--learning_rates=0.01", "--width=16",
)  # fmt: skip


def test_unlearning_small_setting_scores_every_method_against_retraining(tmp_path):
  proc = run_main("unlearning", f"--workdir={tmp_path}", *FLAGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    rows = {r["method"]: r for r in csv.DictReader(f)}
  assert list(rows) == ["original", "retrain", "FT", "GA", "RL", "SalUn"]
  for r in rows.values():
    for m in ("UA", "RA", "TA", "MIA"):
      assert 0 <= float(r[f"{m} %"]) <= 100, r
  assert int(rows["SalUn"]["frozen weights moved"]) == 0
  for m in ("FT", "GA", "RL", "SalUn"):
    assert float(rows[m]["avg gap"]) >= 0
  md = (tmp_path / "results.md").read_text()
  verdicts = [line for line in md.splitlines() if line.startswith("- SalUn's average gap")]
  assert len(verdicts) == 3
  assert all(v.endswith(("agrees", "contradicts", "inconclusive")) for v in verdicts)
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {r["epoch"] for r in records} == {1, 2} and len(records) == 8
  assert (tmp_path / "unlearning.png").stat().st_size > 0
  # a restart with the same flags recomputes nothing and writes the same table
  again = run_main("unlearning", f"--workdir={tmp_path}", *FLAGS)
  assert again.returncode == 0 and (tmp_path / "results.md").read_text() == md
  assert "trained" in again.stdout
