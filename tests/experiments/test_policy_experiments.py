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
  for name in ("selection.md",):
    assert os.path.getsize(tmp_path / name) > 0
  table = (tmp_path / "results.md").read_text()
  for name in (
    "bnpo",
    "rloo",
    "bvpo (rloo + bnpo)",
    "copg (beta 0.1)",
    "relative variance (exact)",
  ):
    assert name in table
  assert "0.783" not in table  # the figure of another population is no longer cited
  import csv

  rows = list(csv.DictReader(open(tmp_path / "results.csv")))
  by = {r["estimator"]: r for r in rows}
  # 300 batches: the Monte Carlo relative variance is within 25% of the exact one
  for name in ("rloo", "grpo", "dr_grpo"):
    mc, exact = float(by[name]["relative variance"]), float(by[name]["relative variance (exact)"])
    assert abs(mc / exact - 1) < 0.25, (name, mc, exact)
  # BVPO's mixture is never worse than its noisier component by more than the noise
  assert float(by["bvpo (rloo + bnpo)"]["relative MSE"]) < 1.1 * float(by["rloo"]["relative MSE"])
  sel = (tmp_path / "selection.md").read_text()
  for name in ("uniform", "vas", "vade", "oracle"):
    assert name in sel


def test_policy_gradient_variance_rejects_bad_flags(tmp_path):
  assert_flag_error("policy_gradient_variance", tmp_path, "--groups=1", "--groups must be")
  assert_flag_error("policy_gradient_variance", tmp_path / "b", "--mixes=0.5", "--mixes must be")


def test_rlvr_toy_small_setting_and_resume(tmp_path):
  flags = [
    "--rl_steps=2",
    "--sft_steps=2",
    "--eval_every=2",
    "--methods=copg",  # the one step with a reference model; the others differ by advantages
    "--group=2",
    "--seeds=2",
    "--learning_rates=1e-3",
    "--prompts_per_step=4",
    "--eval_prompts=4",
  ]
  proc = run_main("rlvr_toy", f"--workdir={tmp_path}", *flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (tmp_path / "results.md").read_text()
  assert "pass@256" in table and "copg" in table
  assert "base (SFT)" in table and "held out" in table and " +- " in table
  assert os.path.getsize(tmp_path / "pass_at_k.png") > 0
  assert os.path.getsize(tmp_path / "sweep.csv") > 0
  again = run_main("rlvr_toy", f"--workdir={tmp_path}", *flags)
  assert again.returncode == 0 and "copg (lr" not in again.stdout  # finished methods reused
  assert_flag_error("rlvr_toy", tmp_path / "c", "--methods=ppo2", "--methods must be")
  assert_flag_error("rlvr_toy", tmp_path / "d", "--held_out=1.5", "--held_out must be")
  assert_flag_error("rlvr_toy", tmp_path / "e", "--ada_rounds=0", "--ada_rounds must be")
  assert_flag_error("rlvr_toy", tmp_path / "f", "--pacs_beta=0", "--pacs_beta must be")


def test_rlvr_toy_new_arms_keep_the_scan_carry():
  # Compiling one training step costs ~7 s of CPU per arm here, so the GPPO, Reinforce-Ada,
  # SPO and PACS arms are traced, not run (experiments/results/rlvr_toy.md records a run):
  # each step, SPO's starting tracker included, must trace and return a carry of the
  # structure, shapes and dtypes it was given (lax.scan needs that) and a scalar reward.
  import jax
  import jax.numpy as jnp

  from experiments import rlvr_toy
  from gradlab import policy
  from gradlab.tasks import digit_sum as ds

  config = rlvr_toy.Config(group=2, prompts_per_step=2, updates_per_batch=1, ada_rounds=2)
  prompts = jnp.asarray(ds.all_prompts(constrained=True)[:8])
  tokens = jnp.zeros((1, ds.PROMPT_LEN + 2), jnp.int32)
  base = jax.eval_shape(lambda: rlvr_toy.MODEL.init(jax.random.key(0), tokens))
  for method in ("gppo", "reinforce_ada", "spo", "pacs"):
    opt, step = rlvr_toy._rl_step(method, config, base, prompts)
    carry = jax.eval_shape(
      lambda p, m=method: (
        p,
        opt.init(p),
        policy.vade_init(8),
        rlvr_toy._spo_tracker(m, config, p, prompts),
      ),
      base,
    )
    new, reward = jax.eval_shape(step, carry, jax.random.key(1))
    assert jax.tree.structure(new) == jax.tree.structure(carry), method
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(carry)):
      assert (a.shape, a.dtype) == (b.shape, b.dtype), method
    assert reward.shape == () and reward.dtype == jnp.float32


def test_inventory_hdpo_small_setting(tmp_path):
  proc = run_main(
    "inventory_hdpo",
    f"--workdir={tmp_path}",
    "--horizons=1,8",
    "--num_traces=512",
    "--seeds=2",
    "--train_steps=150",
    "--batch=8",
    "--learning_rate=0.1",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  import csv

  rows = {(r["T"], r["estimator"]): r for r in csv.DictReader(open(tmp_path / "results.csv"))}
  for t in ("1", "8"):
    # the pathwise gradient is far quieter than REINFORCE's at every horizon
    hdpo, rf = rows[(t, "hdpo")], rows[(t, "reinforce")]
    assert float(hdpo["variance per trace"]) * 5 < float(rf["variance per trace"])
    # and HDPO trains to within 2% of the optimal cost from S = 0.5 (S* = 2.30)
    assert float(hdpo["gap (mean)"]) < 0.02, hdpo
  assert os.path.getsize(tmp_path / "variance.png") > 0
  assert_flag_error("inventory_hdpo", tmp_path / "b", "--batch=1", "--batch must be")
