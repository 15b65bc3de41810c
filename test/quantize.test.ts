/**
 * RTN recipes against straightforward reimplementations of their definitions written here, the
 * saved checkpoint against the in-memory model, and the W4A4 blow-up on the outlier model.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { LINEARS } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { loadQuantized, readQuantizationConfig, saveQuantized } from '../src/quant/checkpoint.ts';
import { quantizeModel } from '../src/quant/pipeline.ts';
import { resolveRecipe } from '../src/quant/recipe.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import type { Tensor } from '../src/tensor/tensor.ts';
import { MODELS, WIKITEXT } from './helpers.ts';

const cpu = new CpuBackend();
const SMALL = `${MODELS}llama-small`;
const tokens = loadTokenizer(SMALL).encode(readEvalText(WIKITEXT));

/** torch.round: half to even. */
function rne(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** AutoAWQ pseudo_quantize_tensor, asymmetric, one group of values. */
function naiveAsym(v: number[], bits: number): number[] {
  const max = Math.max(...v);
  const min = Math.min(...v);
  const qmax = 2 ** bits - 1;
  // PyTorch on CUDA: division by a Python number is multiplication by its f32 reciprocal
  const scale = Math.fround(Math.max(Math.fround(max - min), Math.fround(1e-5)) * Math.fround(1 / qmax));
  const zero = Math.min(qmax, Math.max(0, -rne(Math.fround(min / scale))));
  return v.map((x) =>
    Math.fround((Math.min(qmax, Math.max(0, rne(Math.fround(x / scale)) + zero)) - zero) * scale),
  );
}

/** SmoothQuant absmax symmetric quantization of one row/token. */
function naiveSym(v: number[], bits: number): number[] {
  const lim = 2 ** (bits - 1);
  const amax = Math.max(...v.map(Math.abs), Math.fround(1e-5));
  const scale = Math.fround(amax * Math.fround(1 / (lim - 1)));
  return v.map((x) => Math.fround(Math.min(lim - 1, Math.max(-lim, rne(Math.fround(x / scale)))) * scale));
}

/** MXFP4: blocks of 32 share 2^(floor(log2 amax) - 2); E2M1 elements, half away from zero, saturating. */
function naiveMxfp4(v: number[]): number[] {
  const grid = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
  const amax = Math.max(...v.map(Math.abs));
  const e = amax === 0 ? -127 : Math.max(-127, Math.floor(Math.log2(amax)) - 2);
  const scale = 2 ** e;
  return v.map((x) => {
    const a = Math.abs(x) / scale;
    let best = grid[0];
    for (const g of grid) {
      const d = Math.abs(a - g) - Math.abs(a - best);
      if (d < 0 || (d === 0 && g > best)) best = g;
    }
    return Math.sign(x) * best * scale || 0;
  });
}

type RowQuant = (v: number[]) => number[];

function quantRows(values: Float32Array, group: number, q: RowQuant): Float32Array {
  const out = new Float32Array(values.length);
  for (let s = 0; s < values.length; s += group) out.set(q(Array.from(values.subarray(s, s + group))), s);
  return out;
}

interface Case {
  recipe: string;
  weights: (w: Float32Array, cols: number) => Float32Array;
  acts?: (x: Float32Array, cols: number) => Float32Array;
}

const CASES: Case[] = [
  { recipe: 'rtn-w4g128', weights: (w, _c) => quantRows(w, 128, (v) => naiveAsym(v, 4)) },
  { recipe: 'rtn-w4', weights: (w, c) => quantRows(w, c, (v) => naiveAsym(v, 4)) },
  { recipe: 'rtn-w3g128', weights: (w, _c) => quantRows(w, 128, (v) => naiveAsym(v, 3)) },
  {
    recipe: 'rtn-w8a8',
    weights: (w, c) => quantRows(w, c, (v) => naiveSym(v, 8)),
    acts: (x, c) => quantRows(x, c, (v) => naiveSym(v, 8)),
  },
  {
    recipe: 'rtn-w4a4',
    weights: (w, _c) => quantRows(w, 128, (v) => naiveAsym(v, 4)),
    acts: (x, c) => quantRows(x, c, (v) => naiveSym(v, 4)),
  },
  { recipe: 'mxfp4', weights: (w, _c) => quantRows(w, 32, naiveMxfp4) },
];

/** The naive model: weights replaced by the naive quantizer, activations quantized in a hook. */
async function naivePerplexity(c: Case, windows: number): Promise<number> {
  const model = loadLlama(SMALL, cpu);
  for (const L of model.layers)
    for (const name of LINEARS) {
      const lin = L.linears[name];
      const [rows, cols] = lin.weight.shape;
      lin.weight = cpu.upload(c.weights(await cpu.read(lin.weight), cols), [rows, cols], 'f32');
    }
  const acts = c.acts;
  const hooks = acts
    ? {
        linearInput: (_l: number, _n: string, x: Tensor) =>
          cpu.upload(acts(cpu.f32(x), x.shape[1]), x.shape, 'f32'),
      }
    : undefined;
  let total = 0;
  for (let w = 0; w < windows; w++) {
    const ids = tokens.subarray(w * 512, (w + 1) * 512);
    const logits = model.forward(ids, { batch: 1, seqLen: 512 }, hooks);
    const targets = new Int32Array(512);
    targets.set(ids.subarray(1));
    const nll = await cpu.read(cpu.nll(logits, targets));
    total += nll.subarray(0, 511).reduce((a, b) => a + b, 0) / 511;
  }
  return Math.exp(total / windows);
}

for (const c of CASES) {
  test(`${c.recipe}: weights and perplexity equal a naive implementation of the definition`, async () => {
    const model = loadLlama(SMALL, cpu);
    const original = await Promise.all(model.layers.map((L) => cpu.read(L.linears.down_proj.weight)));
    await quantizeModel(model, resolveRecipe(c.recipe), undefined);
    for (let i = 0; i < model.layers.length; i++) {
      const got = await cpu.read(model.layers[i].linears.down_proj.weight);
      const want = c.weights(original[i], model.config.intermediateSize);
      let worst = 0;
      for (let k = 0; k < got.length; k++) worst = Math.max(worst, Math.abs(got[k] - want[k]));
      assert.ok(worst <= 1e-6, `layer ${i} down_proj differs by ${worst}`);
    }
    const ours = await perplexity(model, tokens, { seqLen: 512, maxWindows: 1 });
    const naive = await naivePerplexity(c, 1);
    assert.ok(Math.abs(ours.ppl / naive - 1) < 1e-4, `ppl ${ours.ppl} vs naive ${naive}`);
  });
}

test('a saved checkpoint reloads to exactly the in-memory perplexity, packed to about a quarter', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-q-'));
  const out = path.join(dir, 'q');
  const recipe = resolveRecipe('rtn-w4a8');
  const model = loadLlama(SMALL, cpu);
  await quantizeModel(model, recipe, undefined);
  const before = await perplexity(model, tokens, { seqLen: 512, maxWindows: 1 });
  const manifest = {
    tool: 'llmq',
    tool_version: 'test',
    created: '',
    source_model: SMALL,
    source_sha256: '',
    timings: {},
  };
  await saveQuantized(model, recipe, manifest, out, false);
  await assert.rejects(saveQuantized(model, recipe, manifest, out, false), /already exists/);
  const stored = readQuantizationConfig(out);
  assert.equal(stored?.weight_format, 'int4-g128');
  const reloaded = loadQuantized(out, cpu, stored as NonNullable<typeof stored>);
  const after = await perplexity(reloaded, tokens, { seqLen: 512, maxWindows: 1 });
  assert.equal(after.ppl, before.ppl);
  const header = fs.readFileSync(path.join(out, 'model.safetensors'));
  const json = JSON.parse(header.subarray(8, 8 + Number(header.readBigUInt64LE(0))).toString());
  const q = json['model.layers.0.mlp.down_proj.qweight'];
  assert.deepEqual(q.shape, [(384 * 1024) / 2]);
  assert.equal(json['model.layers.0.mlp.down_proj.scales'].shape[0], (384 * 1024) / 128);
  assert.deepEqual(fs.readdirSync(dir), ['q']);
  fs.rmSync(dir, { recursive: true });
});

test('W4A4 per token blows up on the outlier model', async () => {
  const dir = `${MODELS}llama-small-outliers`;
  const ids = loadTokenizer(dir).encode(readEvalText(WIKITEXT));
  const fp = await perplexity(loadLlama(dir, cpu), ids, { seqLen: 512, maxWindows: 1 });
  const model = loadLlama(dir, cpu);
  await quantizeModel(model, resolveRecipe('rtn-w4a4'), undefined);
  const q = await perplexity(model, ids, { seqLen: 512, maxWindows: 1 });
  assert.ok(q.ppl > 3 * fp.ppl, `W4A4 ${q.ppl} vs fp ${fp.ppl}`);
});
