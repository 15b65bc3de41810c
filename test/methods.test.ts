/**
 * The calibrated methods through the pipeline on llama-tiny: scale folding is an equivalence
 * transform, every method's checkpoint reloads to exactly the in-memory model, and the steps leave
 * the traces they promise (AWQ ratios, salient channels, static scales, GPTQ losses below RTN's).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { loadCalibration } from '../src/calib/data.ts';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import type { LlamaModel } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { loadQuantized, readQuantizationConfig, saveQuantized } from '../src/quant/checkpoint.ts';
import '../src/quant/methods.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { resolveRecipe } from '../src/quant/recipe.ts';
import { smoothLayer } from '../src/quant/smoothquant.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { MODELS, SHARED, testManifest, WIKITEXT } from './helpers.ts';

const cpu = new CpuBackend();
const TINY = `${MODELS}llama-tiny`;
const tokenizer = loadTokenizer(TINY);
const evalIds = tokenizer.encode(readEvalText(WIKITEXT)).subarray(0, 4096);
const calib = await loadCalibration(tokenizer, {
  file: `${SHARED}data/text/brown.txt`,
  samples: 2,
  seqLen: 128,
  seed: 0,
});

/** A recipe from a JSON object, through the same path as a user's recipe file. */
function recipeOf(obj: Record<string, unknown>) {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-r-')), 'recipe.json');
  fs.writeFileSync(file, JSON.stringify(obj));
  return resolveRecipe(file);
}

const ppl = async (m: LlamaModel) => (await perplexity(m, evalIds, { seqLen: 256, maxWindows: 2 })).ppl;

test('SmoothQuant folding alone leaves the full-precision function unchanged', async () => {
  const model = loadLlama(TINY, cpu);
  const before = await ppl(model);
  const absMax = (n: string) =>
    Float32Array.from({ length: 256 }, (_, j) => 0.5 + ((j * 37 + n.length) % 17));
  for (let l = 0; l < model.layers.length; l++) await smoothLayer(model, l, absMax, 0.5);
  const after = await ppl(model);
  assert.ok(Math.abs(after / before - 1) < 1e-5, `ppl ${after} vs ${before}`);
});

const CASES: [string, Record<string, unknown>, (notes: Record<string, unknown>[]) => void][] = [
  [
    'awq (int4 g64)',
    { name: 'awq-g64', weights: 'int4-g64', steps: ['awq'] },
    (layers) => {
      const awq = layers[0].awq as Record<string, { ratio: number; losses: number[] }>;
      assert.deepEqual(Object.keys(awq), ['q_proj,k_proj,v_proj', 'gate_proj,up_proj', 'down_proj']);
      for (const g of Object.values(awq)) {
        assert.equal(g.losses.length, 20);
        assert.equal(Math.min(...g.losses), g.losses[Math.round(g.ratio * 20)]);
      }
      assert.ok(layers[0].awqClip, 'clip search ran');
    },
  ],
  [
    'gptq act_order (int4 g64, g_idx stored)',
    { name: 'gptq-ao', weights: 'int4-g64', steps: [{ gptq: { actOrder: true } }] },
    (layers) => {
      const losses = layers[0].gptqLoss as Record<string, { gptq: number; rtn: number }>;
      for (const [name, l] of Object.entries(losses))
        assert.ok(l.gptq < l.rtn, `${name}: ${l.gptq} vs RTN ${l.rtn}`);
    },
  ],
  ['smoothquant w8a8 static', { base: 'smoothquant-w8a8-static' }, () => {}],
  [
    'mixed w4a4 4% (salient columns + masks)',
    { base: 'mixed-w4a4', weights: 'int4-g64', steps: [{ mixed: { salientPercent: 4 } }] },
    (layers) =>
      assert.deepEqual(layers[0].salientChannels, {
        q_proj: 10,
        k_proj: 10,
        v_proj: 10,
        o_proj: 10,
        gate_proj: 10,
        up_proj: 10,
        down_proj: 28,
      }),
  ],
  ['mx + awq + gptq', { base: 'mxint4-awq-gptq', weights: 'mxint4-64', activations: 'mxint8-64' }, () => {}],
];

for (const [what, obj, check] of CASES) {
  test(`${what}: runs, leaves its notes, and the saved checkpoint reloads exactly`, async () => {
    const recipe = recipeOf(obj);
    const model = loadLlama(TINY, cpu);
    const report = await quantizeModel(model, recipe, calib);
    check(report.layers as Record<string, unknown>[]);
    const before = await ppl(model);
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-m-')), 'q');
    const manifest = testManifest(TINY);
    await saveQuantized(model, recipe, manifest, out, false);
    const stored = readQuantizationConfig(out);
    const reloaded = loadQuantized(out, cpu, stored as NonNullable<typeof stored>);
    assert.equal(await ppl(reloaded), before);
    fs.rmSync(path.dirname(out), { recursive: true });
  });
}

test('same seed, same checkpoint bytes: calibration and quantization are deterministic', async () => {
  const recipe = recipeOf({ name: 'awq-g64', weights: 'int4-g64', steps: ['awq'] });
  const bytes: Buffer[] = [];
  for (let run = 0; run < 2; run++) {
    const set = await loadCalibration(tokenizer, {
      file: `${SHARED}data/text/brown.txt`,
      samples: 2,
      seqLen: 64,
      seed: 7,
    });
    const model = loadLlama(TINY, cpu);
    await quantizeModel(model, recipe, set);
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-d-')), 'q');
    const manifest = testManifest(TINY);
    await saveQuantized(model, recipe, manifest, out, false);
    bytes.push(fs.readFileSync(path.join(out, 'model.safetensors')));
    fs.rmSync(path.dirname(out), { recursive: true });
  }
  assert.ok(bytes[0].equals(bytes[1]), 'the two runs wrote different model.safetensors');
});

test('SmoothQuant+ scores every alpha by logit MSE against fp, "none" = plain RTN, and keeps the best', async () => {
  const recipe = recipeOf({
    name: 'sqp',
    base: 'sqplus-w4g128',
    weights: 'int4-g64',
    steps: [{ sqplus: { step: 0.5, lossSamples: 2 } }],
  });
  const model = loadLlama(TINY, cpu);
  const report = await quantizeModel(model, recipe, calib);
  const sq = report.model.sqplus as {
    alpha: number | null;
    loss: string;
    losses: { alpha: number | null; loss: number }[];
  };
  assert.equal(sq.loss, 'logit-mse');
  assert.deepEqual(
    sq.losses.map((l) => l.alpha),
    [null, 0, 0.5, 1],
  );
  const best = sq.losses.reduce((a, b) => (b.loss < a.loss ? b : a));
  assert.equal(sq.alpha, best.alpha);
  // the "none" candidate, recomputed here: RTN-rounded weights, squared logit error against fp
  const fp = loadLlama(TINY, cpu);
  const rtn = loadLlama(TINY, cpu);
  for (const L of rtn.layers)
    for (const n of recipe.targets) L.linears[n].weight = cpu.fakeQuant(L.linears[n].weight, recipe.weights!);
  let sum = 0;
  let count = 0;
  for (let s = 0; s < 2; s++) {
    const ids = calib.ids.subarray(s * calib.seqLen, (s + 1) * calib.seqLen);
    const a = await cpu.read(fp.forward(ids, { batch: 1, seqLen: calib.seqLen }));
    const b = await cpu.read(rtn.forward(ids, { batch: 1, seqLen: calib.seqLen }));
    for (let i = 0; i < a.length; i++) sum += (a[i] - b[i]) ** 2;
    count += a.length;
  }
  const none = sq.losses[0].loss;
  assert.ok(Math.abs(none / (sum / count) - 1) < 1e-4, `none: ${none} vs ${sum / count}`);
});
