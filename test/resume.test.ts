/**
 * Resuming an interrupted quantization: a run stopped after some layers and started again must write
 * the same checkpoint bytes as a run that was never interrupted.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { saveQuantized } from '../src/quant/checkpoint.ts';
import { type LoadOptions, loadModel } from '../src/quant/load.ts';
import { resolveRecipe } from '../src/quant/recipe.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { MODELS, SHARED, testManifest } from './helpers.ts';

const cpu = new CpuBackend();
const TINY = `${MODELS}llama-tiny`;
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-resume-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
const CALIB = { file: `${SHARED}data/text/brown.txt`, samples: 4, seqLen: 64 };
const MANIFEST = testManifest(TINY);

function recipeFile(name: string, recipe: unknown): string {
  const file = path.join(root, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify(recipe));
  return file;
}

/** Quantizes llama-tiny and returns the written model.safetensors bytes. */
async function quantizeTo(out: string, recipe: string, opts: Partial<LoadOptions> = {}): Promise<Buffer> {
  const r = resolveRecipe(recipe);
  const { model } = await loadModel(TINY, cpu, { recipe: r, calib: CALIB, ...opts });
  await saveQuantized(model, r, MANIFEST, out, false);
  return fs.readFileSync(path.join(out, 'model.safetensors'));
}

const RECIPES = {
  // quantized propagation, act_order g_idx
  gptq: { weights: 'int4-g64', steps: [{ gptq: { actOrder: true } }] },
  // smoothing folded into the norms, static activation scales, full-precision propagation
  'smoothquant-static': {
    weights: 'int8-row-sym',
    activations: 'int8-tensor-sym',
    static: true,
    steps: ['smoothquant'],
  },
};

for (const [name, recipe] of Object.entries(RECIPES))
  test(`${name}: stopped after 2 of 4 layers and resumed, the same bytes as one run`, async () => {
    const file = recipeFile(name, recipe);
    const whole = await quantizeTo(path.join(root, `${name}-whole`), file);
    const work = path.join(root, `${name}.partial`);
    const resume = { dir: work, source: 'tiny', intervalMs: 0 };
    await assert.rejects(
      quantizeTo(path.join(root, `${name}-cut`), file, {
        resume,
        onLayer: (done) => {
          if (done === 2) throw new Error('interrupted');
        },
      }),
      /interrupted/,
    );
    const kept = fs.readdirSync(work).sort();
    assert.deepEqual(kept, [
      'inputs-00001.safetensors',
      'layer-00000.safetensors',
      'layer-00001.safetensors',
      'state.json',
    ]);
    let resumedAt = -1;
    const again = await quantizeTo(path.join(root, `${name}-resumed`), file, {
      resume,
      onLayer: (done) => {
        if (resumedAt < 0) resumedAt = done;
      },
    });
    assert.equal(resumedAt, 2, 'the first progress report is the restored layers');
    assert.ok(again.equals(whole), 'resumed checkpoint differs from the uninterrupted one');
  });

test('a state made from another source or recipe is not used', async () => {
  const file = recipeFile('other', RECIPES.gptq);
  const work = path.join(root, 'other.partial');
  await assert.rejects(
    quantizeTo(path.join(root, 'other-cut'), file, {
      resume: { dir: work, source: 'first', intervalMs: 0 },
      onLayer: (done) => {
        if (done === 1) throw new Error('interrupted');
      },
    }),
  );
  const reports: number[] = [];
  await quantizeTo(path.join(root, 'other-new'), file, {
    resume: { dir: work, source: 'second', intervalMs: 0 },
    onLayer: (done) => reports.push(done),
  });
  assert.deepEqual(reports, [1, 2, 3, 4], 'started from layer 0');
});

test('hidden states are kept at most once per interval: a run cut early starts over', async () => {
  const file = recipeFile('interval', RECIPES.gptq);
  const resume = { dir: path.join(root, 'interval.partial'), source: 'tiny', intervalMs: 1e9 };
  await assert.rejects(
    quantizeTo(path.join(root, 'interval-cut'), file, {
      resume,
      onLayer: (done) => {
        if (done === 2) throw new Error('interrupted');
      },
    }),
  );
  assert.deepEqual(fs.readdirSync(resume.dir).sort(), ['layer-00000.safetensors', 'layer-00001.safetensors']);
  const reports: number[] = [];
  await quantizeTo(path.join(root, 'interval-new'), file, { resume, onLayer: (done) => reports.push(done) });
  assert.deepEqual(reports, [1, 2, 3, 4]);
});
