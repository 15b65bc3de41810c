/**
 * KV-cache quantization (recipe key `kv`): keys after RoPE and values quantized per head and token,
 * checked against a naive per-head quantization of layer 0's k/v, through the KV cache, and through a
 * saved checkpoint.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import { fakeQuantRows, parseFormat } from '../src/formats/index.ts';
import { exportCheckpoint } from '../src/io/export/index.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { kvCacheSpec } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { loadQuantized, readQuantizationConfig } from '../src/quant/checkpoint.ts';
import { resolveRecipe } from '../src/quant/recipe.ts';
import { KvCache } from '../src/runtime/kv-cache.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { MODELS, maxRelErr, savedTinyCheckpoint, WIKITEXT } from './helpers.ts';

const cpu = new CpuBackend();
const TINY = `${MODELS}llama-tiny`;

test('kvCacheSpec: per-row INT is one scale per head; groups must stay within a head', () => {
  assert.deepEqual(kvCacheSpec(parseFormat('int4-row'), 64), {
    ...parseFormat('int4-row'),
    granularity: 'group',
    group: 64,
  });
  assert.deepEqual(kvCacheSpec(parseFormat('int8-g32'), 64), parseFormat('int8-g32'));
  assert.throws(() => kvCacheSpec(parseFormat('int4-g128'), 64), /groups must lie within one head/);
  assert.throws(
    () => resolveRecipe(writeRecipe({ name: 'x', weights: 'int4-g64', kv: 'fp8-e4m3' })),
    /kv takes INT/,
  );
});

function writeRecipe(obj: Record<string, unknown>): string {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-kv-')), 'recipe.json');
  fs.writeFileSync(file, JSON.stringify(obj));
  return file;
}

test('attention sees k (after RoPE) and v quantized per head and token, as a naive per-head quantizer gives', async () => {
  const model = loadLlama(TINY, cpu);
  const { numHeads, numKvHeads, headDim } = model.config;
  const spec = parseFormat('int4-row');
  model.kvQuant = kvCacheSpec(spec, headDim);
  const ids = Int32Array.from({ length: 24 }, (_, i) => (i * 131 + 7) % model.config.vocabSize);
  const shape = { batch: 1, seqLen: ids.length };
  const x = cpu.rmsnorm(model.embed(ids), model.layers[0].inputNorm, model.config.rmsNormEps);
  const got = await cpu.read(model.attentionMix(0, x, shape));
  // the same attention from k/v quantized here, each head's vector a row of its own
  const pos = model.positions(shape);
  const lin = (name: 'q_proj' | 'k_proj' | 'v_proj') => cpu.linear(x, model.layers[0].linears[name].weight);
  const q = cpu.rope(lin('q_proj'), pos, headDim, model.rope);
  const perHead = async (t: ReturnType<typeof lin>) =>
    cpu.upload(fakeQuantRows(await cpu.read(t), ids.length * numKvHeads, headDim, spec), t.shape, 'f32');
  const k = await perHead(cpu.rope(lin('k_proj'), pos, headDim, model.rope));
  const v = await perHead(lin('v_proj'));
  const want = await cpu.read(cpu.attention(q, k, v, { ...shape, numHeads, numKvHeads, headDim }));
  assert.ok(maxRelErr(got, want) < 1e-6);
  model.kvQuant = undefined;
  const fp = await cpu.read(model.attentionMix(0, x, shape));
  assert.ok(maxRelErr(fp, want) > 1e-3, 'the quantization changed nothing');
});

test('with a quantized KV cache, logits through the cache equal one full forward', async () => {
  const model = loadLlama(TINY, cpu);
  model.kvQuant = kvCacheSpec(parseFormat('int4-row'), model.config.headDim);
  const V = model.config.vocabSize;
  const ids = Int32Array.from({ length: 40 }, (_, i) => (i * 7919 + 13) % V);
  const full = await cpu.read(model.forward(ids, { batch: 1, seqLen: ids.length }));
  const cache = new KvCache(model, 64);
  let worst = 0;
  for (const [start, end] of [[0, 20], ...Array.from({ length: 20 }, (_, i) => [20 + i, 21 + i])]) {
    cache.reserve(end - start);
    const logits = await cpu.read(model.forwardCached(ids.subarray(start, end), cache));
    worst = Math.max(worst, maxRelErr(logits, full.subarray((end - 1) * V, end * V)));
  }
  assert.ok(worst < 1e-4, `max relative logit difference ${worst}`);
  cache.dispose();
});

test('W4 KV4: the checkpoint records the KV format, reloads to the same perplexity, refuses export', async () => {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-kvck-')), 'q');
  const recipe = resolveRecipe(writeRecipe({ name: 'kv4', weights: 'int4-g64', kv: 'int4-row' }));
  const model = await savedTinyCheckpoint(cpu, recipe, dir);
  const ids = loadTokenizer(TINY).encode(readEvalText(WIKITEXT)).subarray(0, 1025);
  const ppl = async (m: typeof model) => (await perplexity(m, ids, { seqLen: 512, maxWindows: 2 })).ppl;
  const before = await ppl(model);
  const stored = readQuantizationConfig(dir);
  assert.ok(stored);
  const reloaded = loadQuantized(dir, cpu, stored);
  assert.deepEqual(reloaded.kvQuant, model.kvQuant);
  assert.equal(await ppl(reloaded), before);
  model.kvQuant = undefined;
  assert.notEqual(await ppl(model), before);
  assert.throws(
    () => exportCheckpoint(dir, 'autoawq', path.join(dir, '..', 'awq')),
    /quantizes the KV cache \(int4-row\)/,
  );
  assert.equal(resolveRecipe('rtn-w4a4kv4').kvCache?.kind, 'int');
});
