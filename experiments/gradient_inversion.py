r"""Gradient inversion on digits: DLG against clipping, DP noise and batch size.

  python -m experiments.gradient_inversion --workdir=runs/gradient_inversion

A victim computes the gradient of a tanh MLP (``gradlab.models.MLP``,
``--hidden`` units, fresh initialization per seed: DLG attacks at
initialization) on a few training digits and shares it, possibly through
DP-SGD's aggregation with per-layer clipping and Gaussian noise
(``gradlab.transforms.dp_per_layer_aggregate``: per-example, per-layer
clipping to ``C_l = C / \sqrt{4}`` and noise of standard deviation
``z C / B`` on the mean). The attacker runs DLG
(``gradlab.privacy.gradient_inversion``: dummy digit and soft label from
``N(0, 1)``, ``--num_steps`` L-BFGS steps on the gradient distance, as the
official mit-han-lab/dlg ``main.py``) and, for one example, iDLG (the label
read off the last bias gradient by ``privacy.idlg_label``, then the same
attack on the digit alone; Zhao et al. 2020, PatrickZH/Improved-Deep-Leakage-
from-Gradients ``iDLG.py``) and the analytic recovery from the first Dense
layer (``privacy.dense_input_from_gradient``, least squares over its rows). Arms, each over ``--seeds`` seeds (a model and
the digits per seed, shared by the arms of one batch size):

* ``clean``: one digit, the exact gradient;
* ``clip C``: one digit, per-layer clipping at each of ``--clip_norms``, no
  noise;
* ``noise z``: one digit, clipping at ``--noise_clip`` (chosen not to bind:
  the table's ``clip factor`` is the largest per-layer norm over its budget,
  <= 1 when nothing is clipped) and noise multiplier ``z`` for each of
  ``--noise_multipliers`` (so the noise standard deviation is ``z C``);
* ``batch B``: the mean gradient of ``B`` digits for each of
  ``--batch_sizes``, no defense; DLG reconstructs ``B`` dummies, matched to
  the digits by the assignment of least total squared error.

Reported per arm: PSNR (dB, reconstruction clipped to the digits' range [0,
1], per digit, then the mean over seeds +- standard error), MSE, the share of
digits recovered (PSNR >= ``--recovered_psnr``), DLG's label accuracy; for
one digit iDLG's label accuracy and PSNR, and the analytic recovery's PSNR,
also up to one global scale fit to the digit (per-layer clipping rescales the
weight and bias gradients differently, so the analytic recovery returns a
multiple of the digit: the scale measures what leaks, it is not an attack);
the final matching loss.

Claims checked (DLG, Zhu, Liu & Han, NeurIPS 2019, Sections 4-5): DLG
recovers single digits almost exactly (MNIST, Fig. 3); Gaussian noise of
scale 1e-2 and above defeats it (Fig. 7 and its text, which says "variance";
both 1e-2 and 1e-1 are in the default sweep); larger batches degrade it (the
paper recovers batches of up to 8 with more iterations); iDLG reconstructs
better than DLG (Zhao et al., whose extracted label is always right). Also
checked, a DP commonplace rather than DLG's claim: clipping without noise does
not stop the leakage (on the analytic recovery up to scale). "Recovered" is PSNR >= ``--recovered_psnr`` (30 dB: MSE 1e-3 on
[0, 1] pixels); each verdict is ``experiments.reporting.verdict`` of the
stated difference over seeds.

Every finished unit (the one-digit arms together, each batch size) is cached
in ``units/*.json``; a restart with the same flags redoes only the missing
ones. Writes ``results.md`` / ``results.csv``, ``metrics.jsonl`` (one record
per unit) and ``gradient_inversion.png`` (PSNR against each defense, and seed
0's reconstructions).

Deviations: flax's default initialization, not DLG's uniform(-0.5, 0.5); an
MLP on 8x8 digits rather than LeNet on 28x28 MNIST; optax's L-BFGS with a
zoom line search, each step one iteration (torch's ``LBFGS.step`` makes up to
20 iterations without a line search).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from experiments import flag_checks, reporting, runner
from gradlab import data, gradstats, models, privacy, train, transforms

PROG = "gradient_inversion"


@dataclasses.dataclass(frozen=True)
class Config:
  """The flags of ``gradient_inversion`` (``--name=value``); defaults are the main's."""

  dataset: str = runner.option("digits", f"One of {', '.join(data.DATASETS)}.")
  hidden: int = runner.option(32, "Hidden units of the tanh MLP.")
  seeds: int = runner.option(8, "Seeds per arm (a model and digits each).")
  num_steps: int = runner.option(200, "Optimizer steps of every DLG attack.")
  num_restarts: int = runner.option(1, "DLG initializations per attack (the best is kept).")
  optimizer: str = runner.option("lbfgs", f"One of {', '.join(privacy.OPTIMIZERS)}.")
  learning_rate: float = runner.option(0.1, "Adam's learning rate (L-BFGS uses a line search).")
  clip_norms: list[str] = runner.option(["1.0", "0.1", "0.01"], "Clip norms C (no noise).")
  noise_clip: float = runner.option(10.0, "Clip norm C of the noise arms (large: not binding).")
  noise_multipliers: list[str] = runner.option(
    ["1e-5", "1e-4", "1e-3", "1e-2"], "Noise multipliers z of the noise arms (std z C)."
  )
  batch_sizes: list[str] = runner.option(["2", "4", "8"], "Batch sizes B >= 2 (no defense).")
  recovered_psnr: float = runner.option(30.0, "PSNR (dB) from which a digit counts as recovered.")
  seed: int = runner.option(0, "Seeds the models, the digits and the attacks.")


def _check(config: Config, num_train: int):
  c = flag_checks
  c.one_of("dataset", config.dataset, data.DATASETS)
  c.one_of("optimizer", config.optimizer, privacy.OPTIMIZERS)
  c.positive("hidden", config.hidden)
  c.require(config.seeds >= 2, "seeds", ">= 2 (for standard errors)", config.seeds)
  c.positive("num_steps", config.num_steps)
  c.positive("num_restarts", config.num_restarts)
  c.positive("learning_rate", config.learning_rate)
  c.positive("noise_clip", config.noise_clip)
  clips = c.number_list(
    "clip_norms", config.clip_norms, valid=lambda v: v > 0,
    expected="a comma-separated list of positive clip norms",
  )  # fmt: skip
  noises = c.number_list(
    "noise_multipliers", config.noise_multipliers, valid=lambda v: v > 0,
    expected="a comma-separated list of positive noise multipliers",
  )  # fmt: skip
  batches = c.number_list(
    "batch_sizes", config.batch_sizes, kind=int, valid=lambda b: 2 <= b <= num_train,
    expected=f"a comma-separated list of batch sizes in [2, {num_train}]",
  )  # fmt: skip
  for flag, values in (
    ("clip_norms", clips),
    ("noise_multipliers", noises),
    ("batch_sizes", batches),
  ):
    c.require(len(set(values)) == len(values), flag, "distinct values", getattr(config, flag))
  c.require(config.recovered_psnr > 0, "recovered_psnr", "> 0", config.recovered_psnr)
  return clips, noises, sorted(batches)


class _Setup:
  """The victim's model and data; the programs that share and attack gradients."""

  def __init__(self, config: Config, ds):
    self.config = config
    self.x = np.asarray(ds.x_train, np.float32).reshape(len(ds.x_train), -1)
    self.y = np.asarray(ds.y_train, np.int32)
    self.dim, self.num_classes = self.x.shape[1], ds.num_classes
    self.model = models.MLP((config.hidden, ds.num_classes), activation="tanh")
    self.base = jax.random.key(config.seed)

  def loss(self, params, batch):
    """Soft-label cross-entropy (the official ``cross_entropy_for_onehot``)."""
    logits = self.model.apply(params, batch["x"])
    return jnp.mean(-jnp.sum(batch["y"] * jax.nn.log_softmax(logits), axis=-1))

  def victims(self, b: int):
    """Per seed: the model and the first ``b`` digits of a seeded permutation."""
    s = self.config.seeds
    keys = jax.vmap(lambda i: jax.random.fold_in(self.base, i))(jnp.arange(s))
    params = jax.jit(jax.vmap(lambda k: self.model.init(k, self.x[:1])))(keys)
    idx = np.stack(
      [np.random.default_rng([self.config.seed, i]).permutation(len(self.x))[:b] for i in range(s)]
    )
    return params, self.x[idx], self.y[idx]

  def attack(self, params, shared, key, b, labels=None):
    """DLG (soft label recovered too) or, with one-hot ``labels``, iDLG."""
    c = self.config
    return privacy.gradient_inversion(
      self.loss, params, shared, key, x_shape=(b, self.dim),
      num_classes=None if labels is not None else self.num_classes, labels=labels,
      num_steps=c.num_steps, num_restarts=c.num_restarts, optimizer=c.optimizer,
      learning_rate=None if c.optimizer == "lbfgs" else c.learning_rate,
    )  # fmt: skip

  def shared_gradient(self, params, x, y, clip, z, defended, key):
    """The mean gradient, or DP-SGD's per-layer-clipped, noised mean; the clip factor."""
    batch = {"x": x, "y": jax.nn.one_hot(y, self.num_classes)}
    pe = gradstats.per_example_grads(self.loss, params, batch)
    plain = jax.tree.map(lambda g: jnp.mean(g, axis=0), pe)
    tx = transforms.dp_per_layer_aggregate(clip, z, key)
    private, _ = tx.update(pe, tx.init(params))
    budgets = transforms.layer_budgets(plain, 1.0)  # budgets per unit C
    norms = [
      jnp.max(jnp.sqrt(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), 1)))
      for g in jax.tree.leaves(pe)
    ]
    factor = jnp.max(jnp.stack([n / (u * clip) for n, u in zip(norms, budgets)]))
    shared = jax.tree.map(lambda a, b: jnp.where(defended, a, b), private, plain)
    return shared, jnp.where(defended, factor, 0.0)

  def run(self, b, clip, z, defended, x, y, params, key):
    """One arm and seed: share, attack (DLG; for one digit also iDLG and the analytic)."""
    k_noise, k_attack = jax.random.split(key)
    shared, factor = self.shared_gradient(params, x, y, clip, z, defended, k_noise)
    res = self.attack(params, shared, k_attack, b)
    out = {"x": res.x, "label": res.label, "matching_loss": res.matching_loss, "factor": factor}
    if b == 1:
      d0, d1 = shared["params"]["dense_0"], shared["params"]["dense_1"]
      out["analytic"] = privacy.dense_input_from_gradient(
        d0["kernel"], d0["bias"], method="least_squares"
      )[None]
      label = privacy.idlg_label(d1["bias"])
      out["idlg_label"] = label[None]
      # iDLG: the same attack with the label read off the gradient, x alone optimized
      idlg = self.attack(params, shared, k_attack, 1, jax.nn.one_hot(label, self.num_classes)[None])
      out["idlg_x"], out["idlg_matching_loss"] = idlg.x, idlg.matching_loss
    return out

  def program(self, b):
    return jax.jit(jax.vmap(lambda *a: self.run(b, *a)))


def _psnr(rec: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """Per-row PSNR in dB of ``clip(rec, 0, 1)`` against ``truth`` (data range 1)."""
  mse = np.mean(np.square(np.clip(rec, 0.0, 1.0) - truth), axis=-1)
  return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-30))


def _up_to_scale(rec: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """``a rec`` with the scale ``a`` fit to ``truth`` by least squares (per row): what leaks
  up to one global factor (per-layer clipping rescales the weight and bias gradients
  differently, so the analytic recovery returns a multiple of the digit)."""
  rec = np.asarray(rec, np.float64)
  a = np.sum(rec * truth, -1, keepdims=True) / np.maximum(
    np.sum(rec * rec, -1, keepdims=True), 1e-300
  )
  return a * rec


def _score(out: dict, x: np.ndarray, y: np.ndarray, threshold: float) -> dict:
  """Per attack (leading axis): matched PSNR, MSE, recovered share, label accuracy."""
  psnr, mse, rec, acc = [], [], [], []
  for i in range(len(x)):
    r = np.asarray(out["x"][i], np.float64)
    cost = np.mean(np.square(np.clip(r[:, None], 0, 1) - x[i][None]), axis=-1)
    rows, cols = linear_sum_assignment(cost)  # dummy rows[k] explains digit cols[k]
    p = _psnr(r[rows], x[i][cols])
    psnr.append(float(p.mean()))
    mse.append(float(cost[rows, cols].mean()))
    rec.append(float(np.mean(p >= threshold)))
    acc.append(float(np.mean(np.argmax(out["label"][i][rows], -1) == y[i][cols])))
  scores = {
    "psnr": psnr, "mse": mse, "recovered": rec, "label_acc": acc,
    "matching_loss": np.asarray(out["matching_loss"], float).tolist(),
    "clip_factor": np.asarray(out["factor"], float).tolist(),
  }  # fmt: skip
  if "analytic" in out:
    scores["analytic_psnr"] = [float(_psnr(out["analytic"][i], x[i]).mean()) for i in range(len(x))]
    scores["analytic_max_error"] = float(np.max(np.abs(np.asarray(out["analytic"]) - x)))
    scores["idlg_label_acc"] = np.mean(np.asarray(out["idlg_label"]) == y, axis=1).tolist()
    scores["analytic_scaled_psnr"] = [
      float(_psnr(_up_to_scale(out["analytic"][i], x[i]), x[i]).mean()) for i in range(len(x))
    ]
    scores["idlg_psnr"] = [float(_psnr(out["idlg_x"][i], x[i]).mean()) for i in range(len(x))]
    scores["idlg_recovered"] = [
      float(np.mean(_psnr(out["idlg_x"][i], x[i]) >= threshold)) for i in range(len(x))
    ]
  return scores


def _single_unit(config: Config, setup: _Setup, clips, noises) -> dict:
  """Every one-digit arm, all seeds, in one program."""
  arms = [("clean", 1.0, 0.0, False)]
  arms += [(f"clip {c:g}", c, 0.0, True) for c in clips]
  arms += [(f"noise {z:g}", config.noise_clip, z, True) for z in noises]
  params, x, y = setup.victims(1)
  s, a = config.seeds, len(arms)
  rep = lambda t: jax.tree.map(lambda v: np.concatenate([np.asarray(v)] * a), t)  # noqa: E731
  keys = jax.random.split(jax.random.fold_in(setup.base, 1), a * s)
  col = lambda j: np.repeat(np.asarray([arm[j] for arm in arms]), s)  # noqa: E731
  out = jax.device_get(
    setup.program(1)(
      col(1).astype(np.float32), col(2).astype(np.float32), col(3),
      rep(x), rep(y), rep(params), keys,
    )
  )  # fmt: skip
  units = {}
  for j, (name, clip, z, _) in enumerate(arms):
    part = jax.tree.map(lambda v: v[j * s : (j + 1) * s], out)
    units[name] = _score(part, x, y, config.recovered_psnr)
    defended = name != "clean"
    units[name].update(
      clip=clip if defended else None, noise_multiplier=z, noise_std=z * clip, batch=1
    )
    units[name]["example"] = np.clip(part["x"][0, 0], 0, 1).tolist()
  units["truth"] = x[0, 0].tolist()
  return units


def _batch_unit(config: Config, setup: _Setup, b: int) -> dict:
  params, x, y = setup.victims(b)
  s = config.seeds
  keys = jax.random.split(jax.random.fold_in(setup.base, 100 + b), s)
  out = jax.device_get(
    setup.program(b)(
      np.ones(s, np.float32), np.zeros(s, np.float32), np.zeros(s, bool), x, y, params, keys
    )
  )
  scores = _score(out, x, y, config.recovered_psnr)
  scores.update(clip=None, noise_multiplier=0.0, noise_std=0.0, batch=b)
  return scores


def _mean_se(v) -> tuple[float, float]:
  v = np.asarray(v, float)
  return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))


def _paired(a, b) -> tuple[float, float, float]:
  """mean(a - b) over seeds, its standard error, z."""
  m, se = _mean_se(np.asarray(a, float) - np.asarray(b, float))
  return m, se, (m / se if se > 0 else float("nan"))


def _one_sample(v, threshold: float, sign: float) -> tuple[float, float, float]:
  """``sign * (mean - threshold)``, its standard error and z."""
  m, se = _mean_se(v)
  d = sign * (m - threshold)
  return d, se, (d / se if se > 0 else float("nan"))


def run(config: Config, workdir: str):
  flag_checks.check_config(config)
  ds = data.load_dataset(config.dataset)
  clips, noises, batches = _check(config, len(ds.x_train))
  flag_checks.check_same_run(workdir, dataclasses.asdict(config))
  os.makedirs(os.path.join(workdir, "units"), exist_ok=True)
  writer = train.MetricsWriter(os.path.join(workdir, "metrics.jsonl"))
  setup = _Setup(config, ds)
  thr = config.recovered_psnr

  single, reused = reporting.cached_unit(
    os.path.join(workdir, "units", "single.json"),
    lambda: _single_unit(config, setup, clips, noises),
  )
  if not reused:
    writer.write(
      {"step": config.num_steps, "unit": "single",
       **{f"{k}/psnr": float(np.mean(v["psnr"])) for k, v in single.items() if k != "truth"}}
    )  # fmt: skip
    print("one-digit arms: done", flush=True)
  batch = {}
  for b in batches:
    batch[b], reused = reporting.cached_unit(
      os.path.join(workdir, "units", f"batch_{b}.json"), lambda b=b: _batch_unit(config, setup, b)
    )
    if not reused:
      writer.write(
        {"step": config.num_steps, "unit": f"batch_{b}", "psnr": float(np.mean(batch[b]["psnr"]))}
      )
      print(f"batch {b}: done", flush=True)

  arms = {k: v for k, v in single.items() if k != "truth"}
  arms.update({f"batch {b}": v for b, v in batch.items()})
  rows = []
  for name, u in arms.items():
    clip = "" if u["clip"] is None else u["clip"]
    row = {"arm": name, "batch": u["batch"], "clip C": clip, "noise z": u["noise_multiplier"]}
    row["noise std"] = u["noise_std"]
    row["PSNR dB"], row["PSNR se"] = _mean_se(u["psnr"])
    row["MSE"] = float(np.mean(u["mse"]))
    row["recovered"] = float(np.mean(u["recovered"]))
    row["DLG label acc"] = float(np.mean(u["label_acc"]))
    one = "idlg_psnr" in u
    row["iDLG label acc"] = float(np.mean(u["idlg_label_acc"])) if one else ""
    row["iDLG PSNR dB"], row["iDLG se"] = _mean_se(u["idlg_psnr"]) if one else ("", "")
    row["iDLG recovered"] = float(np.mean(u["idlg_recovered"])) if one else ""
    row["analytic PSNR dB"], row["analytic se"] = _mean_se(u["analytic_psnr"]) if one else ("", "")
    row["analytic PSNR up to scale"] = float(np.mean(u["analytic_scaled_psnr"])) if one else ""
    row["matching loss"] = float(np.median(u["matching_loss"]))
    row["clip factor"] = (
      float(np.max(u["clip_factor"])) if name != "clean" and u["batch"] == 1 else ""
    )
    rows.append(row)

  lines = []
  clean = arms["clean"]
  d, se, z = _one_sample(clean["psnr"], thr, +1)
  lines.append(
    f"- DLG recovers single digits almost exactly (Zhu et al., Fig. 3): clean PSNR - {thr:g} dB = "
    f"{d:+.4g} +- {se:.2g} (z = {z:.1f}): **{reporting.verdict(z)}**; "
    f"{100 * np.mean(clean['recovered']):.0f}% of digits recovered."
  )
  d, se, z = _paired(clean["idlg_psnr"], clean["psnr"])
  lines.append(
    f"- iDLG reconstructs better than DLG (Zhao et al. 2020; its label is read off the "
    f"gradient): clean iDLG - DLG PSNR = {d:+.4g} +- {se:.2g} (z = {z:.1f}): "
    f"**{reporting.verdict(z)}**; iDLG recovers {100 * np.mean(clean['idlg_recovered']):.0f}% of "
    f"digits."
  )

  # DLG's text says "variance" (>= 1e-2: std >= 0.1); reading it as std >= 1e-2 is stricter
  def first_at(level):
    above = [n for n in noises if n * config.noise_clip >= level * (1 - 1e-9)]
    return min(above) if above else None

  tested = []
  for level, reading in ((1e-2, "std >= 0.01"), (1e-1, "variance >= 0.01 (std >= 0.1)")):
    n = first_at(level)
    if n is None or n in tested:
      continue
    tested.append(n)
    zname, std = f"noise {n:g}", n * config.noise_clip
    d, se, z = _one_sample(arms[zname]["psnr"], thr, -1)
    lines.append(
      f"- Noise of {reading} defeats DLG (Zhu et al., Fig. 7): at std {std:g} ({zname}), "
      f"{thr:g} dB - PSNR = {d:+.4g} +- {se:.2g} (z = {z:.1f}): **{reporting.verdict(z)}**; "
      f"{100 * np.mean(arms[zname]['recovered']):.0f}% of digits recovered."
    )
  big = batches[-1]
  xa, xb = np.asarray(clean["psnr"]), np.asarray(batch[big]["psnr"])
  d = xa.mean() - xb.mean()
  se = float(np.hypot(xa.std(ddof=1), xb.std(ddof=1)) / np.sqrt(len(xa)))
  z = d / se if se > 0 else float("nan")
  lines.append(
    f"- Larger batches degrade DLG (Zhu et al., Sec. 4): PSNR at batch 1 - at batch {big} = "
    f"{d:+.4g} +- {se:.2g} (z = {z:.1f}): **{reporting.verdict(z)}**."
  )
  tight = f"clip {min(clips):g}"
  d, se, z = _one_sample(arms[tight]["analytic_scaled_psnr"], thr, +1)
  lines.append(
    f"- Clipping without noise does not stop the leakage (DP practice, not DLG's claim; "
    f"measured on the analytic recovery up to one global scale, since per-layer clipping "
    f"rescales it): at {tight}, PSNR - {thr:g} dB = {d:+.4g} +- {se:.2g} (z = {z:.1f}): "
    f"**{reporting.verdict(z)}**; DLG itself reaches {_mean_se(arms[tight]['psnr'])[0]:.3g} dB "
    f"there, iDLG {_mean_se(arms[tight]['idlg_psnr'])[0]:.3g} dB."
  )
  acc = np.mean([a for u in arms.values() if "idlg_label_acc" in u for a in u["idlg_label_acc"]])
  worst = max(f for u in arms.values() if u["batch"] == 1 for f in u["clip_factor"])
  noise_factor = max(max(arms[f"noise {n:g}"]["clip_factor"]) for n in noises)
  lines.append(
    f"- Checks: the analytic first-layer recovery of a clean digit is exact to float32 "
    f"rounding (largest error {clean['analytic_max_error']:.2g}); iDLG's label is right on "
    f"{100 * acc:.0f}% of the one-digit attacks, every arm (Zhao et al. report 100%); the noise arms' clipping at "
    f"C = {config.noise_clip:g} {'does not bind' if noise_factor <= 1 else 'BINDS'} (largest "
    f"per-layer norm / budget {noise_factor:.3g}; {worst:.3g} over every clipped arm)."
  )

  import matplotlib.pyplot as plt  # noqa: PLC0415 - reporting sets the Agg backend

  fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), dpi=110)
  panels = [
    ("noise std (z C)", [(n * config.noise_clip, arms[f"noise {n:g}"]) for n in noises], True),
    ("clip norm C (no noise)", [(c, arms[f"clip {c:g}"]) for c in clips], True),
    ("batch size", [(1, clean)] + [(b, batch[b]) for b in batches], False),
  ]
  for ax, (label, pts, logx) in zip(axes, panels):
    xs = [p[0] for p in pts]
    stats = [_mean_se(p[1]["psnr"]) for p in pts]
    ax.errorbar(xs, [s[0] for s in stats], [2 * s[1] for s in stats], marker="o", label="DLG")
    if all("idlg_psnr" in p[1] for p in pts):
      i_stats = [_mean_se(p[1]["idlg_psnr"]) for p in pts]
      ax.errorbar(
        xs, [s[0] for s in i_stats], [2 * s[1] for s in i_stats], marker="^", label="iDLG"
      )
    if all("analytic_psnr" in p[1] for p in pts):
      a_stats = [_mean_se(p[1]["analytic_psnr"]) for p in pts]
      ax.errorbar(
        xs, [s[0] for s in a_stats], [2 * s[1] for s in a_stats], marker="s", label="analytic"
      )
    if all("analytic_scaled_psnr" in p[1] for p in pts) and label.startswith("clip"):
      s_stats = [_mean_se(p[1]["analytic_scaled_psnr"]) for p in pts]
      ax.errorbar(
        xs, [s[0] for s in s_stats], [2 * s[1] for s in s_stats], marker="s", ls=":",
        label="analytic, up to scale",
      )  # fmt: skip
    ax.axhline(thr, color="gray", ls="--", lw=1)
    if logx:
      ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("PSNR dB (+- 2 se)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  side = int(round(np.sqrt(setup.dim)))
  shown = [("truth", single["truth"]), ("clean", clean["example"])]
  shown += [(f"std {n * config.noise_clip:g}", arms[f"noise {n:g}"]["example"]) for n in noises]
  strip = np.concatenate([np.asarray(im).reshape(side, side) for _, im in shown], axis=1)
  axes[3].imshow(strip, cmap="gray_r", vmin=0, vmax=1)
  axes[3].set_title("seed 0: " + ", ".join(n for n, _ in shown), fontsize=7)
  axes[3].axis("off")
  fig.suptitle(f"DLG on {config.dataset}: reconstruction against defenses")
  fig.tight_layout()
  reporting.save_figure(fig, os.path.join(workdir, "gradient_inversion.png"))

  notes = (
    "Zhu et al. (DLG, NeurIPS 2019) recover MNIST digits pixel-accurately from one example's "
    "gradient and fail once Gaussian noise of scale 1e-2 is added; batches up to 8 are "
    "recovered with more iterations. Here: tanh MLP "
    f"{setup.dim}-{config.hidden}-{setup.num_classes} on {config.dataset} at initialization, "
    f"DLG with {config.optimizer} for {config.num_steps} steps ({config.num_restarts} "
    f"initialization(s)), {config.seeds} seeds per arm; noise arms clip at C = "
    f"{config.noise_clip:g} with std z C; PSNR per digit of the reconstruction clipped to [0, 1], "
    f"'recovered' = PSNR >= {thr:g} dB; se = standard error over seeds; matching loss = median "
    "final gradient distance. iDLG's label and the analytic recovery use one digit only.\n\n"
    + "\n".join(lines)
  )
  reporting.write_table(
    workdir, rows, title="Gradient inversion (DLG) against defenses", notes=notes
  )
  print(open(os.path.join(workdir, "results.md")).read())


if __name__ == "__main__":
  runner.main(run, Config, prog=PROG, workdir="runs/gradient_inversion")
