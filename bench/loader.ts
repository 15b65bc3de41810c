/**
 * What running the TypeScript through src/loader.mjs saves against tsx's transform (esbuild's keepNames,
 * which wraps every function created in a naming helper; LLMQ_KEEP_NAMES=1 makes the loader do that).
 * Each workload runs in a child process under both, alternated, the better of --rounds runs each:
 *  - the host block quantizers (one thread, 16 x 4096 values): IQ1_S, IQ1_M, IQ2_XS, IQ3_XXS, Q4_K;
 *  - llama-small forward on the CPU backend (one 512-token window, the perplexity path);
 *  - WebGPU decode, recording only (llama-small, bf16 and W8A8 weights; queue submits dropped, so the
 *    host's encoding is measured alone), where a WebGPU adapter exists.
 *   node --import ./src/loader.mjs bench/loader.ts [--rounds 2] [--no-write]
 */
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { fakeQuantRows, parseFormat } from '../src/formats/index.ts';
import { LINEARS } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { KvCache } from '../src/runtime/kv-cache.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { publish, type Row, table } from './report.ts';
import { useInt8 } from './synth-model.ts';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '2' },
    child: { type: 'string' },
    'no-write': { type: 'boolean', default: false },
  },
});
const MODEL = new URL('../../shared/models/llama-small', import.meta.url).pathname;
const BLOCK_TYPES = ['iq1_s', 'iq1_m', 'iq2_xs', 'iq3_xxs', 'q4_k'];
const WORKLOADS = [...BLOCK_TYPES, 'cpu-forward', 'encode-bf16', 'encode-w8a8'];

if (values.child) {
  console.log(JSON.stringify({ ms: await runWorkload(values.child) }));
  process.exit(0);
}

/** Milliseconds of the workload's measured part (after a warm-up), or -1 where it cannot run here. */
async function runWorkload(name: string): Promise<number> {
  if (BLOCK_TYPES.includes(name)) return blockQuantMs(name);
  if (name === 'cpu-forward') return cpuForwardMs();
  return encodeMs(name === 'encode-w8a8');
}

function blockQuantMs(type: string): number {
  const [rows, cols] = [16, 4096];
  let s = 12345;
  const x = Float32Array.from({ length: rows * cols }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * 0.04;
  });
  const spec = parseFormat(type);
  fakeQuantRows(x.subarray(0, cols), 1, cols, spec);
  const t = performance.now();
  fakeQuantRows(x, rows, cols, spec);
  return performance.now() - t;
}

function cpuForwardMs(): number {
  const model = loadLlama(MODEL, new CpuBackend());
  const ids = Int32Array.from({ length: 512 }, (_, i) => (i * 7919) % 8000);
  model.forward(ids.subarray(0, 16), { batch: 1, seqLen: 16 }).dispose();
  const t = performance.now();
  model.forward(ids, { batch: 1, seqLen: 512 }).dispose();
  return performance.now() - t;
}

async function encodeMs(int8: boolean): Promise<number> {
  const { WebGpuBackend } = await import('../src/tensor/webgpu/backend.ts');
  const b = await WebGpuBackend.create().catch(() => undefined);
  if (!b) return -1;
  const model = loadLlama(MODEL, b);
  if (int8) for (const layer of model.layers) for (const n of LINEARS) useInt8(b, layer.linears[n]);
  const cache = new KvCache(model, 64);
  const step = (id: number) => {
    cache.reserve(1);
    return model.forwardCached(Int32Array.of(id), cache);
  };
  for (let i = 0; i < 4; i++) {
    const logits = step(50 + i);
    await b.read(logits);
    logits.dispose();
  }
  const queue = b.device.queue as unknown as { submit: (c: unknown) => void };
  queue.submit = () => {}; // recording only: nothing reaches the device from here on
  const tokens = 1000;
  const t = performance.now();
  for (let i = 0; i < tokens; i++) {
    step(100 + (i % 50)).dispose();
    b.ctx.flush();
    if (i % 40 === 39) cache.truncate(8);
  }
  return (performance.now() - t) / tokens;
}

function childMs(workload: string, keepNames: boolean): number {
  const out = execFileSync(
    process.execPath,
    [
      '--import',
      new URL('../src/loader.mjs', import.meta.url).href,
      new URL(import.meta.url).pathname,
      '--child',
      workload,
    ],
    {
      env: { ...process.env, LLMQ_KEEP_NAMES: keepNames ? '1' : '0' },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    },
  );
  return (JSON.parse(out.trim().split('\n').at(-1) as string) as { ms: number }).ms;
}

const UNITS: Record<string, string> = {
  'cpu-forward': 'llama-small forward, 512 tokens, CPU backend (ms)',
  'encode-bf16': 'WebGPU decode recording, llama-small bf16 (ms a token)',
  'encode-w8a8': 'WebGPU decode recording, llama-small W8A8 (ms a token)',
};
const rows: Row[] = [];
for (const workload of WORKLOADS) {
  const best = { tsx: Number.POSITIVE_INFINITY, loader: Number.POSITIVE_INFINITY };
  for (let r = 0; r < Number(values.rounds); r++) {
    best.tsx = Math.min(best.tsx, childMs(workload, true));
    best.loader = Math.min(best.loader, childMs(workload, false));
  }
  if (best.loader < 0) continue;
  const what =
    UNITS[workload] ?? `${workload.toUpperCase()} host quantizer, 16 x 4096 values, one thread (ms)`;
  rows.push({
    workload: what,
    'keepNames (tsx)': best.tsx,
    'src/loader.mjs': best.loader,
    'tsx / loader': best.tsx / best.loader,
  });
  console.error(`${workload}: ${best.tsx.toFixed(2)} vs ${best.loader.toFixed(2)}`);
}
publish(
  'Running the TypeScript: tsx (keepNames) vs src/loader.mjs',
  `node --import ./src/loader.mjs bench/loader.ts --rounds ${values.rounds}`,
  table(rows),
  'Each workload in a child process under both transforms, alternated, the better run of each. keepNames = what tsx has esbuild do (LLMQ_KEEP_NAMES=1 in src/loader-hooks.mjs reproduces it): every function created is passed through a helper that defines its name property, which costs most where loops create closures.',
);
