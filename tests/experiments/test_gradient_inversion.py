"""experiments.gradient_inversion in a small setting: every arm and verdict is written, the
exact parts (the analytic recovery, iDLG's label) are exact, and a restart reuses the units."""

import csv
import math

import numpy as np

from tests.experiments.run_main import assert_flag_error, run_main

ARGS = (
  "--seeds=2", "--num_steps=10", "--optimizer=adam", "--batch_sizes=2",
  "--noise_multipliers=1e-3", "--clip_norms=0.1", "--hidden=16",
)  # fmt: skip


def test_gradient_inversion_small_setting(tmp_path):
  proc = run_main("gradient_inversion", f"--workdir={tmp_path}", *ARGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.csv") as f:
    rows = {r["arm"]: r for r in csv.DictReader(f)}
  assert list(rows) == ["clean", "clip 0.1", "noise 0.001", "batch 2"]
  for r in rows.values():
    assert math.isfinite(float(r["PSNR dB"])) and math.isfinite(float(r["matching loss"]))
  # the analytic first-layer recovery is exact: least squares over the 16 rows is
  # within (2 * 16 + 3) float32 ulps of each pixel in [0, 1], so PSNR >= 20 log10(1 / that)
  floor = -20 * np.log10(35 * np.finfo(np.float32).eps)
  assert float(rows["clean"]["analytic PSNR dB"]) > floor
  # iDLG's label is exact on the clean gradient, and per-layer clipping (a positive
  # rescaling of the bias gradient) keeps its signs
  assert float(rows["clean"]["iDLG label acc"]) == 1.0
  assert float(rows["clip 0.1"]["iDLG label acc"]) == 1.0
  # per-layer clipping turns the analytic recovery into a multiple of the digit: exact
  # up to that scale (the least-squares scale adds a few more roundings: 40 ulps)
  floor_scaled = -20 * np.log10(40 * np.finfo(np.float32).eps)
  assert float(rows["clip 0.1"]["analytic PSNR up to scale"]) > floor_scaled
  assert float(rows["clip 0.1"]["analytic PSNR dB"]) < floor_scaled
  # the noise arm's std is z C; its clipping does not bind, the clip arm's does
  assert float(rows["noise 0.001"]["noise std"]) == 0.01
  assert float(rows["noise 0.001"]["clip factor"]) <= 1 < float(rows["clip 0.1"]["clip factor"])
  text = (tmp_path / "results.md").read_text()
  verdicts = (
    text.count("**agrees**") + text.count("**inconclusive**") + text.count("**contradicts**")
  )
  assert verdicts == 5 and "Zhu et al." in text and "Zhao et al." in text
  assert (tmp_path / "gradient_inversion.png").stat().st_size > 0
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
  # a restart reuses every finished unit and writes the same table
  again = run_main("gradient_inversion", f"--workdir={tmp_path}", *ARGS)
  assert again.returncode == 0 and (tmp_path / "results.md").read_text() == text
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_gradient_inversion_refuses_a_batch_of_one(tmp_path):
  assert_flag_error(
    "gradient_inversion", tmp_path, "--batch_sizes=1,4", "--batch_sizes must be a comma"
  )
