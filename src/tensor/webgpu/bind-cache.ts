/**
 * Reuse of bind groups and uniform parameters across dispatches. A decode step records the same few
 * hundred dispatches every token, on the same pooled buffers with the same parameters; creating each
 * bind group anew costs several times what recording the dispatch does (~28 us against ~5 us in
 * dawn.node on lavapipe), so the host, not the GPU, set the decode speed.
 *
 * Parameters get a slot in a uniform page, written with queue.writeBuffer (ordered before every later
 * submit); a page is rewritten only when all work binding it has been submitted. A bind group is cached under the kernel and the exact (buffer,
 * offset, size) of every binding; buffers of the per-submit arenas are never cached, and destroying a
 * buffer drops the groups that bind it.
 */

const UNIFORM_PAGE_BYTES = 1 << 16;
const MAX_GROUPS = 1 << 15;
const UNIFORM_COPY_DST = 0x40 | 0x08; // UNIFORM | COPY_DST

interface UniformPage {
  buffer: GPUBuffer;
  used: number;
  keys: string[];
  /** the submit epoch of the last dispatch that bound one of its slots */
  lastUse: number;
}

export class UniformCache {
  private readonly slots = new Map<string, { binding: GPUBufferBinding; page: UniformPage }>();
  private readonly pages: UniformPage[] = [];
  private current: UniformPage | undefined;
  /** submits so far: a page last used in an earlier epoch has no unsubmitted work binding it */
  private epoch = 0;

  constructor(
    private readonly device: GPUDevice,
    private readonly align: number,
    private readonly maxPages: number,
  ) {}

  /** Called when the recorded work is submitted. */
  submitted(): void {
    this.epoch++;
  }

  /** A binding holding the parameters `key`, or undefined when every page is bound by unsubmitted work. */
  get(key: string, size: number, write: (view: DataView) => void): GPUBufferBinding | undefined {
    const slot = this.slots.get(key);
    if (slot) {
      slot.page.lastUse = this.epoch;
      return slot.binding;
    }
    const page = this.pageWithRoom(size);
    if (!page) return undefined;
    const bytes = new ArrayBuffer(size);
    write(new DataView(bytes));
    this.device.queue.writeBuffer(page.buffer, page.used, bytes);
    const binding = { buffer: page.buffer, offset: page.used, size };
    page.used = Math.ceil((page.used + size) / this.align) * this.align;
    page.keys.push(key);
    page.lastUse = this.epoch;
    this.slots.set(key, { binding, page });
    return binding;
  }

  /**
   * The current page if `size` fits, else a new one, else the least recently used page once no
   * unsubmitted work binds it: its slots are forgotten and rewritten (queue writes land after the
   * work already submitted, so that work keeps reading the old values).
   */
  private pageWithRoom(size: number): UniformPage | undefined {
    if (this.current && this.current.used + size <= UNIFORM_PAGE_BYTES) return this.current;
    let page: UniformPage | undefined;
    if (this.pages.length < this.maxPages) {
      const buffer = this.device.createBuffer({ size: UNIFORM_PAGE_BYTES, usage: UNIFORM_COPY_DST });
      page = { buffer, used: 0, keys: [], lastUse: this.epoch };
      this.pages.push(page);
    } else {
      const oldest = this.pages.reduce((a, b) => (b.lastUse < a.lastUse ? b : a));
      if (oldest.lastUse >= this.epoch) return undefined;
      for (const key of oldest.keys) this.slots.delete(key);
      oldest.keys = [];
      oldest.used = 0;
      page = oldest;
    }
    this.current = page;
    return page;
  }
}

export class BindGroupCache {
  private readonly groups = new Map<string, GPUBindGroup>();
  private readonly ids = new WeakMap<GPUBuffer, number>();
  /** cache keys by the id of a buffer they bind, to drop them when it is destroyed */
  private readonly keysOf = new Map<number, string[]>();
  /** buffers that live for one submit (arenas): their groups would never be used again */
  private readonly transient = new WeakSet<GPUBuffer>();
  private nextId = 1;
  hits = 0;
  misses = 0;

  markTransient(buffer: GPUBuffer): void {
    this.transient.add(buffer);
  }

  /** The bind group for `bindings` of a kernel, made by `create` when not cached. */
  get(kernel: string, bindings: readonly GPUBufferBinding[], create: () => GPUBindGroup): GPUBindGroup {
    // one pass building the key: this runs for every dispatch
    let key = kernel;
    for (const b of bindings) {
      if (this.transient.has(b.buffer)) {
        this.misses++;
        return create();
      }
      key += `|${this.idOf(b.buffer)}:${b.offset}:${b.size}`;
    }
    const hit = this.groups.get(key);
    if (hit) {
      this.hits++;
      return hit;
    }
    this.misses++;
    const ids = bindings.map((b) => this.idOf(b.buffer));
    if (this.groups.size >= MAX_GROUPS) this.clear();
    const group = create();
    this.groups.set(key, group);
    for (const id of new Set(ids)) {
      let keys = this.keysOf.get(id);
      if (!keys) this.keysOf.set(id, (keys = []));
      keys.push(key);
    }
    return group;
  }

  /** Drops the groups that bind `buffer` (call before destroying it). */
  forget(buffer: GPUBuffer): void {
    const id = this.ids.get(buffer);
    if (id === undefined) return;
    for (const key of this.keysOf.get(id) ?? []) this.groups.delete(key);
    this.keysOf.delete(id);
  }

  get size(): number {
    return this.groups.size;
  }

  private idOf(buffer: GPUBuffer): number {
    let id = this.ids.get(buffer);
    if (id === undefined) this.ids.set(buffer, (id = this.nextId++));
    return id;
  }

  private clear(): void {
    this.groups.clear();
    this.keysOf.clear();
  }
}
