/**
 * One synthetic Llama-3-8B prefill forward (bench/synth-model.ts), wall time and profiled GPU time per
 * kernel key, for bf16 weights (the f32 GEMM path) and W8A8 (the int8 GEMM): where a prefill's time goes.
 *
 *   node --import ./src/loader.mjs bench/prefill-profile.ts [--tokens 2048] [--layers 32] [--out FILE.json]
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { LINEARS } from '../src/model/llama.ts';
import { envFlags, WebGpuBackend } from '../src/tensor/webgpu/backend.ts';
import { synthLlama3, useInt8 } from './synth-model.ts';

const { values } = parseArgs({
  options: {
    tokens: { type: 'string', default: '2048' },
    layers: { type: 'string' },
    out: { type: 'string' },
  },
});
const gpu = await WebGpuBackend.create({
  flags: [...envFlags(), 'disable-dawn-features=timestamp_quantization'],
});
const model = synthLlama3(gpu, values.layers ? Number(values.layers) : undefined);
const seqLen = Number(values.tokens);
const ids = Int32Array.from({ length: seqLen }, (_, i) => (i * 7919) % 128000);
const results: Record<string, unknown>[] = [];

async function forwardSeconds(): Promise<number> {
  const t0 = performance.now();
  model.forward(ids, { batch: 1, seqLen }).dispose();
  await gpu.sync();
  return (performance.now() - t0) / 1000;
}

async function measure(weights: string): Promise<void> {
  const coldSeconds = await forwardSeconds();
  const seconds = await forwardSeconds();
  gpu.ctx.startProfile();
  const profiledSeconds = await forwardSeconds();
  const kernels = (await gpu.ctx.stopProfile()).map((k) => ({ key: k.key, ms: k.ms }));
  const gpuMs = kernels.reduce((a, k) => a + k.ms, 0);
  const r = { weights, seqLen, coldSeconds, seconds, profiledSeconds, gpuMs, kernels };
  results.push(r);
  console.log(JSON.stringify({ ...r, kernels: kernels.slice(0, 8) }));
}

await measure('bf16');
for (const name of LINEARS) useInt8(gpu, model.layers[0].linears[name]);
await measure('W8A8');
if (values.out) fs.writeFileSync(values.out, `${JSON.stringify(results, null, 1)}\n`);
gpu.destroy();
