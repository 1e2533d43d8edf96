import os

from tests.experiments.run_main import assert_flag_error, run_main


def test_policy_gradient_variance_small_setting(tmp_path):
  proc = run_main(
    "policy_gradient_variance",
    f"--workdir={tmp_path}",
    "--num_batches=300",
    "--groups=4",
    "--mixes=0.5:2",
    "--num_prompts=5",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("results.md", "scale.md", "allocation.md", "scale.png"):
    assert os.path.getsize(tmp_path / name) > 0
  table = (tmp_path / "results.md").read_text()
  assert "bnpo" in table and "rloo" in table and "0.783" in table  # the reference figure is cited


def test_policy_gradient_variance_rejects_bad_flags(tmp_path):
  assert_flag_error("policy_gradient_variance", tmp_path, "--groups=1", "--groups must be")
  assert_flag_error("policy_gradient_variance", tmp_path / "b", "--mixes=0.5", "--mixes must be")


def test_rlvr_toy_small_setting_and_resume(tmp_path):
  flags = ["--rl_steps=3", "--sft_steps=2", "--eval_every=2", "--methods=w_reinforce", "--group=2"]
  proc = run_main("rlvr_toy", f"--workdir={tmp_path}", *flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (tmp_path / "results.md").read_text()
  assert "pass@64" in table and "w_reinforce" in table and "base (SFT)" in table
  assert os.path.getsize(tmp_path / "pass_at_k.png") > 0
  again = run_main("rlvr_toy", f"--workdir={tmp_path}", *flags)
  assert again.returncode == 0 and "w_reinforce:" not in again.stdout  # finished methods are reused
  assert_flag_error("rlvr_toy", tmp_path / "c", "--methods=ppo2", "--methods must be")
