/**
 * KL divergence from the full-precision model in `perplexity` and `llmq eval --kl`: against a naive
 * float64 computation from both models' logits, written here.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import type { LlamaModel } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { resolveRecipe } from '../src/quant/recipe.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { MODELS, WIKITEXT } from './helpers.ts';

const cpu = new CpuBackend();
const TINY = `${MODELS}llama-tiny`;
const tokens = loadTokenizer(TINY).encode(readEvalText(WIKITEXT));
const [SEQ, WINDOWS] = [64, 3];
const BIN = new URL('../bin/llmq', import.meta.url).pathname;
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-kl-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

async function quantized(recipe: string): Promise<LlamaModel> {
  const model = loadLlama(TINY, cpu);
  await quantizeModel(model, resolveRecipe(recipe), undefined);
  return model;
}

/** log-softmax of one row, in f64 */
function logSoftmax(row: Float32Array): number[] {
  let max = Number.NEGATIVE_INFINITY;
  for (const v of row) max = Math.max(max, v);
  let sum = 0;
  for (const v of row) sum += Math.exp(v - max);
  const lse = Math.log(sum) + max;
  return Array.from(row, (v) => v - lse);
}

/** Mean KL(P_fp || P_q) over the counted positions and the share of equal argmaxes, from scratch. */
async function naiveKl(
  fp: LlamaModel,
  q: LlamaModel,
): Promise<{ mean: number; sameTop: number; all: number[] }> {
  const ids = tokens.subarray(0, WINDOWS * SEQ);
  const [lp, lq] = await Promise.all(
    [fp, q].map(async (m) => cpu.read(m.forward(ids, { batch: WINDOWS, seqLen: SEQ }))),
  );
  const V = fp.config.vocabSize;
  const all: number[] = [];
  let same = 0;
  for (let w = 0; w < WINDOWS; w++)
    for (let t = 0; t < SEQ - 1; t++) {
      const r = w * SEQ + t;
      const p = logSoftmax(lp.subarray(r * V, (r + 1) * V));
      const qq = logSoftmax(lq.subarray(r * V, (r + 1) * V));
      let kl = 0;
      for (let i = 0; i < V; i++) kl += Math.exp(p[i]) * (p[i] - qq[i]);
      all.push(kl);
      const top = (x: number[]) => x.indexOf(Math.max(...x));
      if (top(p) === top(qq)) same++;
    }
  return { mean: all.reduce((a, b) => a + b, 0) / all.length, sameTop: same / all.length, all };
}

test('perplexity with a reference: KL summary equals a naive float64 computation', async () => {
  const fp = loadLlama(TINY, cpu);
  const q = await quantized('rtn-w4');
  const r = await perplexity(q, tokens, { seqLen: SEQ, maxWindows: WINDOWS, reference: fp, batch: 2 });
  const want = await naiveKl(fp, q);
  const kl = r.kl!;
  assert.equal(kl.tokens, WINDOWS * (SEQ - 1));
  assert.ok(Math.abs(kl.mean - want.mean) < 1e-6 * want.mean, `${kl.mean} vs ${want.mean}`);
  assert.equal(kl.sameTop, want.sameTop);
  const sorted = [...want.all].sort((a, b) => a - b);
  assert.ok(Math.abs(kl.max - sorted[sorted.length - 1]) < 1e-5 * kl.max);
  assert.ok(Math.abs(kl.median - sorted[Math.floor(sorted.length / 2)]) < 1e-5 * kl.median);
  assert.ok(kl.mean > 0.01 && kl.sameTop < 1, 'W4 per channel moves the distribution');
  const fpPpl = await perplexity(fp, tokens, { seqLen: SEQ, maxWindows: WINDOWS });
  assert.equal(kl.referencePpl, fpPpl.ppl);
  const plain = await perplexity(q, tokens, { seqLen: SEQ, maxWindows: WINDOWS });
  assert.equal(r.ppl, plain.ppl);
  assert.equal(plain.kl, undefined);
});

test('a model against itself: zero KL, always the same top token', async () => {
  const fp = loadLlama(TINY, cpu);
  const r = await perplexity(fp, tokens, {
    seqLen: SEQ,
    maxWindows: 2,
    reference: loadLlama(TINY, cpu),
  });
  assert.equal(r.kl!.mean, 0);
  assert.equal(r.kl!.max, 0);
  assert.equal(r.kl!.sameTop, 1);
  assert.equal(r.kl!.referencePpl, r.ppl);
});

function llmq(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) =>
    execFile(BIN, args, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? -1) : 0, stdout, stderr }),
    ),
  );
}

test('llmq eval --kl: on the fly, on a saved checkpoint (base from its manifest), and without a quantized model', async () => {
  const text = path.join(root, 'text.raw');
  fs.writeFileSync(text, fs.readFileSync(WIKITEXT, 'utf8').slice(0, 4000));
  const common = ['--ppl', text, '--seqlen', String(SEQ), '--max-windows', '2', '--json'];
  const live = await llmq(['eval', TINY, '--recipe', 'rtn-w4', '--kl', ...common]);
  assert.equal(live.code, 0, live.stderr);
  const a = JSON.parse(live.stdout);
  assert.equal(a.kl.base, TINY);
  assert.ok(a.kl.mean > 0 && a.kl.sameTop <= 1 && a.kl.tokens === 2 * (SEQ - 1));
  const out = path.join(root, 'q');
  const saved = await llmq(['quantize', TINY, '--recipe', 'rtn-w4', '--out', out, '--json']);
  assert.equal(saved.code, 0, saved.stderr);
  // 4-bit codes plus one fp16 scale and one 4-bit zero point per row: 2432 rows of 737,280 weights a layer
  assert.equal(JSON.parse(saved.stdout).linear_bits_per_weight, (4 * 737280 + 2432 * 20) / 737280);
  const b = JSON.parse((await llmq(['eval', out, '--kl', ...common])).stdout);
  assert.equal(b.kl.base, path.resolve(TINY));
  assert.equal(b.kl.mean, a.kl.mean);
  assert.equal(b.ppl, a.ppl);
  const bad = await llmq(['eval', TINY, '--kl', ...common]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /^llmq: eval: --kl compares a quantized model with full precision/);
  assert.equal(bad.stdout, '');
});
