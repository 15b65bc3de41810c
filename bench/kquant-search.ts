/**
 * llama.cpp K-quant, IQ4, IQ3 and IQ2 round trips: the exact host quantizer (formats/kquants.ts, iq4.ts, iq3.ts,
 * iq2.ts) on one
 * thread and on the worker threads (formats/block-workers.ts; only where they run: the CLI from source, not the
 * GPU bundle), against the WebGPU search kernel AWQ ranks candidates with (webgpu/quant-kquant.ts,
 * quant-iq4.ts, quant-lattice.ts), on a
 * Llama-3-8B-sized weight, with how many values come out identical and the round-trip error of each.
 *   node --import ./src/loader.mjs bench/kquant-search.ts [--rows 4096 --cols 4096] [--no-write]
 */
import os from 'node:os';
import { parseArgs } from 'node:util';
import { quantizeBlocksInParallel } from '../src/formats/block-workers.ts';
import { fakeQuantRows, fakeQuantRowsAsync, parseFormat } from '../src/formats/index.ts';
import type { GgmlSpec } from '../src/formats/spec.ts';
import { WebGpuBackend } from '../src/tensor/webgpu/backend.ts';
import { rng } from '../test/helpers.ts';
import { machine, publish, type Row, table } from './report.ts';

const { values } = parseArgs({
  options: {
    rows: { type: 'string', default: '4096' },
    cols: { type: 'string', default: '4096' },
    'no-write': { type: 'boolean', default: false },
  },
});
const [rows, cols] = [Number(values.rows), Number(values.cols)];
const gpu = await WebGpuBackend.create();
const x = Float32Array.from(rng(1).normal(rows * cols), (v) => v * 0.02);
for (let i = 0; i < x.length; i += 997) x[i] *= 40; // outliers
const sumSq = (a: Float32Array) => a.reduce((s, v, i) => s + (v - x[i]) ** 2, 0);

// the worker threads start on the first call: warm them up, and see whether they run here at all
const threads = (await quantizeBlocksInParallel('q6_k', x, cols)) ? os.availableParallelism() : 1;
const out: Row[] = [];
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
]) {
  const spec = parseFormat(type) as GgmlSpec;
  let t0 = performance.now();
  const want = fakeQuantRows(x, rows, cols, spec);
  const hostMs = performance.now() - t0;
  t0 = performance.now();
  const parallel = await fakeQuantRowsAsync(x, rows, cols, spec);
  const workersMs = performance.now() - t0;
  if (!parallel.every((v, i) => Object.is(v, want[i]))) throw new Error(`${type}: worker threads differ`);
  const xt = gpu.upload(x, [rows, cols], 'f32');
  const compiled = gpu.searchFakeQuant(xt, spec);
  if (!compiled) {
    xt.dispose();
    out.push({ type, values: rows * cols, 'host ms': hostMs, 'WebGPU ms (with read back)': 'no kernel' });
    continue;
  }
  compiled.dispose();
  const runs = 5;
  let got: Float32Array = new Float32Array(0);
  t0 = performance.now();
  for (let r = 0; r < runs; r++) {
    const yt = gpu.searchFakeQuant(xt, spec)!;
    got = await gpu.read(yt);
    yt.dispose();
  }
  const deviceMs = (performance.now() - t0) / runs;
  xt.dispose();
  let same = 0;
  for (let i = 0; i < x.length; i++) if (Object.is(got[i], want[i])) same++;
  out.push({
    type,
    values: rows * cols,
    'host ms': hostMs,
    [`host, ${threads} threads ms`]: threads > 1 ? workersMs : 'n/a',
    'WebGPU ms (with read back)': deviceMs,
    'host / WebGPU': hostMs / deviceMs,
    'identical values': `${((100 * same) / x.length).toFixed(4)}%`,
    'error WebGPU / host': sumSq(got) / sumSq(want),
  });
}
const adapter = gpu.describe();
const cmd = `node --import ./src/loader.mjs bench/kquant-search.ts --rows ${rows} --cols ${cols}`;
publish(
  `K-quant, IQ4, IQ3 and IQ2 search round trips: host vs WebGPU, ${rows} x ${cols}`,
  cmd,
  table(out),
  'Host: the exact quantizer, on one thread and on the worker threads (same bytes). WebGPU: the search kernel AWQ uses to rank candidates; the stored blocks always come from the host quantizer.',
  `${machine()}; ${adapter}`,
);
process.exit(0);
