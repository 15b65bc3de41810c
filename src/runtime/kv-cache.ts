/**
 * Keys and values of one sequence for every decoder layer, on the device, f32 [capacity, Hkv x Dh].
 * Capacity grows by doubling (up to the context length), so a short generation never allocates the
 * whole context; `truncate` keeps a prefix, so a chat turn or a server request that starts with the
 * tokens already cached only runs the new ones.
 */
import { fail } from '../errors.ts';
import type { AttentionCache, LlamaModel } from '../model/llama.ts';
import type { Backend, KvRows, Tensor } from '../tensor/tensor.ts';

const FIRST_CAPACITY = 256;

export class KvCache implements AttentionCache {
  private keys: Tensor[] = [];
  private values: Tensor[] = [];
  private capacity = 0;
  /** positions cached so far */
  past = 0;
  /** rows the current forward appends (set by reserve) */
  private pending = 0;
  private readonly backend: Backend;
  private readonly layers: number;
  private readonly width: number;

  constructor(
    model: LlamaModel,
    readonly maxLength: number,
  ) {
    this.backend = model.backend;
    this.layers = model.layers.length;
    this.width = model.config.numKvHeads * model.config.headDim;
  }

  /** Makes room for `n` more positions before a forward over them. */
  reserve(n: number): void {
    const need = this.past + n;
    if (need > this.maxLength)
      fail(`context full: ${need} tokens exceed the context length ${this.maxLength}`);
    this.pending = n;
    if (need <= this.capacity) return;
    const capacity = Math.min(this.maxLength, Math.max(need, FIRST_CAPACITY, 2 * this.capacity));
    this.keys = this.grown(this.keys, capacity);
    this.values = this.grown(this.values, capacity);
    this.capacity = capacity;
  }

  append(layer: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor } {
    if (k.shape[0] !== this.pending) fail(`KV cache: ${k.shape[0]} new rows, ${this.pending} reserved`);
    this.backend.writeRows(this.keys[layer], k, this.past);
    this.backend.writeRows(this.values[layer], v, this.past);
    return this.written(layer);
  }

  target(layer: number): KvRows {
    return { k: this.keys[layer], v: this.values[layer], row: this.past };
  }

  written(layer: number): { k: Tensor; v: Tensor } {
    if (layer === this.layers - 1) {
      this.past += this.pending;
      this.pending = 0;
    }
    // the last layer advanced `past`, but its attention still reads the rows it just wrote
    return { k: this.keys[layer], v: this.values[layer] };
  }

  /** Forgets every position from `length` on. */
  truncate(length: number): void {
    this.past = Math.min(this.past, length);
  }

  dispose(): void {
    for (const t of [...this.keys, ...this.values]) t.dispose();
    this.keys = [];
    this.values = [];
    this.capacity = 0;
    this.past = 0;
  }

  private grown(old: Tensor[], capacity: number): Tensor[] {
    const fresh = () =>
      this.backend.upload(new Float32Array(capacity * this.width), [capacity, this.width], 'f32');
    return Array.from({ length: this.layers }, (_, i) => {
      const t = fresh();
      if (old[i] && this.past > 0) {
        const kept = this.backend.sliceRows(old[i], 0, this.past);
        this.backend.writeRows(t, kept, 0);
        kept.dispose();
      }
      old[i]?.dispose();
      return t;
    });
  }
}
