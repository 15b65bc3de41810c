/**
 * llama.cpp's block quantizers (ggml-codes.ts) over Node worker threads: a weight's rows split evenly
 * across the cores, every worker running the same exact quantizer, so the bytes are those one thread
 * makes. The K-quant searches are the slow part of quantizing to llama.cpp's types (a few million
 * values a second on one core); llama-quantize spreads them over threads the same way.
 * Where there are no workers (a browser, a bundle without the worker module, LLMQ_THREADS=1) or the
 * weight is small, callers quantize in line.
 */
import type { Worker } from 'node:worker_threads';
import { concatArrays } from '../tensor/dtype.ts';
import type { Job } from './block-worker.ts';
import type { GgmlBlockType } from './ggml-codes.ts';

/** below this many values, one thread finishes before the work could be spread */
const MIN_VALUES = 1 << 19;

interface Pending {
  resolve(bytes: Uint8Array): void;
  reject(error: Error): void;
}

let pool: Promise<Worker[]> | undefined;
const pending = new Map<number, Pending>();
let nextId = 0;

// resolved at run time, so that browser bundles never see Node's modules
const nodeModule = (name: string) => import(/* @vite-ignore */ `node:${name}`);

function threads(os: { availableParallelism(): number }): number {
  const env = Number(process.env.LLMQ_THREADS);
  return Number.isInteger(env) && env > 0 ? env : os.availableParallelism();
}

async function startPool(): Promise<Worker[]> {
  if (typeof process === 'undefined' || !process.versions?.node) return [];
  const [fs, os, url, wt] = await Promise.all(['fs', 'os', 'url', 'worker_threads'].map(nodeModule));
  const script = new URL('./block-worker.mjs', import.meta.url);
  if (script.protocol !== 'file:' || !fs.existsSync(url.fileURLToPath(script))) return [];
  const count = Math.min(threads(os), 16);
  if (count < 2) return [];
  return Array.from({ length: count }, () => {
    const worker: Worker = new wt.Worker(script);
    worker.on('message', ({ id, bytes, error }: { id: number; bytes?: Uint8Array; error?: string }) => {
      const task = pending.get(id);
      pending.delete(id);
      if (bytes) task?.resolve(bytes);
      else task?.reject(new Error(error));
    });
    // a worker that cannot start (no TypeScript loader, ...) turns the pool off: callers go in line
    worker.on('error', (e: Error) => {
      pool = Promise.resolve([]);
      for (const task of pending.values()) task.reject(e);
      pending.clear();
    });
    worker.unref();
    return worker;
  });
}

const inFlight = new Map<Worker, number>();

/** One job on a worker, which keeps the process alive while any of its jobs runs (idle ones do not). */
function run(worker: Worker, job: Omit<Job, 'id'>): Promise<Uint8Array> {
  const id = nextId++;
  const jobs = inFlight.get(worker) ?? 0;
  if (jobs === 0) worker.ref();
  inFlight.set(worker, jobs + 1);
  return new Promise<Uint8Array>((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, ...job }, [job.x.buffer as ArrayBuffer]);
  }).finally(() => {
    const left = (inFlight.get(worker) ?? 1) - 1;
    inFlight.set(worker, left);
    if (left === 0) worker.unref();
  });
}

/**
 * x (rows of `cols` values) as the type's blocks, made on the worker threads; undefined where they
 * are not available or not worth it (quantize in line then: same bytes).
 */
export async function quantizeBlocksInParallel(
  type: GgmlBlockType,
  x: ArrayLike<number>,
  cols: number,
  importance?: Float32Array,
): Promise<Uint8Array | undefined> {
  if (x.length < MIN_VALUES || cols <= 0 || x.length % cols !== 0) return undefined;
  pool ??= startPool();
  const workers = await pool;
  if (workers.length < 2) return undefined;
  const rows = x.length / cols;
  const perWorker = Math.ceil(rows / workers.length);
  const parts: Promise<Uint8Array>[] = [];
  for (let w = 0, row = 0; row < rows; w++, row += perWorker) {
    const end = Math.min(rows, row + perWorker);
    const chunk =
      x instanceof Float32Array
        ? x.slice(row * cols, end * cols)
        : Float32Array.from({ length: (end - row) * cols }, (_, i) => x[row * cols + i]);
    parts.push(run(workers[w], { type, x: chunk, cols, importance }));
  }
  try {
    return concatArrays(await Promise.all(parts), (n) => new Uint8Array(n));
  } catch {
    return undefined;
  }
}
