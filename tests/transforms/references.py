"""Line-by-line NumPy replays of the official code of each transform.

Each class mirrors the authors' PyTorch optimizer (or hook) loop: the same
state variables, the same order of in-place operations, the same counters.
``step(params, grads)`` returns the new parameters. They are deliberately
written like the originals, not like the JAX code under test.
"""

from __future__ import annotations

import math

import numpy as np


class SpamReference:
  """SPAM-Optimizer ``AdamW.step`` (dense path, no ``density`` groups)."""

  def __init__(
    self,
    lr,
    betas=(0.9, 0.999),
    eps=1e-6,
    warmup_steps=150,
    threshold=5000,
    DeltaT=500,
    grad_accu_steps=20,
  ):
    self.lr, self.betas, self.eps = lr, betas, eps
    self.total_step = 0
    self.current_step = warmup_steps + 1
    self.DeltaT, self.warmup_steps, self.thres = DeltaT, warmup_steps, threshold
    self.grad_accu_steps = grad_accu_steps
    self.state = {}

  def _get_dr(self, current_step):
    # CosineDecay(0.99, warmup_steps): CosineAnnealingLR(T_max=warmup_steps + 1), closed form.
    if current_step >= self.warmup_steps:
      return 0.0
    t_max = self.warmup_steps + 1
    return 0.99 * (1 + math.cos(math.pi * current_step / t_max)) / 2

  def step(self, params, grads):
    scale_factor = 1 - self._get_dr(self.current_step)
    out = {}
    for name, p in params.items():
      grad = grads[name].copy()
      state = self.state.setdefault(name, {"step": 0})
      if "exp_avg" not in state:
        state["exp_avg"] = np.zeros_like(grad)
        state["exp_avg_sq"] = np.zeros_like(grad)
      if (self.total_step + 1) % self.DeltaT == 0:
        state["exp_avg"] = np.zeros_like(grad)
        state["exp_avg_sq"] = np.zeros_like(grad)
      exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
      beta1, beta2 = self.betas
      state["step"] += 1
      if self.thres != 0:
        current_step = self.total_step + 1
        if current_step >= self.grad_accu_steps:
          mask = grad**2 > self.thres * exp_avg_sq
          if self.DeltaT != 0:
            if current_step % self.DeltaT >= self.grad_accu_steps:
              grad[mask] = np.sign(grad[mask]) * np.sqrt(exp_avg_sq[mask] * self.thres)
          else:
            grad[mask] = np.sign(grad[mask]) * np.sqrt(exp_avg_sq[mask] * self.thres)
      exp_avg *= beta1
      exp_avg += (1 - beta1) * grad
      exp_avg_sq *= beta2
      exp_avg_sq += (1 - beta2) * grad * grad
      denom = np.sqrt(exp_avg_sq) + self.eps
      step_size = self.lr
      bias_correction1 = 1.0 - beta1 ** state["step"]
      bias_correction2 = 1.0 - beta2 ** state["step"]
      step_size *= math.sqrt(bias_correction2) / bias_correction1
      norm_grad = exp_avg / denom
      out[name] = p - step_size * scale_factor * norm_grad
    self.total_step += 1
    self.current_step += 1
    if self.total_step != 0 and (self.total_step + 1) % self.DeltaT == 0:
      self.current_step = 0
    return out


class ZClipReference:
  """ZClip ``step`` in mode "zscore" (adaptive_scaling or mean)."""

  def __init__(
    self,
    alpha=0.97,
    z_thresh=2.5,
    max_grad_norm=None,
    eps=1e-6,
    warmup_steps=25,
    clip_option="adaptive_scaling",
    clip_factor=1.0,
    skip_update_on_spike=False,
  ):
    self.alpha, self.z_thresh, self.max_grad_norm, self.eps = alpha, z_thresh, max_grad_norm, eps
    self.warmup_steps, self.clip_option, self.clip_factor = warmup_steps, clip_option, clip_factor
    self.skip_update_on_spike = skip_update_on_spike
    self.buffer, self.initialized, self.mean, self.var = [], False, None, None

  def _initialize_ema(self):
    self.mean = sum(self.buffer) / len(self.buffer)
    self.var = sum((x - self.mean) ** 2 for x in self.buffer) / len(self.buffer)
    self.initialized = True
    self.buffer = []

  def _update_ema(self, grad_norm):
    self.mean = self.alpha * self.mean + (1 - self.alpha) * grad_norm
    self.var = self.alpha * self.var + (1 - self.alpha) * (grad_norm - self.mean) ** 2

  def _compute_clip_val(self, grad_norm):
    std = self.var**0.5
    z = (grad_norm - self.mean) / (std + self.eps)
    if z > self.z_thresh:
      if self.clip_option == "adaptive_scaling":
        eta = z / self.z_thresh
        threshold = self.mean + (self.z_thresh * std) / eta
        return threshold * self.clip_factor
      return self.mean
    return None

  @staticmethod
  def _clip(grads, total_norm, max_norm):
    coef = (max_norm / (total_norm + 1e-6)) if total_norm > max_norm else 1.0
    return {k: g * coef for k, g in grads.items()}

  def step(self, grads):
    total_norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    if not self.initialized:
      self.buffer.append(total_norm)
      if len(self.buffer) >= self.warmup_steps:
        self._initialize_ema()
      if self.max_grad_norm is not None:
        return self._clip(grads, total_norm, self.max_grad_norm)
      return grads
    clip_val = self._compute_clip_val(total_norm)
    adaptive = clip_val if clip_val is not None else total_norm
    effective = min(adaptive, self.max_grad_norm) if self.max_grad_norm is not None else adaptive
    out = self._clip(grads, total_norm, effective)
    if clip_val is not None and self.skip_update_on_spike:
      return out
    self._update_ema(clip_val if clip_val is not None else total_norm)
    return out


class DiffGradReference:
  """diffGrad_v2.py ``diffgrad.step``."""

  def __init__(self, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
    self.state = {}

  def step(self, params, grads):
    out = {}
    for name, p in params.items():
      grad = grads[name].copy()
      state = self.state.setdefault(name, {})
      if len(state) == 0:
        state["step"] = 0
        state["exp_avg"] = np.zeros_like(p)
        state["exp_avg_sq"] = np.zeros_like(p)
        state["previous_grad"] = np.zeros_like(p)
      exp_avg, exp_avg_sq, previous_grad = (
        state["exp_avg"],
        state["exp_avg_sq"],
        state["previous_grad"],
      )
      beta1, beta2 = self.betas
      state["step"] += 1
      if self.weight_decay != 0:
        grad = grad + self.weight_decay * p
      exp_avg *= beta1
      exp_avg += (1 - beta1) * grad
      exp_avg_sq *= beta2
      exp_avg_sq += (1 - beta2) * grad * grad
      denom = np.sqrt(exp_avg_sq) + self.eps
      bias_correction1 = 1 - beta1 ** state["step"]
      bias_correction2 = 1 - beta2 ** state["step"]
      diff = abs(previous_grad - grad)
      dfc = 1.0 / (1.0 + np.exp(-diff))
      state["previous_grad"] = grad.copy()
      exp_avg1 = exp_avg * dfc
      step_size = self.lr * math.sqrt(bias_correction2) / bias_correction1
      out[name] = p - step_size * exp_avg1 / denom
    return out


class ScaleReference:
  """SCALE ``step``: ``kinds[name]`` is 0 (main), 1 (secondary = last layer) or 2 (1-D).

  Weights are in torch layout ``[out, in]`` (normalized over dim 1).
  """

  def __init__(
    self, lr, kinds, weight_decay=0.0, momentum=0.9, adamw_betas=(0.9, 0.999), adamw_eps=1e-8
  ):
    self.lr, self.kinds, self.weight_decay, self.momentum = lr, kinds, weight_decay, momentum
    self.adamw_betas, self.adamw_eps = adamw_betas, adamw_eps
    self.state = {}

  def step(self, params, grads):
    out = {}
    lr, weight_decay = self.lr, self.weight_decay
    for name, p in params.items():
      if self.kinds[name] not in (0, 1):
        continue
      g = grads[name]
      state = self.state.setdefault(name, {})
      if self.kinds[name] == 1:
        if "moment1" not in state:
          state["moment1"] = np.zeros_like(g)
        buf1 = state["moment1"]
        buf1 += (g - buf1) * (1 - self.momentum)  # lerp_(g, 1 - beta1)
        g = buf1
      var = np.mean(np.square(g), axis=1, keepdims=True)
      s = np.maximum(np.sqrt(var), 1e-8)
      u = g / s
      p = p * (1 - lr * weight_decay)
      out[name] = p - lr * u
    beta1, beta2 = self.adamw_betas
    for name, p in params.items():
      if self.kinds[name] != 2:
        continue
      g = grads[name]
      state = self.state.setdefault(name, {})
      if "step" not in state:
        state["step"] = 0
        state["moment1"] = np.zeros_like(g)
        state["moment2"] = np.zeros_like(g)
      state["step"] += 1
      step = state["step"]
      buf1, buf2 = state["moment1"], state["moment2"]
      buf1 += (g - buf1) * (1 - beta1)
      buf2 += (np.square(g) - buf2) * (1 - beta2)
      g = buf1 / (self.adamw_eps + np.sqrt(buf2))
      scale = (1 - beta1**step) / (1 - beta2**step) ** 0.5
      p = p * (1 - lr * weight_decay)
      out[name] = p - lr / scale * g
    return out


class AgvmReference:
  """AgvmOptimizerHook with torch SGD(momentum): groups in order, group 0 the reference."""

  def __init__(
    self,
    lr,
    sgd_momentum,
    groups,
    lr_update_interval=5,
    lr_update_start_iter=500,
    lr_update_stop_iter=-1,
    momentum=0.97,
  ):
    self.lr, self.sgd_momentum, self.groups = lr, sgd_momentum, groups  # groups: list of name lists
    self.lr_update_interval, self.lr_update_start_iter = lr_update_interval, lr_update_start_iter
    self.lr_update_stop_iter = (
      lr_update_stop_iter if lr_update_stop_iter > lr_update_start_iter else 10e9
    )
    self.momentum = momentum
    self.scale_factors = [1.0] * len(groups)
    self.iter = 0
    self.bufs = {}

  def step(self, params, grads, grads_a, grads_b):
    if (
      self.lr_update_start_iter <= self.iter <= self.lr_update_stop_iter
      and self.iter % self.lr_update_interval == 0
    ):
      sims = []
      for names in self.groups:
        a = np.concatenate([grads_a[n].ravel() for n in names])
        b = np.concatenate([grads_b[n].ravel() for n in names])
        cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-8)
        sims.append(1 - cos)
      new = [math.sqrt(min(max((sims[0] + 1e-6) / (s + 1e-6), 0.5), 10.0)) for s in sims]
      self.scale_factors = [
        self.momentum * o + (1 - self.momentum) * n for o, n in zip(self.scale_factors, new)
      ]
    scaled = self.lr_update_start_iter <= self.iter <= self.lr_update_stop_iter
    out = {}
    for k, names in enumerate(self.groups):
      lr = self.lr * (self.scale_factors[k] if scaled else 1.0)
      for n in names:  # torch SGD with momentum, dampening 0
        if n not in self.bufs:
          self.bufs[n] = grads[n].copy()
        else:
          self.bufs[n] = self.sgd_momentum * self.bufs[n] + grads[n]
        out[n] = params[n] - lr * self.bufs[n]
    self.iter += 1
    return out


class MarsReference:
  """MARS ``step`` + ``update_fn`` with mars_type="mars-adamw", optimize_1d=True."""

  def __init__(self, lr, betas=(0.95, 0.99), eps=1e-8, weight_decay=0.0, gamma=0.025):
    self.lr, self.betas, self.eps, self.wd, self.gamma = lr, betas, eps, weight_decay, gamma
    self.state = {}

  def step(self, params, grads, last_grads=None):
    """``last_grads``: the exact version's g(x_{t-1}, xi_t); None for the approximate one."""
    out = {}
    beta1, beta2 = self.betas
    for name, p in params.items():
      grad = grads[name]
      state = self.state.setdefault(name, {})
      if len(state) <= 1:
        state["step"] = 0
        state["exp_avg"] = np.zeros_like(p)
        state["last_grad"] = np.zeros_like(p)
        state["exp_avg_sq"] = np.zeros_like(p)
      state["step"] += 1
      step = state["step"]
      last_grad = state["last_grad"] if last_grads is None else last_grads[name]
      c_t = (grad - last_grad) * (self.gamma * (beta1 / (1.0 - beta1))) + grad
      c_t_norm = np.linalg.norm(c_t)
      if c_t_norm > 1.0:
        c_t = c_t / c_t_norm
      exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
      exp_avg *= beta1
      exp_avg += (1.0 - beta1) * c_t
      exp_avg_sq *= beta2
      exp_avg_sq += (1.0 - beta2) * c_t * c_t
      bias_correction1 = 1.0 - beta1**step
      bias_correction2 = 1.0 - beta2**step
      denom = (
        np.sqrt(exp_avg_sq) * (1 / math.sqrt(bias_correction2)) + self.eps
      ) * bias_correction1
      out[name] = p + (-self.lr * (p * self.wd + exp_avg / denom))
      state["last_grad"] = grad
    return out


class StormReference:
  """STORM, Algorithm 1 of Cutkosky & Orabona (2019), with a = min(1, c eta^2)."""

  def __init__(self, k, w, c):
    self.k, self.w, self.c = k, w, c
    self.sum_sq = 0.0
    self.d = None
    self.eta = None

  def step(self, x, grad_at_x, grad_at_prev):
    """``grad_at_x = g(x_t, xi_t)``, ``grad_at_prev = g(x_{t-1}, xi_t)`` (ignored at t = 1)."""
    if self.d is None:
      self.d = grad_at_x.copy()
    else:
      a = min(1.0, self.c * self.eta**2)
      self.d = grad_at_x + (1 - a) * (self.d - grad_at_prev)
    self.sum_sq += float(np.sum(grad_at_x**2))
    self.eta = self.k / (self.w + self.sum_sq) ** (1 / 3)
    return x - self.eta * self.d


def quantize_blockwise_reference(x, code, blocksize):
  """bitsandbytes' ``_quantize_blockwise_pytorch`` in NumPy (argmin over the code)."""
  flat = x.reshape(-1).astype(np.float32)
  num_blocks = -(-flat.size // blocksize)
  flat = np.pad(flat, (0, num_blocks * blocksize - flat.size))
  blocks = flat.reshape(num_blocks, blocksize)
  absmax = np.max(np.abs(blocks), axis=1, keepdims=True)
  absmax[absmax == 0] = 1.0
  scaled = blocks / absmax
  idx = np.argmin(np.abs(scaled[:, :, None] - code[None, None, :]), axis=2).astype(np.uint8)
  return idx, absmax[:, 0]


def dequantize_blockwise_reference(idx, absmax, code, shape):
  values = code[idx.astype(np.int64)] * absmax[:, None]
  return values.reshape(-1)[: int(np.prod(shape))].reshape(shape)


class AdaHessianReference:
  """AdaHessian's ``get_trace`` + ``step`` (amirgholami/adahessian,
  ``image_classification/optim_adahessian.py``), torch layouts ([out, in, kh, kw] kernels).

  ``step(params, grads, hvp)``: ``hvp(v)`` is the Hessian of the batch loss at
  ``params`` times the probe ``v`` (the ``torch.autograd.grad(grads, params,
  grad_outputs=v)`` of the original); the probe is drawn here, as there.
  """

  def __init__(
    self, lr=0.15, betas=(0.9, 0.999), eps=1e-4, weight_decay=0, hessian_power=1, seed=0
  ):
    self.group = dict(
      lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, hessian_power=hessian_power
    )
    self.state = {}
    self.rng = np.random.default_rng(seed)

  def get_trace(self, params, hvp):
    v = {
      n: 2 * self.rng.integers(0, 2, size=p.shape).astype(p.dtype) - 1 for n, p in params.items()
    }
    hvs = hvp(v)
    hutchinson_trace = {}
    for n, hv in hvs.items():
      param_size = hv.shape
      if len(param_size) <= 2:  # for 0/1/2D tensor
        # Hessian diagonal block size is 1 here.
        # We use that torch.abs(hv * vi) = hv.abs()
        tmp_output = np.abs(hv)
      elif len(param_size) == 4:  # Conv kernel
        # Hessian diagonal block size is 9 here: torch.sum() reduces the dim 2/3.
        tmp_output = np.mean(np.abs(hv), axis=(2, 3), keepdims=True)
      hutchinson_trace[n] = tmp_output
    return hutchinson_trace

  def step(self, params, grads, hvp):
    group = self.group
    hut_traces = self.get_trace(params, hvp)
    out = {}
    for n, p in params.items():
      grad, hut_trace = grads[n], hut_traces[n]
      state = self.state.setdefault(n, {})
      if len(state) == 0:
        state["step"] = 0
        state["exp_avg"] = np.zeros_like(p)
        state["exp_hessian_diag_sq"] = np.zeros_like(p)
      exp_avg, exp_hessian_diag_sq = state["exp_avg"], state["exp_hessian_diag_sq"]
      beta1, beta2 = group["betas"]
      state["step"] += 1
      exp_avg *= beta1
      exp_avg += (1 - beta1) * grad
      exp_hessian_diag_sq *= beta2
      exp_hessian_diag_sq += (1 - beta2) * hut_trace * hut_trace  # broadcasts [o, i, 1, 1]
      bias_correction1 = 1 - beta1 ** state["step"]
      bias_correction2 = 1 - beta2 ** state["step"]
      k = group["hessian_power"]
      denom = (np.sqrt(exp_hessian_diag_sq) ** k) / math.sqrt(bias_correction2) ** k + group["eps"]
      out[n] = p - group["lr"] * (exp_avg / bias_correction1 / denom + group["weight_decay"] * p)
    return out


class SkipStepReference:
  """OLMo-core's ``SkipStepOptimizer`` rule (allenai/OLMo-core,
  ``src/olmo_core/optim/skip_step_optimizer.py``): the ``latest_loss`` and
  ``latest_grad_norm`` setters and ``get_step_factor``, with torch.std_mean's
  unbiased std."""

  def __init__(self, rolling_interval_length=128, sigma_factor=6):
    self.rolling_interval_length = rolling_interval_length
    self.sigma_factor = sigma_factor
    self._losses = []
    self._grad_norms = []

  def set_latest(self, loss, grad_norm):
    self._losses.append(loss)
    while len(self._losses) > self.rolling_interval_length + 1:
      self._losses.pop(0)
    if grad_norm is not None:
      self._grad_norms.append(grad_norm)
      while len(self._grad_norms) > self.rolling_interval_length + 1:
        self._grad_norms.pop(0)

  def get_step_factor(self, warmup=None):
    """``warmup``: the ``max(20, rolling_interval_length // 2)`` of the original, if None."""
    if warmup is None:
      warmup = max(20, self.rolling_interval_length // 2)
    if len(self._losses) < warmup:
      return 1.0
    loss_mean = np.mean(self._losses[:-1])
    loss_std = np.std(self._losses[:-1], ddof=1)
    latest_loss = self._losses[-1]
    if self._grad_norms:
      grad_norm_mean = np.mean(self._grad_norms[:-1])
      grad_norm_std = np.std(self._grad_norms[:-1], ddof=1)
      latest_grad_norm = self._grad_norms[-1]
      return float(
        ((latest_loss - loss_mean) <= self.sigma_factor * loss_std)
        and ((latest_grad_norm - grad_norm_mean) <= self.sigma_factor * grad_norm_std)
      )
    return float((latest_loss - loss_mean) <= self.sigma_factor * loss_std)
