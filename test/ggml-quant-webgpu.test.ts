/**
 * The WebGPU Q4_0 / Q8_0 fake quant (src/tensor/webgpu/quant-ggml.ts) bit for bit against the CPU
 * reference dequantize(quantize(x)) of src/formats/ggml.ts, on hand-computed blocks, random weights,
 * every scale regime (fp16-subnormal and overflowing d, f32-subnormal inputs), ties, zero blocks,
 * rounding boundaries, f32/bf16/f16 inputs and a device that binds at most 4 KiB of a buffer.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { dequantizeQ4_0, dequantizeQ8_0, quantizeQ4_0, quantizeQ8_0 } from '../src/formats/ggml.ts';
import { parseFormat } from '../src/formats/index.ts';
import type { GgmlSpec } from '../src/formats/spec.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../src/tensor/dtype.ts';
import type { DType } from '../src/tensor/tensor.ts';
import { openDevice, WebGpuBackend, WebGpuTensor } from '../src/tensor/webgpu/backend.ts';
import { ggmlFakeQuant } from '../src/tensor/webgpu/quant-ggml.ts';
import { rng } from './helpers.ts';

const probe = await openDevice();
probe?.device.destroy();
const skip = probe ? false : 'no WebGPU adapter (install Mesa lavapipe: apt-get install mesa-vulkan-drivers)';
const gpu = probe ? await WebGpuBackend.create() : undefined;
/** A second device whose kernels may bind at most 4 KiB of a buffer: exercises the row windows. */
const tiny = probe ? await WebGpuBackend.create({ maxBindingBytes: 4096, maxBufferBytes: 16384 }) : undefined;

const Q4: GgmlSpec = { kind: 'ggml', type: 'q4_0' };
const Q8: GgmlSpec = { kind: 'ggml', type: 'q8_0' };
const SPECS = [Q4, Q8];
const fr = Math.fround;

/** The values x holds once stored as `dtype`. */
function stored(x: Float32Array, dtype: DType): Float32Array {
  if (dtype === 'bf16') return bf16ToF32(f32ToBf16(x));
  if (dtype === 'f16') return f16ToF32(f32ToF16(x));
  return x;
}

async function onGpu(
  be: WebGpuBackend,
  x: Float32Array,
  shape: number[],
  spec: GgmlSpec,
  dtype: DType = 'f32',
): Promise<Float32Array> {
  const host = dtype === 'bf16' ? f32ToBf16(x) : dtype === 'f16' ? f32ToF16(x) : x;
  const input = be.upload(host, shape, dtype) as WebGpuTensor;
  const lastDim = shape[shape.length - 1];
  const out = new WebGpuTensor(be, shape, 'f32', ggmlFakeQuant(be.ctx, input.storage, lastDim, spec));
  const got = await be.read(out);
  input.dispose();
  out.dispose();
  return got;
}

function reference(x: Float32Array, spec: GgmlSpec): Float32Array {
  return spec.type === 'q4_0' ? dequantizeQ4_0(quantizeQ4_0(x)) : dequantizeQ8_0(quantizeQ8_0(x));
}

function bits(x: Float32Array): Uint32Array {
  return new Uint32Array(x.buffer, x.byteOffset, x.length);
}

/** Blocks of 32 with an output whose bits differ (any NaN matches any NaN), and the first one. */
function diffBlocks(
  x: Float32Array,
  got: Float32Array,
  want: Float32Array,
): { blocks: number; first: string } {
  assert.equal(got.length, want.length);
  const [g, w] = [bits(got), bits(want)];
  let blocks = 0;
  let first = '';
  for (let b = 0; b < got.length / 32; b++) {
    for (let i = b * 32; i < b * 32 + 32; i++) {
      if (g[i] === w[i] || (Number.isNaN(got[i]) && Number.isNaN(want[i]))) continue;
      blocks++;
      first ||= `element ${i} (x = ${x[i]}): got ${got[i]} (0x${g[i].toString(16)}), want ${want[i]} (0x${w[i].toString(16)})`;
      break;
    }
  }
  return { blocks, first };
}

async function expectExact(
  be: WebGpuBackend,
  x: Float32Array,
  shape: number[],
  spec: GgmlSpec,
  dtype: DType,
  what: string,
): Promise<void> {
  const got = await onGpu(be, x, shape, spec, dtype);
  const values = stored(x, dtype);
  const d = diffBlocks(values, got, reference(values, spec));
  assert.equal(
    d.blocks,
    0,
    `${what} ${spec.type} ${dtype} ${shape.join('x')}: ${d.blocks} blocks differ, ${d.first}`,
  );
}

/** v moved k steps of its f32 bit pattern (away from zero for k > 0). */
function ulps(v: number, k: number): number {
  const b = new Float32Array([v]);
  bits(b)[0] += k;
  return b[0];
}

const SCALES = [1, 0.02, 1e-3, 3e-6, 1e-7, 1e-9, 1e-30, 3e-37, 1e-38, 1e-39, 1e3, 1e5, 1e7];

/** Special blocks: zeros, ties of +m / -m in both orders, values on and beside rounding boundaries. */
function specialBlocks(r: ReturnType<typeof rng>): Float32Array[] {
  const out: Float32Array[] = [new Float32Array(32), new Float32Array(32).fill(-0)];
  out.push(Float32Array.from({ length: 32 }, (_, i) => (i % 3 === 0 ? -0 : 0)));
  for (const m of [1.5, -0.03, 2e-6, 1e-39]) {
    for (const [a, b] of [
      [3, 20],
      [20, 3],
    ]) {
      const x = r.normal(32, Math.abs(m) / 4);
      x[a] = m;
      x[b] = -m;
      out.push(x);
    }
  }
  for (const e of [-20, -3, 0, 5]) {
    // Q8_0 with d = 2^e: x * id on k + 0.5 and one ulp either side, where |t| + 0.5 would round in f32
    const x = Float32Array.from({ length: 32 }, (_, i) => {
      const half = (2 ** (i % 7) - 0.5) * 2 ** e;
      return ulps(i % 2 ? -half : half, (Math.floor(i / 7) % 3) - 1);
    });
    x[31] = -127 * 2 ** e;
    out.push(x);
  }
  for (let k = 0; k < 6; k++) {
    // Q8_0 with any d: values nearest the .5 boundaries of x * id
    const m = fr(r.normal(1)[0] * 10 ** (k - 4));
    const id = fr(1 / fr(Math.abs(m) / 127));
    const x = Float32Array.from({ length: 32 }, (_, i) =>
      ulps(fr((Math.floor(r.uniform() * 253) - 126.5) / id), (i % 5) - 2),
    );
    x[0] = m;
    out.push(x);
  }
  out.push(...q4Boundaries());
  return out;
}

/** Q4_0 blocks whose values put x * id + 8.5 on or within two ulps of an integer. */
function q4Boundaries(): Float32Array[] {
  const r = rng(3);
  const out: Float32Array[] = [];
  for (let k = 0; k < 8; k++) {
    const m = fr(r.normal(1)[0] * 10 ** (k - 5));
    const id = fr(1 / fr(m / -8));
    const x = Float32Array.from({ length: 32 }, (_, i) => ulps(fr((1 + (i % 16) - 8.5) / id), (i % 5) - 2));
    x[31] = m;
    out.push(x);
  }
  return out;
}

/** rows x cols: the special blocks, then blocks of normal values at a random scale from SCALES. */
function mixed(r: ReturnType<typeof rng>, rows: number, cols: number, maxScale = Infinity): Float32Array {
  const x = new Float32Array(rows * cols);
  const special = specialBlocks(r);
  for (let b = 0; b < x.length / 32; b++) {
    const scales = SCALES.filter((s) => s <= maxScale);
    const block =
      b < special.length ? special[b] : r.normal(32, scales[Math.floor(r.uniform() * scales.length)]);
    x.set(block, b * 32);
  }
  return x;
}

test('hand-computed Q4_0 and Q8_0 blocks', { skip }, async () => {
  // Q4_0: max = -8 gives d = 1, q = min(15, trunc(x + 8.5)); the all-zero block gives d = -0
  const q4 = new Float32Array(64);
  q4.set([-8, 1.5, -1.5, 0.49, 7.6, -7.9, 3.25]);
  const q4Want = new Float32Array(64).fill(-0);
  q4Want.set([-8, 2, -1, 0, 7, -8, 3]);
  q4Want.fill(0, 7, 32);
  assert.deepEqual(bits(await onGpu(gpu!, q4, [2, 32], Q4)), bits(q4Want));
  // Q8_0: amax = 127 gives d = 1, halves round away from zero; a zero block gives +0
  const q8 = new Float32Array(64);
  q8.set([127, 2.5, -2.5, 0.4999, -0.5, 126.5, -3.7]);
  const q8Want = new Float32Array(64);
  q8Want.set([127, 3, -3, 0, -1, 127, -4]);
  assert.deepEqual(bits(await onGpu(gpu!, q8, [2, 32], Q8)), bits(q8Want));
});

test('a 512x4096 random weight matrix: no block differs from the CPU', { skip }, async (t) => {
  const x = rng(1).normal(512 * 4096, 0.02);
  for (const spec of SPECS) {
    const got = await onGpu(gpu!, x, [512, 4096], spec);
    const d = diffBlocks(x, got, reference(x, spec));
    t.diagnostic(`${spec.type}: ${d.blocks} of ${x.length / 32} blocks differ`);
    assert.equal(d.blocks, 0, d.first);
  }
});

test('every scale regime, ties, zeros, rounding boundaries, f32/bf16/f16, odd shapes', { skip }, async () => {
  const r = rng(2);
  for (const shape of [[37, 96], [5, 3, 64], [1, 32], [64]]) {
    const [rows, ...rest] = shape;
    const cols = rest.reduce((a, b) => a * b, 1);
    const x = mixed(r, rows, cols);
    // f16 overflows above 65504: keep those inputs finite
    const small = mixed(r, rows, cols, 1e3);
    for (const spec of SPECS) {
      await expectExact(gpu!, x, shape, spec, 'f32', 'mixed');
      await expectExact(gpu!, x, shape, spec, 'bf16', 'mixed');
      await expectExact(gpu!, small, shape, spec, 'f16', 'mixed');
    }
  }
});

test('the Q4_0 boundary blocks tell the ISO C rounding from a fused multiply-add', () => {
  const x = new Float32Array(q4Boundaries().flatMap((b) => [...b]));
  const iso = quantizeQ4_0(x);
  const fused = quantizeQ4_0(x, { fma: true });
  assert.ok(
    iso.some((v, i) => v !== fused[i]),
    'no boundary value separates the two roundings',
  );
});

test('row windows and chunks on a device binding 4 KiB', { skip }, async () => {
  const r = rng(4);
  for (const [shape, dtype] of [
    [[129, 64], 'f32'],
    [[75, 96], 'bf16'],
    [[37, 96], 'f16'],
    [[3, 5, 64], 'f32'],
    [[96], 'f32'],
  ] as [number[], DType][]) {
    const n = shape.reduce((a, b) => a * b, 1);
    const x = mixed(r, n / 32, 32, dtype === 'f16' ? 1e3 : Infinity);
    for (const spec of SPECS) await expectExact(tiny!, x, shape, spec, dtype, 'windows');
  }
});

test('refuses rows that blocks of 32 do not divide, and integer tensors', { skip }, () => {
  const x = gpu!.upload(new Float32Array(96), [2, 48], 'f32') as WebGpuTensor;
  assert.throws(() => ggmlFakeQuant(gpu!.ctx, x.storage, 48, Q4), /q4_0: blocks of 32 do not divide .* 48/);
  const ints = gpu!.upload(new Int8Array(64), [2, 32], 'i8') as WebGpuTensor;
  assert.throws(() => ggmlFakeQuant(gpu!.ctx, ints.storage, 32, Q8), /i8 tensors cannot be quantized/);
  x.dispose();
  ints.dispose();
});

test('a block holding NaN or inf becomes NaN; the other blocks are untouched', { skip }, async () => {
  const x = rng(5).normal(4 * 32, 0.1);
  x[40] = Number.NaN;
  x[70] = Number.NEGATIVE_INFINITY;
  for (const spec of SPECS) {
    const got = await onGpu(gpu!, x, [4, 32], spec);
    assert.ok(got.subarray(32, 96).every(Number.isNaN), `${spec.type}: blocks 1 and 2 are NaN`);
    assert.deepEqual(
      bits(got.subarray(0, 32)),
      bits(reference(x.subarray(0, 32), spec)),
      `${spec.type}: block 0`,
    );
    assert.deepEqual(bits(got.subarray(96)), bits(reference(x.subarray(96), spec)), `${spec.type}: block 3`);
  }
});

test('the backend routes q4_0 / q8_0 fakeQuant to the GGML kernel (same bits as the CPU backend)', {
  skip,
}, async () => {
  const backend = gpu!;
  const cpuBackend = new CpuBackend();
  const x = rng(5).normal(6 * 128, 0.05);
  for (const name of ['q4_0', 'q8_0']) {
    const spec = parseFormat(name);
    const got = await backend.read(backend.fakeQuant(backend.upload(x, [6, 128], 'f32'), spec));
    const want = await cpuBackend.read(cpuBackend.fakeQuant(cpuBackend.upload(x, [6, 128], 'f32'), spec));
    assert.deepEqual(new Uint32Array(got.buffer), new Uint32Array(want.buffer), name);
  }
});
