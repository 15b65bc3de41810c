/**
 * Perplexity with the standard WikiText-2 protocol (llm-awq, AutoAWQ, GPTQ, SmoothQuant, FlatQuant):
 * rows of the raw file joined by "\n\n", tokenized once (one BOS from the tokenizer), numel // seqlen
 * non-overlapping windows, ppl = exp(mean over windows of each window's mean next-token NLL).
 *
 * With a reference model (the full-precision one), the same pass also measures how far the evaluated
 * model's next-token distributions moved from the reference's: KL(P_ref || P_model) per predicted
 * token (the seqLen - 1 positions of each window whose NLL counts), summarised as llama.cpp's
 * --kl-divergence does (mean, median, percentiles, max, how often the top token is the same).
 */
import { fail } from '../errors.ts';
import type { LlamaModel } from '../model/llama.ts';
import type { Tensor } from '../tensor/tensor.ts';

/** Rows as the `datasets` library gives them: each line with its '\n', blank lines as ''. */
export function datasetRows(raw: string): string[] {
  const lines = raw.split('\n');
  const endsWithNewline = raw.endsWith('\n');
  if (endsWithNewline) lines.pop();
  return lines.map((line, i) => {
    if (line === '') return '';
    return i < lines.length - 1 || endsWithNewline ? `${line}\n` : line;
  });
}

export interface PerplexityOptions {
  seqLen: number;
  maxWindows?: number;
  /** windows per forward pass */
  batch?: number;
  /** the model to measure KL divergence against (same backend, same vocabulary) */
  reference?: LlamaModel;
  onWindow?: (done: number, total: number) => void;
}

export interface KlSummary {
  /** nats per token */
  mean: number;
  median: number;
  p90: number;
  p99: number;
  max: number;
  /** fraction of tokens where both models put the same token first */
  sameTop: number;
  tokens: number;
  /** perplexity of the reference model on the same windows */
  referencePpl: number;
}

export interface PerplexityResult {
  ppl: number;
  windows: number;
  tokens: number;
  seqlen: number;
  windowMeanNll: number[];
  kl?: KlSummary;
}

export function windowCount(tokens: number, seqLen: number, maxWindows?: number): number {
  const all = Math.floor(tokens / seqLen);
  return maxWindows === undefined ? all : Math.min(all, maxWindows);
}

/** Logits of one forward pass kept below this on a GPU. */
const GPU_LOGIT_BYTES = 2 ** 30;

/**
 * Windows per forward pass: on WebGPU up to 16384 tokens (fewer, larger dispatches: 2.7x faster for
 * llama-small at 2048, BENCHMARKS.md) while the f32 logits stay under 1 GiB; on the CPU 2048 tokens.
 * The batch does not change the result: each window's NLL is computed on its own.
 */
export function defaultBatch(model: LlamaModel, seqLen: number): number {
  if (model.backend.name !== 'webgpu') return Math.max(1, Math.floor(2048 / seqLen));
  const byLogits = Math.floor(GPU_LOGIT_BYTES / (seqLen * model.config.vocabSize * 4));
  return Math.max(1, Math.min(Math.floor(16384 / seqLen), byLogits));
}

export async function perplexity(
  model: LlamaModel,
  tokens: Int32Array,
  opts: PerplexityOptions,
): Promise<PerplexityResult> {
  const { seqLen, reference } = opts;
  if (!Number.isInteger(seqLen) || seqLen < 2) fail(`--seqlen must be an integer >= 2, got ${seqLen}`);
  if (tokens.length < seqLen)
    fail(`--seqlen ${seqLen} is larger than the evaluation text (${tokens.length} tokens)`);
  if (reference && reference.config.vocabSize !== model.config.vocabSize)
    fail(
      `KL reference: vocabulary of ${reference.config.vocabSize} tokens, the model has ${model.config.vocabSize}`,
    );
  const total = windowCount(tokens.length, seqLen, opts.maxWindows);
  // two models' logits are alive at once when there is a reference
  const batch = Math.max(1, opts.batch ?? Math.ceil(defaultBatch(model, seqLen) / (reference ? 2 : 1)));
  const windowMeanNll: number[] = [];
  const referenceNll: number[] = [];
  const kl = new Float32Array(reference ? total * (seqLen - 1) : 0);
  let sameTop = 0;
  for (let w = 0; w < total; w += batch) {
    const n = Math.min(batch, total - w);
    const ids = tokens.subarray(w * seqLen, (w + n) * seqLen);
    const logits = model.forward(ids, { batch: n, seqLen });
    windowMeanNll.push(...(await windowNlls(logits, ids, n, seqLen)));
    if (reference) {
      const refLogits = reference.forward(ids, { batch: n, seqLen });
      const div = model.backend.klDiv(refLogits, logits);
      referenceNll.push(...(await windowNlls(refLogits, ids, n, seqLen)));
      refLogits.dispose();
      sameTop += await gatherKl(div, kl, w * (seqLen - 1), n, seqLen);
    }
    logits.dispose();
    opts.onWindow?.(w + n, total);
  }
  return {
    ppl: pplOf(windowMeanNll),
    windows: total,
    tokens: tokens.length,
    seqlen: seqLen,
    windowMeanNll,
    ...(reference ? { kl: summarizeKl(kl, sameTop, pplOf(referenceNll)) } : {}),
  };
}

function pplOf(windowMeanNll: number[]): number {
  return Math.exp(windowMeanNll.reduce((a, b) => a + b, 0) / windowMeanNll.length);
}

/** Targets of every window position (the last position of a window predicts nothing that counts). */
function nextTokens(ids: Int32Array, seqLen: number): Int32Array {
  const targets = new Int32Array(ids.length);
  for (let i = 0; i < ids.length; i++) targets[i] = i % seqLen === seqLen - 1 ? 0 : ids[i + 1];
  return targets;
}

/** Mean next-token NLL of each of the n windows whose logits are given (ids laid end to end). */
export async function windowNlls(
  logits: Tensor,
  ids: Int32Array,
  n: number,
  seqLen: number,
): Promise<number[]> {
  const nllTensor = logits.backend.nll(logits, nextTokens(ids, seqLen));
  const nll = await logits.backend.read(nllTensor);
  nllTensor.dispose();
  const means: number[] = [];
  for (let wi = 0; wi < n; wi++) {
    let s = 0;
    for (let t = 0; t < seqLen - 1; t++) s += nll[wi * seqLen + t];
    means.push(s / (seqLen - 1));
  }
  return means;
}

/** Copies the counted positions' KL into kl[at...]; returns how many of them kept the top token. Frees div. */
async function gatherKl(
  div: Tensor,
  kl: Float32Array,
  at: number,
  n: number,
  seqLen: number,
): Promise<number> {
  const host = await div.backend.read(div);
  div.dispose();
  let same = 0;
  for (let wi = 0; wi < n; wi++)
    for (let t = 0; t < seqLen - 1; t++) {
      const row = wi * seqLen + t;
      kl[at++] = host[2 * row];
      same += host[2 * row + 1];
    }
  return same;
}

/** Percentiles are the sorted value at rank floor(q x count). */
export function summarizeKl(kl: Float32Array, sameTop: number, referencePpl: number): KlSummary {
  const sorted = Float32Array.from(kl).sort();
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  let sum = 0;
  for (const v of kl) sum += v;
  return {
    mean: sum / kl.length,
    median: at(0.5),
    p90: at(0.9),
    p99: at(0.99),
    max: sorted[sorted.length - 1],
    sameTop: sameTop / kl.length,
    tokens: kl.length,
    referencePpl,
  };
}
