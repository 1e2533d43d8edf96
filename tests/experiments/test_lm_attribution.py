"""The planted-facts corpus keeps its promises, and lm_attribution runs end to end in its
small setting with every method scored."""

import math

import numpy as np
import pytest

from experiments import lm_attribution
from gradlab import tasks
from tests.experiments.run_main import assert_flag_error


def _follows(seq, key, value, marker):
  """Positions where ``seq`` holds ``key`` then (the marker and) ``value``."""
  gap = 2 if marker >= 0 else 1
  return [
    i
    for i in range(len(seq) - gap)
    if seq[i] == key and seq[i + gap] == value and (gap == 1 or seq[i + 1] == marker)
  ]


@pytest.mark.parametrize(
  "kw",
  [
    {},
    {"marker": False, "facts_per_sequence": 3, "num_values": 5, "queries_per_fact": 2},
    {"fact_position": 3, "facts_per_sequence": 1, "filler_branching": None},
  ],
)
def test_planted_facts_sources_hold_their_facts_and_nothing_else_does(kw):
  c = tasks.planted_facts(num_train=150, num_facts=8, sources_per_fact=4, seed=3, **kw)
  n, t = c.train.shape
  fact_tokens = np.concatenate([c.keys, c.values] + ([[c.marker]] if c.marker >= 0 else []))
  assert c.queries.shape[1] == t and c.query_weights.shape == (len(c.queries), t - 1)
  assert c.keys.min() == c.num_filler + (c.marker >= 0) and c.values.min() > c.keys.max()
  assert c.vocab > max(c.train.max(), c.queries.max(), c.values.max())
  for f in range(len(c.keys)):
    holders = [j for j in range(n) if _follows(c.train[j], c.keys[f], c.values[f], c.marker)]
    assert holders == sorted(c.fact_sources[f].tolist())  # exactly its sources hold it
    assert len(set(holders)) == c.fact_sources.shape[1]
    # the key occurs nowhere but in its facts
    assert (c.train == c.keys[f]).sum() == len(holders)
  assert np.bincount(c.placements[:, 0], minlength=n).max() <= kw.get("facts_per_sequence", 2)
  # filler is filler: every token outside a planted span is below num_filler
  planted = np.zeros_like(c.train, bool)
  for j, _, start in c.placements:
    planted[j, start : start + c.span] = True
  assert (c.train[~planted] < c.num_filler).all()
  assert np.isin(c.train[planted], fact_tokens).all()
  for i, (seq, pos, f) in enumerate(zip(c.queries, c.query_position, c.query_fact)):
    prompt = seq[:pos]
    assert prompt[-c.span + 1] == c.keys[f] and seq[pos] == c.values[f]  # ends in the key
    assert (c.marker < 0) or prompt[-1] == c.marker
    assert c.query_weights[i].sum() == 1 and c.query_weights[i, pos - 1] == 1
    assert (c.sources[i] == c.fact_sources[f]).all()
  if "fact_position" in kw:
    assert (c.placements[:, 2] == kw["fact_position"]).all()


def test_planted_facts_is_deterministic_in_its_seed_and_refuses_bad_sizes():
  a, b = tasks.planted_facts(seed=5), tasks.planted_facts(seed=5)
  for field in ("train", "queries", "sources", "keys", "values", "placements"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert not np.array_equal(a.train, tasks.planted_facts(seed=6).train)
  with pytest.raises(ValueError, match="^sources_per_fact: "):
    tasks.planted_facts(num_train=10, num_facts=4, sources_per_fact=3)
  with pytest.raises(ValueError, match="^facts_per_sequence: "):
    tasks.planted_facts(fact_position=3, facts_per_sequence=2)
  with pytest.raises(ValueError, match="^filler_branching: "):
    tasks.planted_facts(num_filler=4, filler_branching=5)


def test_lm_attribution_small_setting_scores_every_method(tmp_path):
  config = lm_attribution.Config(**lm_attribution.SMALL)
  out = lm_attribution.run(config, str(tmp_path))
  rows = {r["method"]: r for r in out["rows"]}
  assert set(rows) == set(lm_attribution.METHODS)
  n, q, s = out["num_train"], out["num_queries"], out["sources_per_fact"]
  for r in rows.values():
    assert all(math.isfinite(r[f"recall@{k}"]) for k in out["recall_k"]), r
    assert -1 <= r["LDS"] <= 1, r
  assert rows["planted"][f"recall@{s}"] == 1.0
  assert out["query_accuracy"] >= 0.5  # most facts are learned (chance: 1 / vocab)
  # Random scores: a query's hits among its top s are hypergeometric (n, s sources, s draws),
  # variance at most s^2 / n, so random's recall@s averaged over q queries has mean
  # chance = s / n and std at most sqrt(chance / (s q)); EK-FAC must clear 6 of those.
  chance = s / n
  assert rows["ekfac"][f"recall@{s}"] > chance + 6 * math.sqrt(chance / (s * q))
  assert rows["ekfac"]["LDS"] > 0.2
  text = (tmp_path / "results.md").read_text()
  assert "LM attribution with planted facts" in text and "Query accuracy" in text
  assert (tmp_path / "attribution.png").stat().st_size > 0
  assert (tmp_path / "ekfac_damping.csv").exists()


def test_lm_attribution_refuses_a_bad_flag_before_writing(tmp_path):
  assert_flag_error("lm_attribution", tmp_path, "--checkpoints=7", "--checkpoints must be")
  assert_flag_error("lm_attribution", tmp_path, "--ekfac_sweep=", "--ekfac_sweep must be")
