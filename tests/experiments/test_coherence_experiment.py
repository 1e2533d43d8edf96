"""experiments.coherence in a small setting."""

import csv

from tests.experiments.run_main import run_main


def test_coherence_small_setting_separates_real_from_random_labels(tmp_path):
  proc = run_main(
    "coherence", f"--workdir={tmp_path}", "--steps=100", "--log_every=50", "--batch_size=32",
    "--hidden=32", "--num_train=300", "--winsor_c=3",
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    rows = {r["run"]: r for r in csv.DictReader(f)}
  assert set(rows) == {
    "real labels, mean", "real labels, winsorized", "random labels, mean",
    "random labels, winsorized",
  }  # fmt: skip
  for r in rows.values():
    assert 0 <= float(r["mean coherence"]) <= 1
  # real labels: the examples agree more than random ones do (measured 1.8x here)
  assert float(rows["real labels, mean"]["coherence, first tenth"]) > 1.3 * float(
    rows["random labels, mean"]["coherence, first tenth"]
  )
  assert (tmp_path / "coherence.png").stat().st_size > 0
