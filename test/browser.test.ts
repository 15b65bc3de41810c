/**
 * The browser entry: it bundles for platform=browser with no Node module, and the bundle itself,
 * run here with `navigator.gpu` taken from the webgpu package (lavapipe in CI), loads models from
 * bytes and matches reference.json and the Node code paths.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { build } from 'esbuild';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import { exportGguf } from '../src/io/export/gguf.ts';
import { exportCheckpoint } from '../src/io/export/index.ts';
import { loadGgufModel, loadGgufTokenizer } from '../src/io/gguf-load.ts';
import { loadForeignQuantized, readForeignQuantConfig } from '../src/io/import.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { loadQuantized, readQuantizationConfig, saveQuantized } from '../src/quant/checkpoint.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { defineRecipe, resolveRecipe } from '../src/quant/recipe.ts';
import { ggufChatTemplate, loadChatTemplate } from '../src/runtime/chat-template-file.ts';
import { eosIdsOf } from '../src/runtime/eos.ts';
import { ModelEngine } from '../src/runtime/generate.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { openDevice } from '../src/tensor/webgpu/backend.ts';
import { MODELS, testManifest, WIKITEXT } from './helpers.ts';

type Browser = typeof import('../src/browser.ts');

const TINY = `${MODELS}llama-tiny`;
const SMALL = `${MODELS}llama-small`;
const cpu = new CpuBackend();
const probe = await openDevice();
probe?.device.destroy();
const skip = probe ? false : 'no WebGPU adapter (install Mesa lavapipe: apt-get install mesa-vulkan-drivers)';
const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-browser-'));
const bundleFile = path.join(outDir, 'llmq.browser.js');
after(() => fs.rmSync(outDir, { recursive: true, force: true }));

function readDir(dir: string): Record<string, Uint8Array> {
  const files: Record<string, Uint8Array> = {};
  for (const name of fs.readdirSync(dir)) files[name] = new Uint8Array(fs.readFileSync(path.join(dir, name)));
  return files;
}

/** The bundle, imported with navigator.gpu provided the way a browser does. */
async function loadBundle(): Promise<Browser> {
  if (!fs.existsSync(bundleFile)) await bundle();
  const { create } = (await import('webgpu')) as unknown as { create(flags: string[]): GPU };
  Object.defineProperty(globalThis, 'navigator', { value: { gpu: create([]) }, configurable: true });
  return (await import(bundleFile)) as Browser;
}

/** Every linear of `model` runs from packed codes, and its first window's NLL is `want`'s. */
async function expectPackedWithNll(
  llmq: Browser,
  model: InstanceType<Browser['LlamaModel']>,
  tokens: Int32Array,
  want: { windowMeanNll: number[]; ppl: number },
): Promise<void> {
  const packed = model.layers.flatMap((l) => Object.values(l.linears)).filter((lin) => lin.packed);
  assert.equal(packed.length, model.layers.length * 7);
  const got = await llmq.perplexity(model, tokens, { seqLen: 512, maxWindows: 1 });
  assert.ok(Math.abs(got.windowMeanNll[0] - want.windowMeanNll[0]) < 2e-4, `${got.ppl} vs ${want.ppl}`);
}

/** The same 12 greedy tokens and text from both engines. */
async function expectSameGreedy(engine: ModelEngine, node: ModelEngine): Promise<void> {
  const prompt = 'The history of the city';
  const got = await engine.generate(engine.encode(prompt), { maxTokens: 12 });
  const want = await node.generate(node.encode(prompt), { maxTokens: 12 });
  assert.deepEqual(got.tokens, want.tokens);
  assert.equal(got.text, want.text);
}

async function bundle() {
  return build({
    entryPoints: ['src/browser.ts'],
    bundle: true,
    platform: 'browser',
    format: 'esm',
    // only reached when navigator.gpu is missing (Node); a browser never loads it
    external: ['webgpu'],
    outfile: bundleFile,
    metafile: true,
    logLevel: 'silent',
  });
}

test('the browser entry bundles for platform=browser with no Node module or global', async () => {
  const result = await bundle();
  const inputs = Object.keys(result.metafile.inputs);
  assert.ok(inputs.includes('src/model/llama.ts') && inputs.includes('src/tensor/webgpu/backend.ts'));
  const outside = inputs.filter((f) => !f.startsWith('src/') && !f.startsWith('node_modules/@huggingface/'));
  assert.deepEqual(outside, []);
  const code = fs.readFileSync(bundleFile, 'utf8');
  assert.doesNotMatch(code, /(^|[^\w.-])(process|Buffer)\.|\brequire\(/m);
});

test('the bundle on WebGPU: llama-tiny window NLLs match reference.json, greedy text matches Node', {
  skip,
}, async () => {
  const llmq = await loadBundle();
  const files = readDir(TINY);
  const backend = await llmq.WebGpuBackend.create();
  const model = llmq.modelFromFiles(files, backend, 'llama-tiny');
  const tokenizer = llmq.tokenizerFromFiles(files, 'llama-tiny');
  const ref = JSON.parse(fs.readFileSync(`${TINY}/reference.json`, 'utf8'));
  const tokens = tokenizer.encode(readEvalText(WIKITEXT).slice(0, 12000));
  assert.deepEqual([...tokens.subarray(0, 16)], ref.first_ids);
  const r = await llmq.perplexity(model, tokens, { seqLen: 512, maxWindows: 2 });
  r.windowMeanNll.forEach((v, i) => {
    const want = ref.seq512.window_mean_nll[i];
    assert.ok(Math.abs(v - want) < 2e-4, `window ${i}: ${v} vs ${want}`);
  });

  const engine = llmq.engineFromFiles(files, model, tokenizer, { label: 'llama-tiny' });
  const node = new ModelEngine(loadLlama(TINY, cpu), loadTokenizer(TINY), {
    modelName: 'node',
    template: loadChatTemplate(TINY),
    eosIds: eosIdsOf(loadLlama(TINY, cpu)),
  });
  await expectSameGreedy(engine, node);
  backend.destroy();
});

test('the bundle loads an llmq W4 g128 checkpoint from bytes: packed linears, same NLL as Node on CPU', {
  skip,
}, async () => {
  const llmq = await loadBundle();
  const out = path.join(outDir, 'w4');
  const recipe = resolveRecipe('rtn-w4g128');
  const source = loadLlama(SMALL, cpu);
  await quantizeModel(source, recipe, undefined);
  await saveQuantized(source, recipe, testManifest(SMALL), out, false);
  const stored = readQuantizationConfig(out)!;
  const tokens = loadTokenizer(SMALL).encode(readEvalText(WIKITEXT).slice(0, 6000));
  const want = await perplexity(loadQuantized(out, cpu, stored), tokens, { seqLen: 512, maxWindows: 1 });

  const backend = await llmq.WebGpuBackend.create();
  const model = llmq.modelFromFiles(readDir(out), backend, 'w4');
  await expectPackedWithNll(llmq, model, tokens, want);
  backend.destroy();
});

test('the bundle loads AutoAWQ, GPTQ and compressed-tensors checkpoints from bytes: packed, same NLL as Node on CPU', {
  skip,
}, async () => {
  const llmq = await loadBundle();
  const source = path.join(outDir, 'tiny-w4g64');
  const recipe = defineRecipe('w4g64', { description: 'W4 g64', weights: 'int4-g64' });
  const model = loadLlama(TINY, cpu);
  await quantizeModel(model, recipe, undefined);
  await saveQuantized(model, recipe, testManifest(TINY), source, false);
  const tokens = loadTokenizer(TINY).encode(readEvalText(WIKITEXT).slice(0, 6000));
  const backend = await llmq.WebGpuBackend.create();
  for (const layout of ['autoawq', 'gptq', 'compressed-tensors'] as const) {
    const dir = path.join(outDir, `tiny-${layout}`);
    exportCheckpoint(source, layout, dir);
    const fq = readForeignQuantConfig(dir);
    assert.ok(fq);
    const want = await perplexity(loadForeignQuantized(dir, cpu, fq), tokens, { seqLen: 512, maxWindows: 1 });
    await expectPackedWithNll(llmq, llmq.modelFromFiles(readDir(dir), backend, layout), tokens, want);
  }
  backend.destroy();
});

test('the bundle runs a Q8_0 GGUF from bytes: packed linears, tokens, NLL and greedy text as Node on CPU', {
  skip,
}, async () => {
  const llmq = await loadBundle();
  const file = path.join(outDir, 'tiny-q8_0.gguf');
  await exportGguf(TINY, file, { type: 'q8_0' });
  const gguf = llmq.ggufFromBytes('tiny-q8_0.gguf', new Uint8Array(fs.readFileSync(file)));
  const backend = await llmq.WebGpuBackend.create();
  const model = llmq.modelFromGguf(gguf, backend);
  const tokenizer = llmq.tokenizerFromGguf(gguf);
  const text = readEvalText(WIKITEXT).slice(0, 6000);
  const tokens = tokenizer.encode(text);
  assert.deepEqual([...tokens], [...loadGgufTokenizer(file).encode(text)]);
  const cpuModel = loadGgufModel(file, cpu);
  await expectPackedWithNll(
    llmq,
    model,
    tokens,
    await perplexity(cpuModel, tokens, { seqLen: 512, maxWindows: 1 }),
  );

  const engine = llmq.engineFromGguf(gguf, model, tokenizer);
  const node = new ModelEngine(cpuModel, loadGgufTokenizer(file), {
    modelName: 'node',
    template: ggufChatTemplate(file),
    eosIds: eosIdsOf(cpuModel),
  });
  await expectSameGreedy(engine, node);
  backend.destroy();
});

test('fetchModelFiles: required and optional files, index shards, progress; bad input names the URL', async () => {
  const { fetchModelFiles } = await import('../src/browser.ts');
  const served: Record<string, Uint8Array> = {
    'config.json': new TextEncoder().encode('{}'),
    'tokenizer.json': new TextEncoder().encode('{"a":1}'),
    'model.safetensors.index.json': new TextEncoder().encode(
      JSON.stringify({ weight_map: { a: 'b.safetensors', c: 'a.safetensors', d: 'b.safetensors' } }),
    ),
    'a.safetensors': new Uint8Array(300).fill(1),
    'b.safetensors': new Uint8Array(500).fill(2),
  };
  const asked: string[] = [];
  const fetch = async (url: string) => {
    asked.push(url);
    const body = served[url.replace('https://host/m/', '')];
    return body ? new Response(body) : new Response('no', { status: 404 });
  };
  let last = [0, 0];
  const files = await fetchModelFiles('https://host/m', { fetch, onProgress: (l, t) => (last = [l, t]) });
  assert.deepEqual(Object.keys(files).sort(), Object.keys(served).sort());
  assert.deepEqual(files['b.safetensors'], served['b.safetensors']);
  assert.ok(asked.includes('https://host/m/generation_config.json'));
  const total = Object.values(served).reduce((n, b) => n + b.length, 0);
  assert.equal(last[0], total);
  delete served['a.safetensors'];
  await assert.rejects(
    fetchModelFiles('https://host/m/', { fetch }),
    /https:\/\/host\/m\/a\.safetensors: HTTP 404/,
  );
  delete served['tokenizer.json'];
  await assert.rejects(
    fetchModelFiles('https://host/m/', { fetch }),
    /tokenizer\.json: HTTP 404 \(this file is required\)/,
  );
});
