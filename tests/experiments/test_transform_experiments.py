import os

from tests.experiments.run_main import assert_flag_error, run_main


def test_gradient_spikes_small_setting_writes_results_and_resumes(tmp_path):
  flags = ["--seeds=1", "--num_steps=16", "--num_spikes=2", "--optimizers=spam"]
  proc = run_main("gradient_spikes", f"--workdir={tmp_path}", *flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("results.md", "results.csv", "loss_classifier.png", "loss_lm.png"):
    assert os.path.getsize(tmp_path / name) > 0
  table = (tmp_path / "results.md").read_text()
  assert "spam" in table and "lm" in table and "classifier" in table
  assert len(os.listdir(tmp_path / "runs")) == 2
  again = run_main("gradient_spikes", f"--workdir={tmp_path}", *flags)
  assert again.returncode == 0 and "diverged" not in again.stdout  # every unit was reused
  assert (tmp_path / "results.md").read_text() == table


def test_gradient_spikes_rejects_bad_flags(tmp_path):
  assert_flag_error("gradient_spikes", tmp_path, "--optimizers=adam,nope", "--optimizers must be")
  assert_flag_error("gradient_spikes", tmp_path / "b", "--spike_scale=0", "--spike_scale must be")


def test_optimizer_zoo_small_setting(tmp_path):
  proc = run_main(
    "optimizer_zoo",
    f"--workdir={tmp_path}",
    "--seeds=1",
    "--num_steps=20",
    "--only=adam,agvm+momentum,svrg+sgd,mars (exact),adahessian,sophia,skip_spikes+adam",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (tmp_path / "results.md").read_text()
  # the curvature arms train through make_update's obj_fn (sophia, adahessian)
  for name in ("agvm+momentum", "svrg+sgd", "mars (exact)", "adahessian", "sophia", "skip_spikes"):
    assert name in table
  assert os.path.getsize(tmp_path / "loss.png") > 0
