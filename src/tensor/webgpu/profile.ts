/**
 * GPU time per kernel from timestamp queries: while a profile runs, every dispatch gets a compute pass
 * of its own whose beginning and end write timestamps; each submit resolves its queries into a
 * staging buffer, read when the profile stops. Passes of one dispatch add overhead of their own, so a
 * profile shows where the GPU time goes, not the speed of an unprofiled run.
 */
const QUERY_RESOLVE_COPY_SRC = 0x200 | 0x04;
const MAP_READ_COPY_DST = 0x01 | 0x08;

/** Summed GPU time of one kernel key over a profile. */
export interface KernelTime {
  key: string;
  dispatches: number;
  ms: number;
}

export class KernelProfiler {
  private readonly queries: GPUQuerySet;
  private readonly resolveBuffer: GPUBuffer;
  private keys: string[] = [];
  private readonly resolved: { staging: GPUBuffer; keys: string[] }[] = [];

  constructor(
    private readonly device: GPUDevice,
    private readonly capacity: number,
  ) {
    this.queries = device.createQuerySet({ type: 'timestamp', count: 2 * capacity });
    this.resolveBuffer = device.createBuffer({ size: 16 * capacity, usage: QUERY_RESOLVE_COPY_SRC });
  }

  /** Whether a dispatch can be timed before the encoder must be resolved. */
  get full(): boolean {
    return this.keys.length >= this.capacity;
  }

  /** The timestamp writes of the pass that will hold one dispatch of kernel `key`. */
  writes(key: string): GPUComputePassTimestampWrites {
    const i = this.keys.length;
    this.keys.push(key);
    return { querySet: this.queries, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 };
  }

  /** Records, at the end of an encoder, the copy of its timestamps to a buffer read at `stop`. */
  resolve(encoder: GPUCommandEncoder): void {
    const n = this.keys.length;
    if (n === 0) return;
    const staging = this.device.createBuffer({ size: 16 * n, usage: MAP_READ_COPY_DST });
    encoder.resolveQuerySet(this.queries, 0, 2 * n, this.resolveBuffer, 0);
    encoder.copyBufferToBuffer(this.resolveBuffer, 0, staging, 0, 16 * n);
    this.resolved.push({ staging, keys: this.keys });
    this.keys = [];
  }

  /** GPU time per kernel key, most first (call after the last submit's resolve). */
  async stop(): Promise<KernelTime[]> {
    const byKey = new Map<string, KernelTime>();
    for (const { staging, keys } of this.resolved) {
      await staging.mapAsync(1 /* READ */);
      const stamps = new BigInt64Array(staging.getMappedRange());
      keys.forEach((key, i) => {
        const t = byKey.get(key) ?? { key, dispatches: 0, ms: 0 };
        t.dispatches++;
        t.ms += Number(stamps[2 * i + 1] - stamps[2 * i]) / 1e6;
        byKey.set(key, t);
      });
      staging.unmap();
      staging.destroy();
    }
    this.queries.destroy();
    this.resolveBuffer.destroy();
    return [...byKey.values()].sort((a, b) => b.ms - a.ms);
  }
}
