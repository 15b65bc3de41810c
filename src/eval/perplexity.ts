/**
 * Perplexity with the standard WikiText-2 protocol (llm-awq, AutoAWQ, GPTQ, SmoothQuant, FlatQuant):
 * rows of the raw file joined by "\n\n", tokenized once (one BOS from the tokenizer), numel // seqlen
 * non-overlapping windows, ppl = exp(mean over windows of each window's mean next-token NLL).
 */
import fs from 'node:fs';
import { fail } from '../errors.ts';
import type { LlamaModel } from '../model/llama.ts';

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

export function readEvalText(file: string): string {
  if (!fs.existsSync(file)) fail(`${file}: evaluation text file not found`);
  const raw = fs.readFileSync(file, 'utf8');
  if (raw.trim() === '') fail(`${file}: evaluation text file is empty`);
  return datasetRows(raw).join('\n\n');
}

export interface PerplexityOptions {
  seqLen: number;
  maxWindows?: number;
  /** windows per forward pass */
  batch?: number;
  onWindow?: (done: number, total: number) => void;
}

export interface PerplexityResult {
  ppl: number;
  windows: number;
  tokens: number;
  seqlen: number;
  windowMeanNll: number[];
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
  const { seqLen } = opts;
  if (!Number.isInteger(seqLen) || seqLen < 2) fail(`--seqlen must be an integer >= 2, got ${seqLen}`);
  if (tokens.length < seqLen)
    fail(`--seqlen ${seqLen} is larger than the evaluation text (${tokens.length} tokens)`);
  const total = windowCount(tokens.length, seqLen, opts.maxWindows);
  const batch = Math.max(1, opts.batch ?? defaultBatch(model, seqLen));
  const windowMeanNll: number[] = [];
  for (let w = 0; w < total; w += batch) {
    const n = Math.min(batch, total - w);
    windowMeanNll.push(
      ...(await windowNlls(model, tokens.subarray(w * seqLen, (w + n) * seqLen), n, seqLen)),
    );
    opts.onWindow?.(w + n, total);
  }
  const mean = windowMeanNll.reduce((a, b) => a + b, 0) / total;
  return { ppl: Math.exp(mean), windows: total, tokens: tokens.length, seqlen: seqLen, windowMeanNll };
}

/** Mean next-token NLL of each of n windows laid end to end in ids. */
export async function windowNlls(
  model: LlamaModel,
  ids: Int32Array,
  n: number,
  seqLen: number,
): Promise<number[]> {
  const logits = model.forward(ids, { batch: n, seqLen });
  const targets = new Int32Array(ids.length);
  for (let i = 0; i < ids.length; i++) targets[i] = i % seqLen === seqLen - 1 ? 0 : ids[i + 1];
  const nllTensor = model.backend.nll(logits, targets);
  logits.dispose();
  const nll = await model.backend.read(nllTensor);
  nllTensor.dispose();
  const means: number[] = [];
  for (let wi = 0; wi < n; wi++) {
    let s = 0;
    for (let t = 0; t < seqLen - 1; t++) s += nll[wi * seqLen + t];
    means.push(s / (seqLen - 1));
  }
  return means;
}
