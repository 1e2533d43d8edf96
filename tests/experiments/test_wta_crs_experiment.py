"""experiments.wta_crs in a small setting."""

import csv

from tests.experiments.run_main import run_main


def test_wta_crs_small_setting_trains_every_way_and_keeps_less(tmp_path):
  proc = run_main(
    "wta_crs", f"--workdir={tmp_path}", "--tasks=classifier", "--steps=60", "--batch_size=64"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    rows = {r["backward"]: r for r in csv.DictReader(f)}
  assert set(rows) == {"exact", "WTA-CRS", "CRS"}
  for r in rows.values():
    assert float(r["final train loss"]) < 2.2  # below chance (log 10 = 2.30) after 60 steps
  assert float(rows["WTA-CRS"]["XLA temp KiB"]) < float(rows["exact"]["XLA temp KiB"])
  assert "Liu et al. (2023)" in (tmp_path / "results.md").read_text()
