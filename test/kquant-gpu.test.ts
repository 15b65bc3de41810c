/**
 * The WebGPU search kernels for Q4_K / Q5_K / Q6_K (webgpu/quant-kquant.ts), IQ4_NL / IQ4_XS
 * (webgpu/quant-iq4.ts) and IQ3_XXS / IQ3_S / IQ2_S (webgpu/quant-lattice.ts) against the exact host quantizers
 * (formats/kquants.ts, iq4.ts, iq3.ts, iq2.ts): the same algorithm in float32, so nearly every value is identical;
 * where a near-tie of llama.cpp's grid search goes the other way, the round trip is as good.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fakeQuantRows, parseFormat } from '../src/formats/index.ts';
import type { GgmlSpec } from '../src/formats/spec.ts';
import { openDevice, WebGpuBackend } from '../src/tensor/webgpu/backend.ts';
import { rng } from './helpers.ts';

const probe = await openDevice();
probe?.device.destroy();
const gpu = probe ? await WebGpuBackend.create() : undefined;

function weights(rows: number, cols: number, seed: number): Float32Array {
  const r = rng(seed);
  const x = Float32Array.from(r.normal(rows * cols), (v) => v * 0.02);
  // a few outliers, one all-zero super-block, one constant sub-block
  for (let i = 0; i < x.length; i += 997) x[i] *= 40;
  x.fill(0, 256, 512);
  x.fill(0.01, 1024, 1056);
  return x;
}

const sumSq = (a: Float32Array, b: Float32Array) => a.reduce((s, v, i) => s + (v - b[i]) ** 2, 0);

for (const type of [
  'q4_k',
  'q5_k',
  'q6_k',
  'iq4_nl',
  'iq4_xs',
  'iq3_xxs',
  'iq3_s',
  'iq2_xxs',
  'iq2_xs',
  'iq2_s',
  'iq1_s',
  'iq1_m',
] as const) {
  test(`WebGPU ${type} search round trip equals the host quantizer on almost every value`, {
    skip: gpu ? false : 'no WebGPU adapter',
  }, async () => {
    const [rows, cols] = [48, 1024];
    const x = weights(rows, cols, type.length * 7 + type.charCodeAt(1));
    const spec = parseFormat(type) as GgmlSpec;
    const want = fakeQuantRows(x, rows, cols, spec);
    const xt = gpu!.upload(x, [rows, cols], 'f32');
    const yt = gpu!.searchFakeQuant(xt, spec);
    assert.ok(yt, 'a kernel for the type');
    const got = await gpu!.read(yt);
    xt.dispose();
    yt.dispose();
    let same = 0;
    for (let i = 0; i < x.length; i++) if (Object.is(got[i], want[i]) || got[i] === want[i]) same++;
    // lavapipe: every value; an H100 fuses multiply-adds and flips near-ties in 2-6% of the values
    assert.ok(same / x.length >= 0.9, `${type}: ${same} of ${x.length} values identical`);
    // the all-zero super-block stays zero, and the error is the host quantizer's to within 1%
    assert.ok(got.subarray(256, 512).every((v) => v === 0));
    const [errGpu, errHost] = [sumSq(got, x), sumSq(want, x)];
    assert.ok(Math.abs(errGpu / errHost - 1) < 0.01, `${type}: error ${errGpu} vs host ${errHost}`);
  });
}

test('WebGPU searchFakeQuant declines what it has no kernel for', {
  skip: gpu ? false : 'no WebGPU adapter',
}, () => {
  const x = gpu!.upload(new Float32Array(2 * 384), [2, 384], 'f32');
  assert.equal(gpu!.searchFakeQuant(x, parseFormat('q4_k') as GgmlSpec), undefined, 'rows of 384');
  assert.equal(gpu!.searchFakeQuant(x, parseFormat('q5_0') as GgmlSpec), undefined, 'q5_0');
  assert.equal(gpu!.searchFakeQuant(x, parseFormat('iq4_xs') as GgmlSpec), undefined, 'iq4_xs rows of 384');
  assert.equal(gpu!.searchFakeQuant(x, parseFormat('iq3_s') as GgmlSpec), undefined, 'iq3_s rows of 384');
  const nl = gpu!.searchFakeQuant(x, parseFormat('iq4_nl') as GgmlSpec);
  assert.ok(nl, 'iq4_nl takes rows of 384');
  nl.dispose();
  x.dispose();
});
