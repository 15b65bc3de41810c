/**
 * Token choice from a model's logits, in the order of HF's generate: repetition penalty, then either
 * argmax (temperature 0) or temperature, softmax, top-k, top-p, min-p and a draw from a seeded
 * mulberry32. Top-p and min-p act on the distribution that the filters before them left, renormalized.
 */
import { mulberry32, type Rng } from '../calib/rng.ts';
import { fail } from '../errors.ts';
import type { SamplingOptions } from './engine.ts';

interface SamplingSettings {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repetitionPenalty: number;
}

function checkOption(name: string, value: number | undefined, ok: (v: number) => boolean, expected: string) {
  if (value !== undefined && !(typeof value === 'number' && Number.isFinite(value) && ok(value))) {
    fail(`${name} must be ${expected}, got ${String(value)}`);
  }
}

function resolveSettings(opts: SamplingOptions): SamplingSettings {
  checkOption('temperature', opts.temperature, (v) => v >= 0, 'a number >= 0');
  checkOption('topK', opts.topK, (v) => Number.isInteger(v) && v >= 0, 'an integer >= 0');
  checkOption('topP', opts.topP, (v) => v > 0 && v <= 1, 'a number in (0, 1]');
  checkOption('minP', opts.minP, (v) => v >= 0 && v <= 1, 'a number in [0, 1]');
  checkOption('repetitionPenalty', opts.repetitionPenalty, (v) => v > 0, 'a number > 0');
  checkOption('seed', opts.seed, Number.isInteger, 'an integer');
  const filtered = [opts.temperature, opts.topK, opts.topP, opts.minP].some((v) => v !== undefined);
  return {
    temperature: opts.temperature ?? (filtered ? 1 : 0),
    topK: opts.topK ?? 0,
    topP: opts.topP ?? 1,
    minP: opts.minP ?? 0,
    repetitionPenalty: opts.repetitionPenalty ?? 1,
  };
}

/** Buffers of one vocabulary's size, reused token after token. */
class Workspace {
  readonly penalized: Float32Array;
  /** exp(logit / temperature - max), by id */
  readonly weights: Float64Array;
  /** ids; the kept ones first */
  readonly order: Int32Array;

  constructor(vocabSize: number) {
    this.penalized = new Float32Array(vocabSize);
    this.weights = new Float64Array(vocabSize);
    this.order = new Int32Array(vocabSize);
  }
}

/**
 * The logits after the repetition penalty (HF's RepetitionPenaltyLogitsProcessor): `logits` itself when
 * nothing changes, else a copy. Each penalized value is computed from the original, so an id that occurs
 * several times in the history is penalized once.
 */
function penalize(
  logits: Float32Array,
  penalty: number,
  history: ArrayLike<number>,
  ws: Workspace,
): Float32Array {
  if (penalty === 1 || history.length === 0) return logits;
  const out = ws.penalized;
  out.set(logits);
  for (let i = 0; i < history.length; i++) {
    const id = history[i];
    // ids the logits do not cover (a tokenizer's extra added tokens) have nothing to penalize
    if (id < 0 || id >= logits.length) continue;
    const x = logits[id];
    out[id] = x > 0 ? x / penalty : x * penalty;
  }
  return out;
}

/** The first index of the largest value. */
function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Token a before token b: more probable, or as probable and a lower id. */
function ranksAbove(weights: Float64Array, a: number, b: number): boolean {
  return weights[a] > weights[b] || (weights[a] === weights[b] && a < b);
}

function byRank(weights: Float64Array): (a: number, b: number) => number {
  return (a, b) => weights[b] - weights[a] || a - b;
}

/** Restores the heap order below `i` in a heap whose root is its lowest-ranked token. */
function siftDown(weights: Float64Array, heap: Int32Array, i: number): void {
  for (;;) {
    const left = 2 * i + 1;
    let lowest = i;
    if (left < heap.length && ranksAbove(weights, heap[lowest], heap[left])) lowest = left;
    if (left + 1 < heap.length && ranksAbove(weights, heap[lowest], heap[left + 1])) lowest = left + 1;
    if (lowest === i) return;
    [heap[i], heap[lowest]] = [heap[lowest], heap[i]];
    i = lowest;
  }
}

/** The k top-ranked ids into order[0..k), best first: a heap of the best k so far, O(vocab log k). */
function selectTop(weights: Float64Array, k: number, order: Int32Array): void {
  const heap = order.subarray(0, k);
  for (let id = 0; id < k; id++) heap[id] = id;
  for (let i = (k >> 1) - 1; i >= 0; i--) siftDown(weights, heap, i);
  for (let id = k; id < weights.length; id++) {
    if (!ranksAbove(weights, id, heap[0])) continue;
    heap[0] = id;
    siftDown(weights, heap, 0);
  }
  heap.sort(byRank(weights));
}

function sortAll(weights: Float64Array, order: Int32Array): void {
  for (let id = 0; id < order.length; id++) order[id] = id;
  order.sort(byRank(weights));
}

function massOf(weights: Float64Array, order: Int32Array, count: number): number {
  let mass = 0;
  for (let j = 0; j < count; j++) mass += weights[order[j]];
  return mass;
}

/** How many of the ranked order[0..count) make the smallest prefix whose weight reaches `target`. */
function nucleusSize(weights: Float64Array, order: Int32Array, count: number, target: number): number {
  let cumulative = 0;
  for (let j = 0; j < count; j++) {
    cumulative += weights[order[j]];
    if (cumulative >= target) return j + 1;
  }
  return count;
}

/**
 * Top-p over the whole vocabulary: ranks the top k for growing k until they hold the fraction topP of
 * the weight, so that a peaked distribution (the usual case) does not sort the whole vocabulary.
 */
function nucleusOfAll(weights: Float64Array, order: Int32Array, topP: number): number {
  let total = 0;
  for (let id = 0; id < weights.length; id++) total += weights[id];
  const target = topP * total;
  for (let k = 64; k < weights.length; k *= 8) {
    selectTop(weights, k, order);
    if (massOf(weights, order, k) >= target) return nucleusSize(weights, order, k, target);
  }
  sortAll(weights, order);
  return nucleusSize(weights, order, weights.length, target);
}

/** Compacts order[0..count) to the ids whose weight is at least minP x the largest; returns how many. */
function keepAboveMinP(weights: Float64Array, order: Int32Array, count: number, minP: number): number {
  let largest = 0;
  for (let j = 0; j < count; j++) largest = Math.max(largest, weights[order[j]]);
  const floor = minP * largest;
  let kept = 0;
  for (let j = 0; j < count; j++) if (weights[order[j]] >= floor) order[kept++] = order[j];
  return kept;
}

/**
 * Fills ws.weights with the unnormalized probabilities and puts the ids that survive top-k, top-p and
 * min-p first in ws.order; returns how many survive.
 */
function keptTokens(logits: Float32Array, s: SamplingSettings, ws: Workspace): number {
  const { weights, order } = ws;
  const vocab = logits.length;
  let max = -Infinity;
  for (let i = 0; i < vocab; i++) max = Math.max(max, logits[i] / s.temperature);
  for (let i = 0; i < vocab; i++) weights[i] = Math.exp(logits[i] / s.temperature - max);
  let count = vocab;
  if (s.topK > 0 && s.topK < vocab) {
    selectTop(weights, s.topK, order);
    count = s.topK;
    if (s.topP < 1) count = nucleusSize(weights, order, count, s.topP * massOf(weights, order, count));
  } else if (s.topP < 1) count = nucleusOfAll(weights, order, s.topP);
  else for (let id = 0; id < vocab; id++) order[id] = id;
  if (s.minP > 0) count = keepAboveMinP(weights, order, count, s.minP);
  return count;
}

/**
 * The distribution a Sampler draws from for these logits: the kept ids and their renormalized
 * probabilities (greedy: the argmax with probability 1). Ids in no promised order.
 */
export function samplingDistribution(
  logits: Float32Array,
  opts: SamplingOptions,
  history: ArrayLike<number> = [],
): { ids: Int32Array; probs: Float64Array } {
  const settings = resolveSettings(opts);
  const ws = new Workspace(logits.length);
  const penalized = penalize(logits, settings.repetitionPenalty, history, ws);
  if (settings.temperature === 0) return { ids: Int32Array.of(argmax(penalized)), probs: Float64Array.of(1) };
  const count = keptTokens(penalized, settings, ws);
  const ids = ws.order.slice(0, count);
  const mass = massOf(ws.weights, ids, count);
  const probs = Float64Array.from(ids, (id) => ws.weights[id] / mass);
  return { ids, probs };
}

/** Picks each next token; same options and seed, same tokens. */
export class Sampler {
  private readonly settings: SamplingSettings;
  private readonly random: Rng;
  private readonly ws: Workspace;

  constructor(opts: SamplingOptions, vocabSize: number) {
    this.settings = resolveSettings(opts);
    this.random = mulberry32(opts.seed ?? randomSeed());
    this.ws = new Workspace(vocabSize);
  }

  /** The next token after `history` (prompt and output so far, for the repetition penalty). */
  next(logits: Float32Array, history: ArrayLike<number>): number {
    if (logits.length !== this.ws.weights.length) {
      throw new Error(`Sampler: ${logits.length} logits, expected ${this.ws.weights.length}`);
    }
    const penalized = penalize(logits, this.settings.repetitionPenalty, history, this.ws);
    if (this.settings.temperature === 0) return argmax(penalized);
    const count = keptTokens(penalized, this.settings, this.ws);
    const { weights, order } = this.ws;
    let rest = (this.random() / 2 ** 32) * massOf(weights, order, count);
    for (let j = 0; j < count - 1; j++) {
      rest -= weights[order[j]];
      if (rest < 0) return order[j];
    }
    return order[count - 1];
  }
}

/** A fresh 32-bit seed from the platform's CSPRNG (Web Crypto: Node and browsers alike). */
function randomSeed(): number {
  return globalThis.crypto.getRandomValues(new Uint32Array(1))[0] as number;
}
