/**
 * GPTQ on the CPU: time of gptq() per weight shape (out x in), split into the Hessian inverse
 * (Cholesky + triangular inverse), the column loop (quantize + in-block updates) and the lazy block
 * updates (one f64 matmul per block), plus HessianAccumulator.add throughput.
 *   node --import ./src/loader.mjs bench/gptq.ts            (appends to BENCHMARKS.md; --no-write to only print)
 *   node --import ./src/loader.mjs bench/gptq.ts --quick    (skips the 4096 x 4096 layer)
 */
import { parseFormat } from '../src/formats/index.ts';
import { type GptqOptions, type GptqResult, gptq } from '../src/quant/gptq.ts';
import { HessianAccumulator } from '../src/quant/hessian.ts';
import { rng } from '../test/helpers.ts';
import { publish, type Row, table } from './report.ts';

interface Case {
  rows: number;
  cols: number;
  format: string;
  options: Partial<GptqOptions>;
  repeats: number;
}

const quick = process.argv.includes('--quick');
const CASES: Case[] = [
  { rows: 384, cols: 384, format: 'int4-g128', options: {}, repeats: 3 },
  { rows: 1024, cols: 384, format: 'int4-g128', options: {}, repeats: 3 },
  { rows: 384, cols: 1024, format: 'int4-g128', options: {}, repeats: 3 },
  { rows: 384, cols: 1024, format: 'int4-g128', options: { actOrder: true }, repeats: 3 },
  { rows: 384, cols: 1024, format: 'mxint4', options: {}, repeats: 3 },
  ...(quick ? [] : [{ rows: 4096, cols: 4096, format: 'int4-g128', options: {}, repeats: 1 }]),
];

/** A Hessian from `tokens` random inputs with correlated channels; returns it and the add() rate. */
function hessian(cols: number, tokens: number, seed: number): { H: Float64Array; seconds: number } {
  const r = rng(seed);
  const x = r.normal(tokens * cols);
  for (let t = 0; t < tokens; t++) {
    const o = t * cols;
    for (let c = 1; c < cols; c++) x[o + c] += 0.5 * x[o + c - 1];
  }
  const acc = new HessianAccumulator(cols);
  const t0 = performance.now();
  acc.add(x, tokens);
  const seconds = (performance.now() - t0) / 1000;
  return { H: acc.finish(), seconds };
}

/** flops of the lazy block updates: 2 rows (cols - end) per column of each block */
function updateFlops(rows: number, cols: number, blockSize: number): number {
  let f = 0;
  for (let b0 = 0; b0 < cols; b0 += blockSize) {
    const b1 = Math.min(cols, b0 + blockSize);
    f += 2 * rows * (b1 - b0) * (cols - b1);
  }
  return f;
}

const rows: Row[] = [];
const hessianRows: Row[] = [];
const hessians = new Map<number, Float64Array>();
for (const c of CASES) {
  let H = hessians.get(c.cols);
  if (!H) {
    const tokens = c.cols >= 4096 ? 512 : 2048;
    const h = hessian(c.cols, tokens, c.cols);
    H = h.H;
    hessians.set(c.cols, H);
    hessianRows.push({
      channels: c.cols,
      tokens,
      seconds: h.seconds,
      'GFLOP/s': (tokens * c.cols * (c.cols + 64)) / h.seconds / 1e9,
    });
  }
  const weight = rng(c.rows + c.cols).normal(c.rows * c.cols, 0.02);
  const spec = parseFormat(c.format);
  let best: GptqResult | undefined;
  let bestTotal = Number.POSITIVE_INFINITY;
  for (let i = 0; i < c.repeats; i++) {
    const res = gptq(weight, c.rows, c.cols, H, spec, c.options);
    const total = res.timings.inverse + res.timings.columns + res.timings.updates;
    if (total < bestTotal) {
      bestTotal = total;
      best = res;
    }
  }
  const t = best!.timings;
  const opts = Object.keys(c.options).join(',');
  rows.push({
    'out x in': `${c.rows}x${c.cols}`,
    format: `${c.format}${opts ? ` ${opts}` : ''}`,
    'total s': bestTotal / 1000,
    'inverse s': t.inverse / 1000,
    'column loop s': t.columns / 1000,
    'block updates s': t.updates / 1000,
    'inverse GFLOP/s': ((2 / 3) * c.cols ** 3) / (t.inverse / 1000) / 1e9,
    'updates GFLOP/s': updateFlops(c.rows, c.cols, 128) / (t.updates / 1000) / 1e9,
  });
  console.log(rows[rows.length - 1]);
}

publish(
  'GPTQ on the CPU (float64, one thread)',
  `node --import ./src/loader.mjs bench/gptq.ts${quick ? ' --quick' : ''}`,
  `${table(rows)}\n\nHessianAccumulator.add (sum of x x^T in float64, upper triangle):\n\n${table(hessianRows)}`,
  'Best of 3 runs (one for 4096x4096), blocks of 128 columns. "inverse" = dead columns, ordering, damping, ' +
    'blocked Cholesky and triangular inverse (2/3 n^3 flops); "column loop" = quantizing each column and ' +
    'updating the rest of its block; "block updates" = W[:, end:] -= Err Hinv[block, end:] (4x4 register-blocked ' +
    'f64 matmul). All scalar f64 TypeScript in V8 on the main thread.',
);
