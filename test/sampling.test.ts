import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { SamplingOptions } from '../src/runtime/engine.ts';
import { Sampler, samplingDistribution } from '../src/runtime/sampling.ts';
import { rng } from './helpers.ts';

function naiveArgmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 0; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Logits with ties: normal values rounded to `step` (0 = no rounding). */
function randomLogits(random: ReturnType<typeof rng>, n: number, step: number): Float32Array {
  const logits = random.normal(n, 3);
  if (step > 0) for (let i = 0; i < n; i++) logits[i] = Math.round(logits[i] / step) * step;
  return logits;
}

/** The filters written out straightforwardly: full sort, HF's order, renormalizing after each filter. */
function naiveDistribution(logits: Float32Array, opts: SamplingOptions, history: number[]) {
  const penalty = opts.repetitionPenalty ?? 1;
  const values = Array.from(logits);
  for (const id of new Set(history)) {
    values[id] = Math.fround(logits[id] > 0 ? logits[id] / penalty : logits[id] * penalty);
  }
  const temperature = opts.temperature ?? 1;
  const scaled = values.map((v) => v / temperature);
  const max = Math.max(...scaled);
  let tokens = scaled.map((v, id) => ({ id, p: Math.exp(v - max) }));
  tokens.sort((a, b) => b.p - a.p || a.id - b.id);
  const normalize = () => {
    const sum = tokens.reduce((s, t) => s + t.p, 0);
    tokens = tokens.map((t) => ({ id: t.id, p: t.p / sum }));
  };
  normalize();
  if (opts.topK) tokens = tokens.slice(0, opts.topK);
  normalize();
  const topP = opts.topP ?? 1;
  let cumulative = 0;
  let keep = tokens.length;
  // (topP 1 keeps all: rounding may make the sum reach 1 before the last, tiniest tokens)
  for (let j = 0; j < tokens.length && topP < 1; j++) {
    cumulative += tokens[j].p;
    if (cumulative >= topP) {
      keep = j + 1;
      break;
    }
  }
  tokens = tokens.slice(0, keep);
  normalize();
  const top = tokens[0].p;
  tokens = tokens.filter((t) => t.p >= (opts.minP ?? 0) * top);
  normalize();
  return new Map(tokens.map((t) => [t.id, t.p]));
}

function naivePenalized(logits: Float32Array, penalty: number, history: number[]): Float32Array {
  const out = logits.slice();
  for (const id of history) out[id] = logits[id] > 0 ? logits[id] / penalty : logits[id] * penalty;
  return out;
}

/** Asserts samplingDistribution = naiveDistribution; returns how many tokens it keeps. */
function assertNaiveDistribution(
  logits: Float32Array,
  opts: SamplingOptions,
  history: number[],
  label: string,
) {
  const got = asMap(samplingDistribution(logits, opts, history));
  const expected = naiveDistribution(logits, opts, history);
  const sorted = (ids: Iterable<number>) => [...ids].sort((a, b) => a - b);
  assert.deepEqual(sorted(got.keys()), sorted(expected.keys()), label);
  for (const [id, p] of expected) assert.ok(Math.abs(got.get(id)! - p) < 1e-12, label);
  return got.size;
}

function asMap(dist: { ids: Int32Array; probs: Float64Array }): Map<number, number> {
  return new Map(Array.from(dist.ids, (id, j) => [id, dist.probs[j]]));
}

test('greedy is the argmax (lowest id on ties) and leaves the logits alone', () => {
  const random = rng(1);
  for (let trial = 0; trial < 200; trial++) {
    const vocab = 50 + Math.floor(random.uniform() * 500);
    const logits = randomLogits(random, vocab, trial % 2 ? 1 : 0);
    const tieAt = Math.floor(random.uniform() * vocab);
    logits[tieAt] = Math.max(...logits);
    const copy = logits.slice();
    const expected = naiveArgmax(logits);
    for (const opts of [{}, { seed: trial }, { temperature: 0, topK: 3, topP: 0.5 }]) {
      assert.equal(new Sampler(opts, vocab).next(logits, []), expected);
      assert.deepEqual(asMap(samplingDistribution(logits, opts)), new Map([[expected, 1]]));
    }
    const history = [expected, tieAt, 0];
    const penalized = new Sampler({ repetitionPenalty: 1.5 }, vocab).next(logits, history);
    assert.equal(penalized, naiveArgmax(naivePenalized(logits, 1.5, history)));
    assert.deepEqual(logits, copy);
  }
});

test('repetition penalty divides positive logits, multiplies the others, once per distinct id', () => {
  const logits = Float32Array.of(2, -1, 0.5, 3, -2, 0);
  const copy = logits.slice();
  const history = [3, 3, 1, 5, 3];
  // by hand, penalty 2: 3 -> 1.5, -1 -> -2, 0 -> 0
  const penalized = [2, -2, 0.5, 1.5, -2, 0];
  assert.equal(new Sampler({ repetitionPenalty: 2 }, 6).next(logits, history), 0);
  assert.equal(new Sampler({}, 6).next(logits, history), 3);
  const dist = asMap(samplingDistribution(logits, { temperature: 1, repetitionPenalty: 2 }, history));
  const sum = penalized.reduce((s, v) => s + Math.exp(v), 0);
  for (let id = 0; id < 6; id++) assert.ok(Math.abs(dist.get(id)! - Math.exp(penalized[id]) / sum) < 1e-12);
  // a penalty below 1 favours repeats
  assert.equal(new Sampler({ repetitionPenalty: 0.5 }, 6).next(logits, [2]), 3);
  assert.equal(new Sampler({ repetitionPenalty: 0.1 }, 6).next(logits, [2]), 2);
  assert.deepEqual(logits, copy);
});

test('temperature defaults to 1 once any filter is given', () => {
  const logits = Float32Array.of(1, 2, 0.5);
  const sum = Math.exp(1) + Math.exp(2) + Math.exp(0.5);
  const dist = asMap(samplingDistribution(logits, { topP: 1 }));
  for (const [id, v] of [1, 2, 0.5].entries()) assert.ok(Math.abs(dist.get(id)! - Math.exp(v) / sum) < 1e-12);
  assert.equal(asMap(samplingDistribution(logits, { repetitionPenalty: 1.2 })).size, 1);
});

test('samplingDistribution matches a naive full-sort implementation', () => {
  const random = rng(2);
  const pick = <T>(values: T[]): T => values[Math.floor(random.uniform() * values.length)];
  for (let trial = 0; trial < 400; trial++) {
    const vocab = pick([5, 40, 300, 2000]);
    const logits = randomLogits(random, vocab, pick([0, 0.5, 2]));
    const opts: SamplingOptions = {
      temperature: pick([undefined, 0.3, 0.7, 1, 1.8]),
      topK: pick([undefined, 0, 1, 3, 10, vocab, vocab + 5]),
      topP: pick([undefined, 0.2, 0.6, 0.95, 1]),
      minP: pick([undefined, 0, 0.05, 0.3]),
      repetitionPenalty: pick([undefined, 1.3, 0.8]),
    };
    opts.temperature ??= 1;
    const history = Array.from({ length: pick([0, 3, 20]) }, () => Math.floor(random.uniform() * vocab));
    assertNaiveDistribution(logits, opts, history, JSON.stringify({ trial, opts }));
  }
});

test('top-p over a whole large vocabulary, nuclei of one token to thousands', () => {
  const random = rng(7);
  const sizes: number[] = [];
  for (const std of [0.3, 1, 2, 4, 8]) {
    for (const topP of [0.5, 0.9, 0.99]) {
      const logits = randomLogits(random, 5000, 0).map((v) => (v * std) / 3);
      sizes.push(assertNaiveDistribution(logits, { topP }, [], JSON.stringify({ std, topP })));
    }
  }
  assert.ok(
    Math.min(...sizes) < 64 && sizes.some((n) => n > 64 && n < 512) && Math.max(...sizes) > 4096,
    `${sizes}`,
  );
});

test('the filters keep what they promise on a small hand-checked case', () => {
  // probabilities at temperature 1 of logits ln(0.5), ln(0.3), ln(0.15), ln(0.05)
  const logits = Float32Array.from([0.5, 0.3, 0.15, 0.05], Math.log);
  const ids = (opts: SamplingOptions) => [...samplingDistribution(logits, opts).ids].sort((a, b) => a - b);
  assert.deepEqual(ids({ topK: 2 }), [0, 1]);
  assert.deepEqual(ids({ topP: 0.45 }), [0]);
  assert.deepEqual(ids({ topP: 0.81 }), [0, 1, 2]);
  assert.deepEqual(ids({ minP: 0.31 }), [0, 1]);
  assert.deepEqual(ids({ minP: 0.29 }), [0, 1, 2]);
  // top-p acts on the top-k distribution renormalized: 0.5 / 0.8 = 0.625 >= 0.6
  assert.deepEqual(ids({ topK: 2, topP: 0.6 }), [0]);
  const dist = samplingDistribution(logits, { topK: 2 });
  assert.ok(Math.abs(dist.probs[dist.ids.indexOf(0)] - 0.625) < 1e-6);
});

test('draws at temperature 0.7, top-k 5 follow the distribution (4 sigma)', () => {
  const logits = randomLogits(rng(3), 64, 0);
  const opts = { temperature: 0.7, topK: 5, seed: 11 };
  const dist = asMap(samplingDistribution(logits, opts));
  assert.equal(dist.size, 5);
  const sampler = new Sampler(opts, 64);
  const draws = 20000;
  const counts = new Map<number, number>();
  for (let i = 0; i < draws; i++) {
    const id = sampler.next(logits, []);
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  for (const id of counts.keys()) assert.ok(dist.has(id), `drew ${id}, outside the top 5`);
  for (const [id, p] of dist) {
    const sigma = Math.sqrt(draws * p * (1 - p));
    const count = counts.get(id) ?? 0;
    assert.ok(Math.abs(count - draws * p) <= 4 * sigma, `id ${id}: ${count} draws, expected ${draws * p}`);
  }
});

test('same seed, same tokens; another seed or none, other tokens', () => {
  const random = rng(4);
  const steps = Array.from({ length: 60 }, () => randomLogits(random, 500, 0).map((v) => v / 6));
  const run = (opts: SamplingOptions) => {
    const sampler = new Sampler({ temperature: 1, topP: 0.98, ...opts }, 500);
    const out: number[] = [];
    for (const logits of steps) out.push(sampler.next(logits, out));
    return out;
  };
  assert.deepEqual(run({ seed: 7 }), run({ seed: 7 }));
  assert.notDeepEqual(run({ seed: 7 }), run({ seed: 8 }));
  assert.notDeepEqual(run({}), run({}));
});

test('bad options fail with a message naming the option', () => {
  const cases: [SamplingOptions, string][] = [
    [{ temperature: -1 }, 'temperature must be a number >= 0, got -1'],
    [{ temperature: Number.NaN }, 'temperature must be a number >= 0, got NaN'],
    [{ temperature: Number.POSITIVE_INFINITY }, 'temperature must be a number >= 0, got Infinity'],
    [{ topK: 1.5 }, 'topK must be an integer >= 0, got 1.5'],
    [{ topK: -2 }, 'topK must be an integer >= 0, got -2'],
    [{ topP: 0 }, 'topP must be a number in (0, 1], got 0'],
    [{ topP: 1.01 }, 'topP must be a number in (0, 1], got 1.01'],
    [{ minP: -0.1 }, 'minP must be a number in [0, 1], got -0.1'],
    [{ minP: 2 }, 'minP must be a number in [0, 1], got 2'],
    [{ repetitionPenalty: 0 }, 'repetitionPenalty must be a number > 0, got 0'],
    [{ seed: 0.5 }, 'seed must be an integer, got 0.5'],
    [{ topP: '0.5' as unknown as number }, 'topP must be a number in (0, 1], got 0.5'],
  ];
  for (const [opts, message] of cases) {
    assert.throws(() => new Sampler(opts, 10), { name: 'UserError', message });
    assert.throws(() => samplingDistribution(new Float32Array(10), opts), { name: 'UserError', message });
  }
  assert.doesNotThrow(() => new Sampler({ temperature: 0, topK: 0, topP: 1, minP: 0, seed: -3 }, 10));
});
