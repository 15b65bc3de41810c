/** A worker thread of block-workers.ts: quantizes the rows it is sent with llama.cpp's quantizer. */
import { parentPort } from 'node:worker_threads';
import { type GgmlBlockType, quantizeGgmlBlocks } from './ggml-codes.ts';

export interface Job {
  id: number;
  type: GgmlBlockType;
  x: Float32Array;
  cols: number;
  importance?: Float32Array;
}

parentPort?.on('message', ({ id, type, x, cols, importance }: Job) => {
  try {
    const bytes = quantizeGgmlBlocks(x, cols, type, importance);
    parentPort?.postMessage({ id, bytes }, [bytes.buffer as ArrayBuffer]);
  } catch (e) {
    parentPort?.postMessage({ id, error: e instanceof Error ? e.message : String(e) });
  }
});
