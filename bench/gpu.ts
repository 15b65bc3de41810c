/**
 * WebGPU benchmarks (meant for a machine with a GPU; see BENCHMARKS.md for how it is run there):
 *  - f32 GEMM 4096^3 and Llama-3-8B linear shapes at 2048 tokens (f32 and packed-bf16 weights), per
 *    GEMM tile configuration, TFLOP/s;
 *  - decode GEMVs (one row of x) on Llama-3-8B shapes, bf16 / W4 g128 / int8 weights, per GEMV
 *    tuning (chunked vec4 loads or the scalar loops, unroll): weight bytes read a second;
 *  - decode row ops (one row: RMSNorm, the int8 activation quantizer, FlatQuant's Kronecker transform;
 *    and the per-token fake quantizer of a 2048-token prefill): GPU microseconds a dispatch, profiled;
 *  - int8 x int8 -> int32 GEMM 4096^3 and Llama-3-8B shapes (TOPS), subgroup-matrix tiles and dot4,
 *    each checked exactly against the CPU on a small shape first;
 *  - llama-small WikiText-2 perplexity wall time (windows of 2048) from pre-tokenized ids;
 *  - synthetic Llama-3-8B prefill of 2048 tokens (random bf16 weights, one layer's weights shared by
 *    all 32 layers: same work and memory traffic per layer, 2 GB of uploads instead of 16 GB).
 *
 *   node --import ./src/loader.mjs bench/gpu.ts [--model DIR] [--tokens FILE.i32] [--out FILE.json] [--skip gemm,gemm-small,gemv,rows,int8,ppl,8b] [--ppl-batch 1,2,4]
 * Prints JSON lines and writes them all to --out.
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { perplexity } from '../src/eval/perplexity.ts';
import { LINEARS } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { type DType, type PackedWeight, packedTensors, type Tensor } from '../src/tensor/tensor.ts';
import { envFlags, WebGpuBackend, WebGpuTensor } from '../src/tensor/webgpu/backend.ts';
import {
  DEFAULT_ATTENTION_KEYS,
  DEFAULT_ATTENTION_WORKGROUPS,
  DEFAULT_GEMV,
  type GemvTuning,
} from '../src/tensor/webgpu/context.ts';
import { Int8Gemm, type SubgroupMatrixTile } from '../src/tensor/webgpu/int8.ts';
import type { GemmTile } from '../src/tensor/webgpu/matmul.ts';
import { maxRelErr, nearTies } from '../test/helpers.ts';
import { synthLlama3 } from './synth-model.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    tokens: { type: 'string' },
    out: { type: 'string' },
    skip: { type: 'string', default: '' },
    windows: { type: 'string' },
    'ppl-batch': { type: 'string', default: '1' },
  },
});
const skip = new Set(values.skip.split(',').filter((s) => s));
const results: Record<string, unknown>[] = [];
function report(r: Record<string, unknown>): void {
  console.log(JSON.stringify(r));
  results.push(r);
  if (values.out) fs.writeFileSync(values.out, `${JSON.stringify(results, null, 1)}\n`);
}

// unquantized timestamps for the profiled row ops
const gpu = await WebGpuBackend.create({
  flags: [...envFlags(), 'disable-dawn-features=timestamp_quantization'],
});
report({
  what: 'device',
  adapter: gpu.describe(),
  features: [...gpu.device.features],
  maxBinding: gpu.device.limits.maxStorageBufferBindingSize,
});

function randomTensor(rows: number, cols: number, dtype: DType): Tensor {
  const f = new Float32Array(rows * cols);
  for (let i = 0; i < f.length; i++) f[i] = Math.random() - 0.5;
  if (dtype === 'f32') return gpu.upload(f, [rows, cols], 'f32');
  const bits = new Uint16Array(f.length);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < f.length; i++) bits[i] = u[i] >>> 16;
  return gpu.upload(bits, [rows, cols], 'bf16');
}

/** Mean seconds of one call of fn, after a warm-up, over at least `reps` calls and 0.5 s. */
async function timeIt(fn: () => Tensor, reps = 5): Promise<number> {
  fn().dispose();
  await gpu.sync();
  let n = 0;
  const t0 = performance.now();
  do {
    for (let i = 0; i < reps; i++) fn().dispose();
    n += reps;
    await gpu.sync();
  } while (performance.now() - t0 < 500);
  return (performance.now() - t0) / 1000 / n;
}

async function gemm(
  M: number,
  N: number,
  K: number,
  dtype: DType,
  tile: GemmTile,
  label: string,
): Promise<number> {
  const x = randomTensor(M, K, 'f32');
  const w = randomTensor(N, K, dtype);
  gpu.gemmTile = tile;
  const s = await timeIt(() => gpu.linear(x, w));
  x.dispose();
  w.dispose();
  const tflops = (2 * M * N * K) / s / 1e12;
  report({
    what: 'gemm',
    label,
    M,
    N,
    K,
    weights: dtype,
    tile: `${tile.tm}x${tile.tn}x${tile.bk}${tile.prefetch ? ' prefetch' : ''}`,
    ms: s * 1e3,
    tflops,
  });
  return tflops;
}

if (!skip.has('gemm')) {
  const tiles: GemmTile[] = [
    { tm: 8, tn: 8, bk: 8 },
    { tm: 8, tn: 8, bk: 8, prefetch: true },
    { tm: 8, tn: 8, bk: 16, prefetch: true },
    { tm: 8, tn: 8, bk: 16 },
    { tm: 8, tn: 8, bk: 8, prefetch: true },
    { tm: 8, tn: 8, bk: 8 },
  ];
  let best = tiles[0];
  let bestTflops = 0;
  for (const tile of tiles) {
    const t = await gemm(4096, 4096, 4096, 'f32', tile, '4096^3');
    if (t > bestTflops) [best, bestTflops] = [tile, t];
  }
  await gemm(4096, 4096, 4096, 'bf16', best, '4096^3');
  const shapes: [string, number, number][] = [
    ['q/o_proj', 4096, 4096],
    ['k/v_proj', 1024, 4096],
    ['gate/up_proj', 14336, 4096],
    ['down_proj', 4096, 14336],
    ['lm_head', 128256, 4096],
  ];
  for (const [label, N, K] of shapes) await gemm(2048, N, K, 'bf16', best, `llama-3-8b ${label}`);
  gpu.gemmTile = best;
}

// short prompts: a 128 x 128 tile leaves most of the GPU idle at M = 128 (q_proj: 32 workgroups)
if (!skip.has('gemm-small')) {
  const tiles: GemmTile[] = [
    { tm: 8, tn: 8, bk: 8, prefetch: true },
    { tm: 4, tn: 8, bk: 16, prefetch: true },
    { tm: 4, tn: 4, bk: 16, prefetch: true },
    { tm: 4, tn: 4, bk: 8, prefetch: true },
  ];
  const shapes: [string, number, number][] = [
    ['q/o_proj', 4096, 4096],
    ['gate/up_proj', 14336, 4096],
    ['down_proj', 4096, 14336],
  ];
  const tile = gpu.gemmTile;
  for (const M of [128, 512])
    for (const [label, N, K] of shapes)
      for (const t of tiles) await gemm(M, N, K, 'bf16', t, `llama-3-8b ${label} M ${M}`);
  gpu.gemmTile = tile;
}

function randomInt8(rows: number, cols: number): Tensor {
  const a = new Int8Array(rows * cols);
  for (let i = 0; i < a.length; i++) a[i] = Math.floor(Math.random() * 256) - 128;
  return gpu.upload(a, [rows, cols], 'i8');
}

function kernelName(g: Int8Gemm): string {
  if (g.path === 'dot4') return `dot4 ${g.dot4Tile.t}x${g.dot4Tile.t} bkw ${g.dot4Tile.bkw}`;
  const t = g.sgmTile;
  return `sgm ${t.style} ${t.tm}x${t.tn}${t.style === 'shared' ? ` sg ${t.sgm}x${t.sgn} bk ${t.bk}` : ''}`;
}

/** Whether the kernel equals the CPU's exact int8 GEMM on a 256 x 192 x 512 problem. */
async function int8Exact(g: Int8Gemm): Promise<boolean> {
  const [M, N, K] = [256, 192, 512];
  const a = randomInt8(M, K);
  const b = randomInt8(N, K);
  const cpu = new CpuBackend();
  const host = async (t: Tensor) => Int8Array.from(await gpu.read(t));
  const want = await cpu.read(
    cpu.matmulInt8(cpu.upload(await host(a), [M, K], 'i8'), cpu.upload(await host(b), [N, K], 'i8')),
  );
  const st = (t: Tensor) => (t as WebGpuTensor).storage;
  const c = g.run(st(a), st(b));
  const got = await gpu.read(new WebGpuTensor(gpu, [M, N], 'i32', c));
  gpu.ctx.releaseStorage(c);
  return got.every((v, i) => v === want[i]);
}

const INT8_ROUNDS = 3;

async function int8Gemm(g: Int8Gemm, M: number, N: number, K: number, label: string): Promise<number> {
  const a = randomInt8(M, K);
  const b = randomInt8(N, K);
  const st = (t: Tensor) => (t as WebGpuTensor).storage;
  const s = await timeIt(() => {
    const c = g.run(st(a), st(b));
    return { dispose: () => gpu.ctx.releaseStorage(c) } as Tensor;
  });
  a.dispose();
  b.dispose();
  const tops = (2 * M * N * K) / s / 1e12;
  report({ what: 'int8gemm', label, M, N, K, kernel: kernelName(g), ms: s * 1e3, tops });
  return tops;
}

if (!skip.has('int8')) {
  const direct = (tm: number, tn: number): SubgroupMatrixTile => ({
    style: 'direct',
    tm,
    tn,
    sgm: 1,
    sgn: 1,
    bk: 32,
  });
  const shared = (tm: number, tn: number, sgm: number, sgn: number, bk: number): SubgroupMatrixTile => ({
    style: 'shared',
    tm,
    tn,
    sgm,
    sgn,
    bk,
  });
  const tiles: SubgroupMatrixTile[] = [
    shared(2, 4, 4, 4, 64),
    shared(4, 2, 4, 4, 64),
    shared(2, 2, 4, 4, 64),
    direct(4, 2),
  ];
  const kernels: Int8Gemm[] = [];
  const warm = new Int8Gemm(gpu.ctx);
  await warm.probe('dot4');
  // the clocks take seconds of load to ramp up: without this the first kernels measure low
  for (let i = 0; i < 6; i++) await int8Gemm(warm, 4096, 4096, 4096, 'warm-up (GPU clocks)');
  for (const tile of tiles) {
    const g = new Int8Gemm(gpu.ctx, tile);
    await g.probe('auto');
    if (g.path === 'subgroup-matrix') kernels.push(g);
    report({ what: 'int8probe', tile, path: g.path, reason: g.reason });
  }
  for (const dot4 of [
    { t: 4, bkw: 16 },
    { t: 8, bkw: 8 },
    { t: 8, bkw: 16 },
  ]) {
    const d4 = new Int8Gemm(gpu.ctx, undefined, dot4);
    await d4.probe('dot4');
    kernels.push(d4);
  }
  const exactKernels: Int8Gemm[] = [];
  for (const g of kernels) {
    const exact = await int8Exact(g);
    report({
      what: 'int8check',
      kernel: g.path === 'dot4' ? 'dot4' : `sgm ${g.sgmTile.tm}x${g.sgmTile.tn}`,
      exact,
    });
    if (exact) exactKernels.push(g);
  }
  // rounds over all kernels, so that clock drift shows up as spread, not as one kernel's handicap
  const tops = new Map<Int8Gemm, number[]>(exactKernels.map((g) => [g, []]));
  for (let round = 1; round <= INT8_ROUNDS; round++)
    for (const g of exactKernels)
      tops.get(g)?.push(await int8Gemm(g, 4096, 4096, 4096, `4096^3 round ${round}`));
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
  const best = [...tops.entries()].reduce((x, y) => (median(y[1]) > median(x[1]) ? y : x))[0];
  const shapes: [string, number, number][] = [
    ['q/o_proj', 4096, 4096],
    ['k/v_proj', 1024, 4096],
    ['gate/up_proj', 14336, 4096],
    ['down_proj', 4096, 14336],
  ];
  for (const [label, N, K] of shapes) await int8Gemm(best, 2048, N, K, `llama-3-8b ${label}`);
}

/** Random codes words: 4-bit codes eight to an i32, or int8 codes four to one. */
function randomCodeWords(words: number): Int32Array {
  const out = new Int32Array(words);
  for (let i = 0; i < words; i++) out[i] = (Math.random() * 2 ** 32) | 0;
  return out;
}

/** One decode-step GEMV (one row of x) of each weight kind, on the 8B's shapes. */
function gemvCases(
  N: number,
  K: number,
): { kind: string; bytes: number; run: () => Tensor; free: () => void }[] {
  const x = randomTensor(1, K, 'f32');
  const w = randomTensor(N, K, 'bf16');
  const groups = (N * K) / 128;
  const packed: PackedWeight = {
    codes: gpu.upload(randomCodeWords((N * K) / 8), [N, K / 8], 'i32'),
    scales: gpu.upload(new Float32Array(groups).fill(0.004), [groups], 'f32'),
    zeros: gpu.upload(new Float32Array(groups).fill(8), [groups], 'f32'),
    rows: N,
    cols: K,
    codeBits: 4,
    group: 128,
  };
  const xi = gpu.upload(new Int8Array(randomCodeWords(K / 4).buffer), [1, K], 'i8');
  const wi = gpu.upload(new Int8Array(randomCodeWords((N * K) / 4).buffer), [N, K], 'i8');
  return [
    { kind: 'bf16', bytes: 2 * N * K, run: () => gpu.linear(x, w), free: () => w.dispose() },
    {
      kind: 'W4 g128',
      bytes: (N * K) / 2 + 8 * groups,
      run: () => gpu.linearPacked(x, packed),
      free: () => [...packedTensors(packed), x].forEach((t) => t.dispose()),
    },
    {
      kind: 'int8 (dot4)',
      bytes: N * K,
      run: () => gpu.matmulInt8(xi, wi),
      free: () => [xi, wi].forEach((t) => t.dispose()),
    },
  ];
}

if (!skip.has('gemv')) {
  const tunings: [string, GemvTuning][] = [
    ['scalar loops', { chunks: false, unroll: 4 }],
    ['chunks, unroll 1', { chunks: true, unroll: 1 }],
    ['chunks, unroll 2', { chunks: true, unroll: 2 }],
    ['chunks, unroll 4', { chunks: true, unroll: 4 }],
    ['chunks, unroll 8', { chunks: true, unroll: 8 }],
  ];
  const shapes: [string, number, number][] = [
    ['q/o_proj', 4096, 4096],
    ['gate/up_proj', 14336, 4096],
    ['down_proj', 4096, 14336],
    ['lm_head', 128256, 4096],
  ];
  for (const [label, N, K] of shapes) {
    const cases = gemvCases(N, K);
    for (const c of cases) {
      let first: Float32Array | undefined;
      for (const [name, tuning] of tunings) {
        gpu.ctx.gemv = tuning;
        // every tuning computes the same products: its outputs against the first tuning's
        const y = c.run();
        const got = await gpu.read(y);
        y.dispose();
        first ??= got;
        const s = await timeIt(c.run, 20);
        report({
          what: 'gemv',
          label: `llama-3-8b ${label}`,
          N,
          K,
          weights: c.kind,
          tuning: name,
          us: s * 1e6,
          gbPerSecond: c.bytes / s / 1e9,
          maxRelDiff: maxRelErr(got, first),
        });
      }
    }
    for (const c of cases) c.free();
  }
  gpu.ctx.gemv = DEFAULT_GEMV;
}

/** Reports `op`: profiled GPU microseconds a call of `run`, its dispatches summed and per kernel key. */
async function reportRowOp(op: string, run: () => Tensor[], reps = 50): Promise<void> {
  for (let i = 0; i < 3; i++) for (const t of run()) t.dispose();
  await gpu.sync();
  gpu.ctx.startProfile();
  for (let i = 0; i < reps; i++) for (const t of run()) t.dispose();
  const times = await gpu.ctx.stopProfile();
  const kernels = times.map((t) => ({ key: t.key, us: (t.ms * 1000) / reps }));
  report({ what: 'rowop', op, us: kernels.reduce((a, k) => a + k.us, 0), kernels });
}

if (!skip.has('rows')) {
  const int8Row = { kind: 'int', bits: 8, symmetric: true, granularity: 'row' } as const;
  const w4a4Row = { ...int8Row, bits: 4, clip: 0.9 } as const;
  const factor = (n: number) => randomTensor(n, n, 'f32');
  const x64 = randomTensor(1, 64, 'f32');
  const x4096 = randomTensor(1, 4096, 'f32');
  const x14336 = randomTensor(1, 14336, 'f32');
  const prefill = randomTensor(2048, 4096, 'f32');
  const norm = { weight: randomTensor(1, 4096, 'bf16'), eps: 1e-5 };
  const kron = (x: Tensor, n1: number, n2: number) => {
    const [l, r] = [factor(n1), factor(n2)];
    return () => [gpu.kron(x, l, r)];
  };
  const rows = (r: { codes: Tensor; scales: Tensor } | undefined) => (r ? [r.codes, r.scales] : []);
  const ops: [string, () => Tensor[]][] = [
    ['floor: add of 64 values', () => [gpu.add(x64, x64)]],
    ['rmsnorm 4096', () => [gpu.rmsnorm(x4096, norm.weight, norm.eps)]],
    ['quantizeRowsInt8 4096', () => rows(gpu.quantizeRowsInt8(x4096, int8Row))],
    ['quantizeRowsInt8 14336', () => rows(gpu.quantizeRowsInt8(x14336, int8Row))],
    ['quantizeRowsInt8 W4A4 clip 4096', () => rows(gpu.quantizeRowsInt8(x4096, w4a4Row))],
    ['rmsnorm + quantizeRowsInt8 4096', () => rows(gpu.rmsnormQuantizeRowsInt8(x4096, norm, int8Row))],
    ['kron 4096 (64 x 64)', kron(x4096, 64, 64)],
    ['kron 4096 (32 x 128)', kron(x4096, 32, 128)],
    ['kron 14336 (112 x 128)', kron(x14336, 112, 128)],
    ['fakeQuant INT8 per token, 2048 x 4096', () => [gpu.fakeQuant(prefill, int8Row)]],
  ];
  for (const [op, run] of ops) await reportRowOp(op, run);
  await decodeAttentionRows();
  report({ what: 'rowop exactness', ...(await int8RowsExact()) });
}

/**
 * One decode step's cached attention at Llama-3-8B's shapes (32 query heads, 8 KV heads, head_dim
 * 128, f32 cache) after 256, 2048 and 8192 keys, for several chunk sizes (ContextOptions.attentionKeys)
 * and, at the default chunk, fewer workgroups aimed for (attentionWorkgroups; 1: never split).
 */
async function decodeAttentionRows(): Promise<void> {
  const [H, Hkv, Dh] = [32, 8, 128];
  const q = randomTensor(1, H * Dh, 'f32');
  for (const keys of [256, 2048, 8192]) {
    const [k, v] = [randomTensor(keys, Hkv * Dh, 'f32'), randomTensor(keys, Hkv * Dh, 'f32')];
    const shape = { queries: 1, past: keys - 1, numHeads: H, numKvHeads: Hkv, headDim: Dh };
    for (const chunk of [16, 32, 64, 128, 256]) {
      gpu.ctx.attentionKeys = chunk;
      await reportRowOp(`attentionCached 8B, ${keys} keys, chunks of ${chunk}`, () => [
        gpu.attentionCached(q, k, v, shape),
      ]);
    }
    gpu.ctx.attentionKeys = DEFAULT_ATTENTION_KEYS;
    for (const workgroups of [1, 64]) {
      gpu.ctx.attentionWorkgroups = workgroups;
      await reportRowOp(`attentionCached 8B, ${keys} keys, ${workgroups} workgroups aimed for`, () => [
        gpu.attentionCached(q, k, v, shape),
      ]);
    }
    gpu.ctx.attentionWorkgroups = DEFAULT_ATTENTION_WORKGROUPS;
    k.dispose();
    v.dispose();
  }
  gpu.ctx.attentionKeys = DEFAULT_ATTENTION_KEYS;
  q.dispose();
}

/**
 * The int8 row quantizer and the INT fake quantizer on this GPU against the CPU, bit for bit, on rows
 * whose values sit on and a few ulp from .5 ties of x / scale (where the hardware quotient, within
 * 2.5 ulp, must give way to the exact division).
 */
async function int8RowsExact(): Promise<{ values: number; codesDiffer: number; fakeQuantDiffer: number }> {
  const cpu = new CpuBackend();
  const [rows, cols] = [64, 4096];
  const { x } = nearTies(rows, cols);
  const spec = { kind: 'int', bits: 8, symmetric: true, granularity: 'row' } as const;
  const [xg, xc] = [gpu.upload(x, [rows, cols], 'f32'), cpu.upload(x, [rows, cols], 'f32')];
  const differ = (a: Float32Array, b: Float32Array) =>
    a.reduce((n, v, i) => n + (Object.is(v, b[i]) ? 0 : 1), 0);
  const codesDiffer = differ(
    await gpu.read(gpu.quantizeRowsInt8(xg, spec).codes),
    await cpu.read(cpu.quantizeRowsInt8(xc, spec).codes),
  );
  const fakeQuantDiffer = differ(
    await gpu.read(gpu.fakeQuant(xg, spec)),
    await cpu.read(cpu.fakeQuant(xc, spec)),
  );
  return { values: rows * cols, codesDiffer, fakeQuantDiffer };
}

if (!skip.has('ppl') && values.model && values.tokens) {
  const buf = fs.readFileSync(values.tokens);
  const tokens = new Int32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  const model = loadLlama(values.model, gpu);
  const maxWindows = values.windows ? Number(values.windows) : undefined;
  for (const batch of values['ppl-batch'].split(',').map(Number)) {
    const t0 = performance.now();
    const r = await perplexity(model, tokens, { seqLen: 2048, maxWindows, batch });
    report({
      what: 'ppl',
      model: values.model,
      windows: r.windows,
      batch,
      ppl: r.ppl,
      seconds: (performance.now() - t0) / 1000,
    });
  }
}

if (!skip.has('8b')) {
  const model = synthLlama3(gpu);
  const seqLen = 2048;
  const ids = Int32Array.from({ length: seqLen }, (_, i) => (i * 7919) % 128000);
  const s = await timeIt(() => model.forward(ids, { batch: 1, seqLen }), 1);
  report({
    what: 'prefill',
    model: 'llama-3-8b synthetic bf16',
    seqLen,
    seconds: s,
    tokensPerSecond: seqLen / s,
  });
  // W8A8: INT8 per-channel weights, INT8 per-token activations, every linear through the int8 GEMM
  const layer = model.layers[0];
  for (const name of LINEARS) {
    const lin = layer.linears[name];
    const [rows, cols] = lin.weight.shape;
    lin.int8 = {
      codes: randomInt8(rows, cols),
      scales: gpu.upload(new Float32Array(rows).fill(0.01), [rows], 'f32'),
    };
    lin.inputQuant = { spec: { kind: 'int', bits: 8, symmetric: true, granularity: 'row' } };
  }
  const s8 = await timeIt(() => model.forward(ids, { batch: 1, seqLen }), 1);
  report({
    what: 'prefill',
    model: 'llama-3-8b synthetic W8A8 (int8 GEMM)',
    int8Kernel: gpu.int8.path,
    seqLen,
    seconds: s8,
    tokensPerSecond: seqLen / s8,
    speedupVsBf16: s / s8,
  });
}
gpu.destroy();
