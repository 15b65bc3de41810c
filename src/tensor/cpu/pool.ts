/**
 * A pool of worker threads that run the CPU kernels over shared memory. Calls are synchronous:
 * the main thread takes its own share of the work, then blocks on an Atomics flag per worker
 * (allowed in Node's main thread), which keeps the Backend API synchronous like WebGPU encoding.
 */
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { KERNELS, type KernelName } from './kernels.ts';
import { wasmMatmul } from './wasm.ts';

const WORKER_SOURCE = `
const __name = (f) => f;
const { parentPort } = require('node:worker_threads');
const K = { ${Object.entries(KERNELS)
  .map(([name, fn]) => `${name}: ${fn.toString()}`)
  .join(',\n')} };
parentPort.on('message', ({ wasm, kernel, args, start, end, flag }) => {
  if (wasm) {
    globalThis.llmqWasm = new WebAssembly.Instance(wasm.module, { env: { memory: wasm.memory } }).exports;
    return;
  }
  try { K[kernel](...args, start, end); Atomics.store(flag, 0, 1); }
  catch (e) { console.error(e); Atomics.store(flag, 0, 2); }
  Atomics.notify(flag, 0);
});
`;

interface PoolWorker {
  worker: Worker;
  flag: Int32Array;
}

let workers: PoolWorker[] | undefined;

/** os.availableParallelism() asks the OS each time: a decode step calls threadCount() hundreds of times */
const CORES = Math.max(1, os.availableParallelism());

export function threadCount(): number {
  const env = Number(process.env.LLMQ_THREADS);
  if (Number.isInteger(env) && env > 0) return env;
  return CORES;
}

function pool(): PoolWorker[] {
  if (!workers) {
    workers = [];
    for (let i = 1; i < threadCount(); i++) {
      const worker = new Worker(WORKER_SOURCE, { eval: true, execArgv: [] });
      worker.unref();
      // messages are handled in order, so the instance exists before the first matmulWasm call
      const wasm = wasmMatmul();
      if (wasm) worker.postMessage({ wasm });
      workers.push({ worker, flag: new Int32Array(new SharedArrayBuffer(4)) });
    }
  }
  return workers;
}

type KernelArgs<N extends KernelName> =
  Parameters<(typeof KERNELS)[N]> extends [...infer A, number, number] ? A : never;

/**
 * Runs kernel(...args, start, end) over [0, units) split into contiguous chunks, one per thread.
 * Every array written by the kernel must live in a SharedArrayBuffer.
 */
export function parallelFor<N extends KernelName>(
  kernel: N,
  args: KernelArgs<N>,
  units: number,
  minUnitsPerThread = 1,
): void {
  const fn = KERNELS[kernel] as (...a: unknown[]) => void;
  // never more threads than units: an empty trailing range can still index past a small output
  const threads = Math.min(threadCount(), units, Math.max(1, Math.floor(units / minUnitsPerThread)));
  if (threads <= 1) {
    fn(...args, 0, units);
    return;
  }
  const active = pool().slice(0, threads - 1);
  const chunk = Math.ceil(units / threads);
  active.forEach((w, i) => {
    Atomics.store(w.flag, 0, 0);
    const start = Math.min(units, (i + 1) * chunk);
    const end = Math.min(units, start + chunk);
    w.worker.postMessage({ kernel, args, start, end, flag: w.flag });
  });
  fn(...args, 0, Math.min(units, chunk));
  for (const w of active) {
    while (Atomics.load(w.flag, 0) === 0) Atomics.wait(w.flag, 0, 0, 1000);
    if (Atomics.load(w.flag, 0) === 2) throw new Error(`CPU worker failed in kernel ${kernel}`);
  }
}

/**
 * Freed tensor buffers by byte length. V8 counts SharedArrayBuffers as external memory and
 * collects them late, so a quantization loop that drops large temporaries can grow to many GB;
 * disposed CPU tensors hand their buffers back here for reuse instead.
 */
const freeBuffers = new Map<number, SharedArrayBuffer[]>();
let pooledBytes = 0;
const MAX_POOLED_BYTES = Math.min(2 ** 31, os.totalmem() / 8);

/** A zeroed f32 array in shared memory (reused from disposed tensors when one of that size is free). */
export function sharedF32(n: number): Float32Array {
  const list = freeBuffers.get(n * 4);
  const reused = list?.pop();
  if (!reused) return new Float32Array(new SharedArrayBuffer(n * 4));
  pooledBytes -= reused.byteLength;
  return new Float32Array(reused).fill(0);
}

export function releaseShared(buffer: SharedArrayBuffer): void {
  if (buffer.byteLength === 0 || pooledBytes + buffer.byteLength > MAX_POOLED_BYTES) return;
  const list = freeBuffers.get(buffer.byteLength) ?? [];
  list.push(buffer);
  freeBuffers.set(buffer.byteLength, list);
  pooledBytes += buffer.byteLength;
}
