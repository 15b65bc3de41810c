/**
 * `llmq export`: llama-tiny quantized by llmq, exported to AutoAWQ GEMM, GPTQ v1 and
 * compressed-tensors pack-quantized, read back with naive unpackers written here from the layout
 * descriptions (bit shifts in the documented order), must dequantize exactly to llmq's own weights
 * with fp16-rounded scales. Also: config.json keys, fp16 plain tensors, refusals, --force/atomicity.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { exportCommand } from '../src/cli/export.ts';
import { UserError } from '../src/errors.ts';
import { type ExportLayout, exportCheckpoint } from '../src/io/export/index.ts';
import { type Checkpoint, openCheckpoint, writeSafetensors } from '../src/io/safetensors.ts';
import { LINEARS, type LlamaModel, linearTensorName, type QuantizedWeight } from '../src/model/llama.ts';
import '../src/quant/methods.ts';
import { type Recipe, resolveRecipe } from '../src/quant/recipe.ts';
import { dequantizeWeight } from '../src/quant/weights.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { bf16ToF32, f16ToF32, f32ToF16 } from '../src/tensor/dtype.ts';
import { MODELS, savedTinyCheckpoint } from './helpers.ts';

const cpu = new CpuBackend();
const TINY = `${MODELS}llama-tiny`;
const ROOT = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-export-'));
after(() => fs.rmSync(ROOT, { recursive: true, force: true }));

let serial = 0;

function recipeOf(obj: Record<string, unknown>): Recipe {
  const file = path.join(ROOT, `recipe-${serial++}.json`);
  fs.writeFileSync(file, JSON.stringify(obj));
  return resolveRecipe(file);
}

interface Quantized {
  dir: string;
  model: LlamaModel;
}

async function quantized(recipe: Recipe, withCalibration = false): Promise<Quantized> {
  const dir = path.join(ROOT, `q-${serial++}`);
  return { dir, model: await savedTinyCheckpoint(cpu, recipe, dir, withCalibration) };
}

// ---------------------------------------------------------------------------------------------
// Naive readers, straight from the layout descriptions. Each returns the [out, in] weight.

function get(ck: Checkpoint, name: string, dtype: string, shape?: number[]) {
  const t = ck.read(name);
  assert.equal(t.dtype, dtype, name);
  if (shape) assert.deepEqual(t.shape, shape, name);
  return t.data;
}

const AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7];

/** AutoAWQ GEMM: qweight [in, out/8]; nibble k of a word is output column 8j + AWQ_ORDER[k]. */
function awqWeight(ck: Checkpoint, p: string, out: number, inp: number): Float32Array {
  const qweight = get(ck, `${p}.qweight`, 'I32', [inp, out / 8]) as Int32Array;
  const scales = f16ToF32(get(ck, `${p}.scales`, 'F16') as Uint16Array);
  const nG = scales.length / out;
  const qzeros = get(ck, `${p}.qzeros`, 'I32', [nG, out / 8]) as Int32Array;
  const group = inp / nG;
  const w = new Float32Array(out * inp);
  for (let i = 0; i < inp; i++)
    for (let o = 0; o < out; o++) {
      const shift = 4 * AWQ_ORDER.indexOf(o % 8);
      const g = Math.floor(i / group);
      const q = (qweight[i * (out / 8) + Math.floor(o / 8)] >>> shift) & 15;
      const z = (qzeros[g * (out / 8) + Math.floor(o / 8)] >>> shift) & 15;
      w[o * inp + i] = (q - z) * scales[g * out + o];
    }
  return w;
}

/** GPTQ v1: qweight [in/pf, out] packed along the input dim, low bits first; zeros stored minus 1. */
function gptqWeight(ck: Checkpoint, p: string, out: number, inp: number, bits: number): Float32Array {
  const pf = 32 / bits;
  const mask = 2 ** bits - 1;
  const qweight = get(ck, `${p}.qweight`, 'I32', [inp / pf, out]) as Int32Array;
  const scales = f16ToF32(get(ck, `${p}.scales`, 'F16') as Uint16Array);
  const nG = scales.length / out;
  const qzeros = get(ck, `${p}.qzeros`, 'I32', [nG, out / pf]) as Int32Array;
  const gIdx = get(ck, `${p}.g_idx`, 'I32', [inp]) as Int32Array;
  const w = new Float32Array(out * inp);
  for (let i = 0; i < inp; i++)
    for (let o = 0; o < out; o++) {
      const g = gIdx[i];
      const q = (qweight[Math.floor(i / pf) * out + o] >>> (bits * (i % pf))) & mask;
      const z = ((qzeros[g * (out / pf) + Math.floor(o / pf)] >>> (bits * (o % pf))) & mask) + 1;
      w[o * inp + i] = (q - z) * scales[g * out + o];
    }
  return w;
}

/** compressed-tensors pack-quantized: signed value + 2^(b-1), pf per int32 along the input, low first. */
function ctWeight(ck: Checkpoint, p: string, out: number, inp: number, bits: number): Float32Array {
  const pf = 32 / bits;
  const mask = 2 ** bits - 1;
  const half = 2 ** (bits - 1);
  const packed = get(ck, `${p}.weight_packed`, 'I32', [out, inp / pf]) as Int32Array;
  assert.deepEqual(
    [...(get(ck, `${p}.weight_shape`, 'I64', [2]) as BigInt64Array)],
    [BigInt(out), BigInt(inp)],
  );
  const scales = f16ToF32(get(ck, `${p}.weight_scale`, 'F16') as Uint16Array);
  const nG = scales.length / out;
  const zp = ck.has(`${p}.weight_zero_point`)
    ? (get(ck, `${p}.weight_zero_point`, 'I32', [out / pf, nG]) as Int32Array)
    : undefined;
  const gIdx = ck.has(`${p}.weight_g_idx`)
    ? (get(ck, `${p}.weight_g_idx`, 'I32', [inp]) as Int32Array)
    : undefined;
  const w = new Float32Array(out * inp);
  for (let o = 0; o < out; o++)
    for (let i = 0; i < inp; i++) {
      const g = gIdx ? gIdx[i] : Math.floor(i / (inp / nG));
      const q = ((packed[o * (inp / pf) + Math.floor(i / pf)] >>> (bits * (i % pf))) & mask) - half;
      const z = zp ? ((zp[Math.floor(o / pf) * nG + g] >>> (bits * (o % pf))) & mask) - half : 0;
      w[o * inp + i] = (q - z) * scales[o * nG + g];
    }
  return w;
}

// ---------------------------------------------------------------------------------------------

const round16 = (x: Float32Array) => f16ToF32(f32ToF16(x));

/** llmq's dequantized weight with its scales rounded to fp16. */
function expectedWeight(q: QuantizedWeight): Float32Array {
  return dequantizeWeight({ ...q, encoded: { ...q.encoded, scales: round16(q.encoded.scales) } });
}

function assertSame(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, what);
  let bad = 0;
  let first = -1;
  for (let i = 0; i < got.length; i++)
    if (got[i] !== want[i]) {
      bad++;
      if (first < 0) first = i;
    }
  assert.equal(bad, 0, `${what}: ${bad} values differ, first at ${first}: ${got[first]} vs ${want[first]}`);
}

function readWeight(layout: ExportLayout, ck: Checkpoint, p: string, out: number, inp: number, bits: number) {
  if (layout === 'autoawq') return awqWeight(ck, p, out, inp);
  if (layout === 'gptq') return gptqWeight(ck, p, out, inp, bits);
  return ctWeight(ck, p, out, inp, bits);
}

/** Scale statistics computed here from the in-memory encodings, for comparison with the summary. */
function scaleStats(model: LlamaModel) {
  let scales = 0;
  let changed = 0;
  let maxRel = 0;
  for (const L of model.layers)
    for (const lin of Object.values(L.linears)) {
      const q = lin.quantized;
      if (!q) continue;
      const e = q.encoded;
      const s16 = round16(e.scales);
      scales += e.scales.length;
      for (let i = 0; i < s16.length; i++) if (s16[i] !== e.scales[i]) changed++;
      const plain = dequantizeWeight(q);
      const moved = expectedWeight(q);
      for (let i = 0; i < plain.length; i++)
        if (plain[i] !== 0) maxRel = Math.max(maxRel, Math.abs(moved[i] - plain[i]) / Math.abs(plain[i]));
    }
  return { scales, changed, maxRel };
}

function exportAndCheck(src: Quantized, layout: ExportLayout, bits: number) {
  const out = path.join(ROOT, `e-${serial++}`);
  const summary = exportCheckpoint(src.dir, layout, out);
  const ck = openCheckpoint(out);
  try {
    src.model.layers.forEach((L, i) => {
      for (const name of LINEARS) {
        const q = L.linears[name].quantized as QuantizedWeight;
        const p = linearTensorName(i, name).replace(/\.weight$/, '');
        assert.ok(!ck.has(`${p}.weight`), `${p}.weight must not be written`);
        const got = readWeight(layout, ck, p, q.encoded.rows, q.encoded.cols, bits);
        assertSame(got, expectedWeight(q), `${layout} ${p}`);
      }
    });
    const source = openCheckpoint(src.dir);
    for (const name of ['model.embed_tokens.weight', 'model.norm.weight', 'lm_head.weight']) {
      const plain = source.read(name);
      const values =
        plain.dtype === 'BF16' ? bf16ToF32(plain.data as Uint16Array) : (plain.data as Float32Array);
      assert.deepEqual(get(ck, name, 'F16', plain.shape), f32ToF16(values), name);
    }
    source.close();
  } finally {
    ck.close();
  }
  const stats = scaleStats(src.model);
  assert.equal(summary.scales, stats.scales);
  assert.equal(summary.scales_changed, stats.changed);
  assert.ok(stats.changed > 0 && stats.maxRel > 0 && stats.maxRel <= 2 ** -11, `max rel ${stats.maxRel}`);
  // the summary's is the exact scale ratio; here the weights carry f32 rounding (2^-24 each)
  assert.ok(
    Math.abs(summary.scale_max_rel_change - stats.maxRel) <= 2 ** -22,
    `${summary.scale_max_rel_change}`,
  );
  assert.equal(summary.quantized_linears, src.model.layers.length * LINEARS.length);
  const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
  assert.equal(config.torch_dtype, 'float16');
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) assert.ok(fs.existsSync(path.join(out, f)), f);
  return { out, summary, qc: config.quantization_config as Record<string, unknown> };
}

function throwsUser(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof UserError && pattern.test(e.message));
}

// ---------------------------------------------------------------------------------------------

describe('INT4 asymmetric per channel (rtn-w4)', async () => {
  const src = await quantized(resolveRecipe('rtn-w4'));
  test('autoawq: interleaved nibbles, group -1', () => {
    const { qc } = exportAndCheck(src, 'autoawq', 4);
    assert.deepEqual(qc, {
      quant_method: 'awq',
      version: 'gemm',
      bits: 4,
      group_size: -1,
      w_bit: 4,
      q_group_size: -1,
      zero_point: true,
      modules_to_not_convert: null,
    });
  });
  test('gptq: one group, g_idx all 0, desc_act false', () => {
    const { qc } = exportAndCheck(src, 'gptq', 4);
    assert.equal(qc.quant_method, 'gptq');
    assert.equal(qc.checkpoint_format, 'gptq');
    assert.deepEqual([qc.bits, qc.group_size, qc.desc_act, qc.sym], [4, -1, false, false]);
  });
  test('compressed-tensors: channel strategy with packed zero points', () => {
    const { qc } = exportAndCheck(src, 'compressed-tensors', 4);
    assert.equal(qc.quant_method, 'compressed-tensors');
    assert.equal(qc.format, 'pack-quantized');
    assert.deepEqual(qc.ignore, ['lm_head']);
    const group = (qc.config_groups as Record<string, Record<string, unknown>>).group_0;
    assert.deepEqual(group.targets, ['Linear']);
    assert.equal(group.input_activations, null);
    const w = group.weights as Record<string, unknown>;
    assert.deepEqual(
      [w.num_bits, w.type, w.symmetric, w.strategy, w.group_size, w.actorder],
      [4, 'int', false, 'channel', null, null],
    );
  });
});

describe('INT4 asymmetric groups of 64', async () => {
  const src = await quantized(recipeOf({ name: 'g64', weights: 'int4-g64' }));
  for (const layout of ['autoawq', 'gptq', 'compressed-tensors'] as const)
    test(`${layout}`, () => {
      const { qc } = exportAndCheck(src, layout, 4);
      if (layout === 'autoawq') assert.equal(qc.q_group_size, 64);
      if (layout === 'gptq') assert.equal(qc.group_size, 64);
    });

  test('--force replaces, an existing --out is refused, nothing temporary is left', () => {
    const parent = fs.mkdtempSync(path.join(ROOT, 'force-'));
    const out = path.join(parent, 'ct');
    exportCheckpoint(src.dir, 'compressed-tensors', out);
    throwsUser(() => exportCheckpoint(src.dir, 'autoawq', out), /already exists.*--force/);
    assert.equal(
      JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).quantization_config.quant_method,
      'compressed-tensors',
    );
    exportCheckpoint(src.dir, 'autoawq', out, { force: true });
    assert.equal(
      JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).quantization_config.quant_method,
      'awq',
    );
    assert.deepEqual(fs.readdirSync(parent), ['ct']);
    throwsUser(() => exportCheckpoint(src.dir, 'gptq', src.dir, { force: true }), /is the source checkpoint/);
  });

  test('a value beyond fp16 fails mid-write and leaves the existing output untouched', () => {
    const broken = path.join(ROOT, `broken-${serial++}`);
    fs.cpSync(src.dir, broken, { recursive: true });
    const ck = openCheckpoint(broken);
    const tensors = ck.names().map((name) => {
      const t = ck.read(name);
      if (name !== 'model.norm.weight') return { name, ...t };
      const values =
        t.dtype === 'BF16' ? bf16ToF32(t.data as Uint16Array) : Float32Array.from(t.data as Float32Array);
      values[3] = 1e6;
      return { name, dtype: 'F32' as const, shape: t.shape, data: values };
    });
    ck.close();
    writeSafetensors(path.join(broken, 'model.safetensors'), tensors);
    const parent = fs.mkdtempSync(path.join(ROOT, 'atomic-'));
    const out = path.join(parent, 'awq');
    exportCheckpoint(src.dir, 'autoawq', out);
    const before = fs.readFileSync(path.join(out, 'model.safetensors'));
    throwsUser(
      () => exportCheckpoint(broken, 'gptq', out, { force: true }),
      /model\.norm\.weight" value 1000000 at index 3 does not fit fp16/,
    );
    assert.deepEqual(fs.readdirSync(parent), ['awq']);
    assert.ok(fs.readFileSync(path.join(out, 'model.safetensors')).equals(before));
  });

  test('exportCommand --json prints one summary object', async () => {
    const out = path.join(ROOT, `cli-${serial++}`);
    const lines: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((s: string) => lines.push(s) > 0) as typeof process.stdout.write;
    try {
      await exportCommand([src.dir, '--to', 'gptq', '--out', out, '--json']);
    } finally {
      process.stdout.write = write;
    }
    assert.equal(lines.length, 1);
    const summary = JSON.parse(lines[0]);
    assert.equal(summary.layout, 'gptq');
    assert.equal(summary.group_size, 64);
    assert.equal(summary.quantized_linears, 28);
    await assert.rejects(
      exportCommand([src.dir, '--to', 'gguf', '--out', out]),
      /--to "gguf" is not a target/,
    );
    await assert.rejects(exportCommand([src.dir, '--out', out]), /--to .* is required/);
    await assert.rejects(
      exportCommand(['model.gguf', '--to', 'gguf-q4_0', '--out', out]),
      /model\.gguf is a GGUF file; export reads a Hugging Face model directory/,
    );
  });
});

describe('INT8 symmetric per channel (rtn-w8)', async () => {
  const src = await quantized(resolveRecipe('rtn-w8'));
  test('gptq: implied zero 128 stored as 127, sym true', () => {
    const { qc } = exportAndCheck(src, 'gptq', 8);
    assert.deepEqual([qc.bits, qc.sym, qc.group_size], [8, true, -1]);
  });
  test('compressed-tensors: four per int32, no zero point tensor', () => {
    const { out, qc } = exportAndCheck(src, 'compressed-tensors', 8);
    const w = (qc.config_groups as Record<string, Record<string, Record<string, unknown>>>).group_0.weights;
    assert.deepEqual([w.num_bits, w.symmetric, w.strategy], [8, true, 'channel']);
    const ck = openCheckpoint(out);
    assert.ok(!ck.has('model.layers.0.self_attn.q_proj.weight_zero_point'));
    ck.close();
  });
  test('autoawq refuses INT8', () => {
    throwsUser(
      () => exportCheckpoint(src.dir, 'autoawq', path.join(ROOT, 'x')),
      /autoawq holds INT4 weights only/,
    );
  });
});

describe('GPTQ act_order (int4 g64, g_idx)', async () => {
  const src = await quantized(
    recipeOf({ name: 'gptq-ao', weights: 'int4-g64', steps: [{ gptq: { actOrder: true } }] }),
    true,
  );
  test('the checkpoint really has non-trivial g_idx', () => {
    const g = src.model.layers[0].linears.q_proj.quantized?.gIdx;
    assert.ok(g?.some((v, c) => v !== Math.floor(c / 64)));
  });
  test('gptq: g_idx carried, desc_act true', () => {
    const { qc, summary } = exportAndCheck(src, 'gptq', 4);
    assert.equal(qc.desc_act, true);
    assert.equal(summary.act_order, true);
  });
  test('compressed-tensors: weight_g_idx and actorder "group"', () => {
    const { qc } = exportAndCheck(src, 'compressed-tensors', 4);
    const w = (qc.config_groups as Record<string, Record<string, Record<string, unknown>>>).group_0.weights;
    assert.equal(w.actorder, 'group');
  });
  test('autoawq refuses g_idx', () => {
    throwsUser(
      () => exportCheckpoint(src.dir, 'autoawq', path.join(ROOT, 'x')),
      /g_idx.*autoawq cannot hold/,
    );
  });
});

describe('linears the recipe leaves in full precision', async () => {
  const src = await quantized(
    recipeOf({
      name: 'no-down',
      weights: 'int4-g64',
      targets: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj'],
    }),
  );
  const down = (i: number) => `model.layers.${i}.mlp.down_proj`;
  test('compressed-tensors lists them in ignore and writes them as fp16 weights', () => {
    const out = path.join(ROOT, `e-${serial++}`);
    const summary = exportCheckpoint(src.dir, 'compressed-tensors', out);
    assert.equal(summary.quantized_linears, 24);
    const qc = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).quantization_config;
    assert.deepEqual(qc.ignore, ['lm_head', down(0), down(1), down(2), down(3)]);
    const ck = openCheckpoint(out);
    assert.equal(ck.read(`${down(0)}.weight`).dtype, 'F16');
    assert.ok(!ck.has(`${down(0)}.weight_packed`));
    ck.close();
  });
  test('autoawq names them in modules_to_not_convert; gptq refuses', () => {
    const out = path.join(ROOT, `e-${serial++}`);
    exportCheckpoint(src.dir, 'autoawq', out);
    const qc = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).quantization_config;
    assert.deepEqual(qc.modules_to_not_convert, ['mlp.down_proj']);
    throwsUser(() => exportCheckpoint(src.dir, 'gptq', path.join(ROOT, 'x')), /down_proj .*not quantized/);
  });
});

describe('refusals', () => {
  test('non-INT formats, activation quantization, salient columns, unsupported bits, split fused layers', async () => {
    const cases: [Recipe, ExportLayout, RegExp][] = [
      [resolveRecipe('mxfp4'), 'compressed-tensors', /weight format mxfp4 is not INT/],
      [resolveRecipe('rtn-w8a8'), 'gptq', /quantizes activations \(int8-row-sym\).*weight-only/],
      [
        recipeOf({ weights: 'int3-g64' }),
        'gptq',
        /gptq export supports INT4 and INT8, the checkpoint is INT3/,
      ],
      [
        recipeOf({ weights: 'int4-g64', targets: ['q_proj', 'k_proj'] }),
        'autoawq',
        /not all of q_proj, k_proj, v_proj/,
      ],
    ];
    for (const [recipe, layout, pattern] of cases) {
      const src = await quantized(recipe);
      const out = path.join(ROOT, `refused-${serial++}`);
      throwsUser(() => exportCheckpoint(src.dir, layout, out), pattern);
      assert.ok(!fs.existsSync(out));
    }
    const mixed = recipeOf({ weights: 'int4-g64', steps: [{ mixed: { salientPercent: 4 } }] });
    const src = await quantized(mixed, true);
    throwsUser(
      () => exportCheckpoint(src.dir, 'compressed-tensors', path.join(ROOT, 'x')),
      /salient columns/,
    );
    throwsUser(() => exportCheckpoint(TINY, 'gptq', path.join(ROOT, 'x')), /no quantization_config/);
  });
});
