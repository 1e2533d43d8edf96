"""A language-modelling corpus with planted facts: which training sequences teach what is known.

The vocabulary is ``num_filler`` filler tokens, an optional marker, one key per
fact and ``num_values`` value tokens, in that order. Fact f maps its key
``keys[f]`` to ``values[f]`` (distinct values while ``num_facts <=
num_values``, else each value shared by as few facts as possible). A training
sequence is filler, a Markov chain in which every filler token has
``filler_branching`` equally likely successors (``None``: i.i.d. uniform), and,
for the sequences chosen as a fact's sources, the fact written over it once:
the key followed by its value (``key value``, or ``key marker value`` with the
marker). Every fact is planted in exactly ``sources_per_fact`` distinct
sequences, chosen at random among those with room; a sequence holds at most
``facts_per_sequence`` facts, at non-overlapping random positions (or every
fact's key at ``fact_position``, one fact per sequence), and most hold none. Key, marker and value
tokens occur nowhere else, so the value after a key can only be learned from
that fact's sources.

A query is a filler prompt of ``prompt_length`` tokens ending in a key (and the
marker) whose completion, at ``query_position``, is the key's value; it is
padded with filler to the training length, so train and query sequences share
one shape. ``sources[q]`` are the indices of the training sequences that
planted query q's fact: the examples a correct attribution should rank first.
Everything is NumPy, deterministic in ``seed``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gradlab import _checks


@dataclasses.dataclass(frozen=True)
class PlantedFacts:
  """A planted-facts corpus (:func:`planted_facts`); token arrays are int32.

  Attributes:
    train: ``[num_train, length]`` training sequences.
    queries: ``[num_queries, length]`` query sequences (prompt, value, filler).
    query_position: ``[num_queries]`` index of the value token in each query:
      the completion is predicted from ``queries[q, :query_position[q]]``.
    query_weights: ``[num_queries, length - 1]`` float32 next-token weights, 1
      on the completion (position ``query_position - 1``) and 0 elsewhere.
    query_fact: ``[num_queries]`` the fact each query asks for.
    sources: ``[num_queries, sources_per_fact]`` sorted training indices of the
      sequences that planted the query's fact.
    fact_sources: ``[num_facts, sources_per_fact]`` the same per fact.
    placements: ``[num_placements, 3]`` rows ``(sequence, fact, key position)``
      of every planted fact.
    keys, values: ``[num_facts]`` each fact's key and value tokens.
    marker: the marker token, or -1 without one.
    num_filler: filler tokens are ``0 .. num_filler - 1``.
    vocab: the vocabulary size.
  """

  train: np.ndarray
  queries: np.ndarray
  query_position: np.ndarray
  query_weights: np.ndarray
  query_fact: np.ndarray
  sources: np.ndarray
  fact_sources: np.ndarray
  placements: np.ndarray
  keys: np.ndarray
  values: np.ndarray
  marker: int
  num_filler: int
  vocab: int

  @property
  def span(self) -> int:
    """Tokens a planted fact occupies: 2 (key, value) or 3 (key, marker, value)."""
    return 3 if self.marker >= 0 else 2


def _write(seq: np.ndarray, start: int, key: int, value: int, marker: int) -> None:
  seq[start] = key
  if marker >= 0:
    seq[start + 1] = marker
    seq[start + 2] = value
  else:
    seq[start + 1] = value


def planted_facts(
  *,
  num_train: int = 400,
  length: int = 20,
  num_filler: int = 31,
  num_facts: int = 16,
  num_values: int = 16,
  sources_per_fact: int = 4,
  facts_per_sequence: int = 2,
  filler_branching: int | None = 3,
  fact_position: int | None = None,
  marker: bool = True,
  queries_per_fact: int = 1,
  prompt_length: int = 4,
  seed: int = 0,
) -> PlantedFacts:
  """A planted-facts corpus (see the module docstring).

  Args:
    num_train: training sequences.
    length: tokens per sequence (train and query alike).
    num_filler: filler tokens.
    num_facts: facts, one key each.
    num_values: value tokens.
    sources_per_fact: training sequences that plant each fact
      (``num_facts * sources_per_fact <= num_train``).
    facts_per_sequence: the most facts one training sequence holds.
    filler_branching: successors of each filler token in the filler chain
      (``None``: every filler token, i.e. i.i.d. uniform filler).
    fact_position: the key's position in every planted fact (then one fact
      per sequence); ``None``: random non-overlapping positions.
    marker: write ``key marker value`` (the value is then predicted through
      attention to the key) instead of ``key value``.
    queries_per_fact: queries per fact, each with its own filler prompt.
    prompt_length: query tokens up to and including the key.
    seed: the NumPy seed; the same arguments give the same corpus.
  """
  n = _checks.integer("num_train", num_train, minimum=1)
  t = _checks.integer("length", length, minimum=2)
  num_filler = _checks.integer("num_filler", num_filler, minimum=1)
  f = _checks.integer("num_facts", num_facts, minimum=1)
  v = _checks.integer("num_values", num_values, minimum=1)
  s = _checks.integer("sources_per_fact", sources_per_fact, minimum=1)
  m = _checks.integer("facts_per_sequence", facts_per_sequence, minimum=1)
  qpf = _checks.integer("queries_per_fact", queries_per_fact, minimum=1)
  p = _checks.integer("prompt_length", prompt_length, minimum=1)
  seed = _checks.integer("seed", seed, minimum=0)
  b = num_filler if filler_branching is None else filler_branching
  b = _checks.integer("filler_branching", b, minimum=1)
  if b > num_filler:
    raise ValueError(f"filler_branching: {b} exceeds num_filler={num_filler}")
  span = 3 if marker else 2
  if f * s > n:
    raise ValueError(f"sources_per_fact: {f} facts x {s} sources exceed num_train={n}")
  if m * span > t:
    raise ValueError(f"facts_per_sequence: {m} facts of {span} tokens exceed length={t}")
  if fact_position is not None:
    fact_position = _checks.integer("fact_position", fact_position, minimum=0)
    if fact_position + span > t:
      raise ValueError(f"fact_position: a fact at {fact_position} runs past length={t}")
    if m != 1:
      raise ValueError(f"facts_per_sequence: expected 1 with a fact_position, got {m}")
  if p + span - 1 > t:
    raise ValueError(f"prompt_length: {p} tokens and the completion exceed length={t}")

  rng = np.random.default_rng(seed)
  successors = np.stack([rng.choice(num_filler, b, replace=False) for _ in range(num_filler)])

  def filler(rows: int) -> np.ndarray:
    out = np.zeros((rows, t), np.int32)
    out[:, 0] = rng.integers(0, num_filler, rows)
    for i in range(1, t):
      out[:, i] = successors[out[:, i - 1], rng.integers(0, b, rows)]
    return out

  mark = num_filler if marker else -1
  first_key = num_filler + int(marker)
  keys = (first_key + np.arange(f)).astype(np.int32)
  values = (first_key + f + rng.permutation(np.resize(rng.permutation(v), f))).astype(np.int32)
  vocab = first_key + f + v

  # Sources: for each fact, s distinct sequences among those with room. At most
  # (f - 1) s placements precede a fact's, so at least n - (f - 1) s >= s have room.
  load = np.zeros(n, np.int64)
  fact_sources = np.zeros((f, s), np.int64)
  held: list[list[int]] = [[] for _ in range(n)]
  for fact in range(f):
    chosen = np.sort(rng.choice(np.flatnonzero(load < m), s, replace=False))
    fact_sources[fact] = chosen
    load[chosen] += 1
    for j in chosen:
      held[j].append(fact)

  train = filler(n)
  placements = []
  for j in range(n):
    facts = rng.permutation(held[j])
    c = len(facts)
    if not c:
      continue
    # c non-overlapping spans: sorted offsets r_i in [0, t - c (span - 1)), start r_i + i (span - 1)
    r = np.sort(rng.choice(t - c * (span - 1), c, replace=False))
    for i, fact in enumerate(facts):
      start = int(r[i]) + i * (span - 1) if fact_position is None else fact_position
      _write(train[j], start, int(keys[fact]), int(values[fact]), mark)
      placements.append((j, int(fact), start))

  query_fact = np.repeat(np.arange(f), qpf).astype(np.int32)
  q = len(query_fact)
  queries = filler(q)
  for i, fact in enumerate(query_fact):
    _write(queries[i], p - 1, int(keys[fact]), int(values[fact]), mark)
  position = np.full(q, p - 1 + span - 1, np.int32)
  weights = np.zeros((q, t - 1), np.float32)
  weights[np.arange(q), position - 1] = 1.0
  return PlantedFacts(
    train=train,
    queries=queries,
    query_position=position,
    query_weights=weights,
    query_fact=query_fact,
    sources=fact_sources[query_fact].astype(np.int32),
    fact_sources=fact_sources.astype(np.int32),
    placements=np.asarray(placements, np.int32).reshape(-1, 3),
    keys=keys,
    values=values,
    marker=mark,
    num_filler=num_filler,
    vocab=vocab,
  )
