"""The hyper-cleaning main in a small setting: every method runs, the learned weights
find the flipped labels, and results.md carries the verdicts."""

import csv
import json
import math

from tests.experiments.run_main import run_main


def test_hyper_cleaning_small_setting_finds_the_flipped_labels(tmp_path):
  proc = run_main(
    "hyper_cleaning", f"--workdir={tmp_path}", "--num_train=200", "--outer_steps=20",
    "--seeds=2", "--init_steps=20", "--baseline_steps=50", "--cg_iterations=5",
    "--inner_steps=2", "--bo_rep_inner_steps=4", "--log_every=5",
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    rows = {r["method"]: r for r in csv.DictReader(f)}
  assert list(rows) == [
    "noisy", "noisy, early-stopped on val", "clean", "clean, early-stopped on val",
    "implicit_cg", "penalty", "bo_rep",
  ]  # fmt: skip
  for r in rows.values():
    assert 0 < float(r["test accuracy"]) <= 1 and math.isfinite(float(r["val loss"]))
  # 20 outer steps already rank the 80 flipped labels far above chance (AUROC 0.5)
  # by the two second-order methods (measured 0.94 both); the penalty's y_sigma and y*
  # after 2 steps each are too close to separate yet, so it is only required to run.
  for m in ("implicit_cg", "bo_rep"):
    assert float(rows[m]["AUROC"]) > 0.8, rows[m]
  assert math.isfinite(float(rows["penalty"]["AUROC"]))
  md = (tmp_path / "results.md").read_text()
  assert md.count("beats noisy training, test accuracy") == 3
  assert md.count("beats noisy training early-stopped on the validation loss") == 3
  assert md.count("BO-REP beats") == 2
  for line in md.splitlines():
    if "beats" in line and line.startswith("- "):
      assert line.endswith(("agrees", "contradicts", "inconclusive")), line
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {r["step"] for r in records} == {5, 10, 15, 20} and len(records) == 12
  assert (tmp_path / "hyper_cleaning.png").stat().st_size > 0
