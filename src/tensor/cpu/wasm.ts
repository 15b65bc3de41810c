/**
 * The f32 matmul of the CPU backend as WebAssembly SIMD (128-bit, 4 f32 lanes), emitted here as
 * bytecode: V8 compiles plain TypeScript loops to scalar f64 code (~4.5 GFLOP/s a core on the bench
 * machine) and has no other way to reach the vector units.
 *
 * c[i, j] = sum_k a[i, k] * b[j, k] + bias[j] with a [M, K], b [N, K] row-major. Both operands are
 * first packed (in wasm): a into blocks of 4 rows stored k-major (the 4 values of one k adjacent), b
 * into panels of 8 rows stored k-major (8 values of one k adjacent, zero rows past N). A tile of
 * 4 x 8 outputs is then 8 vector accumulators: per k, 2 vector loads of the b panel, 4 broadcast
 * loads of a and 8 multiply-adds, with no horizontal sums. Each output is one f32 sum in k order,
 * then + bias, as PyTorch's CPU kernels do (fused multiply-adds where relaxed SIMD is on).
 *
 * One shared WebAssembly.Memory holds the operands; the main thread and every pool worker run an
 * instance of the same module over it (see pool.ts). Data is copied in and out per call.
 */
import v8 from 'node:v8';

export const I32 = 0x7f;
const V128 = 0x7b;

export function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n) byte |= 0x80;
    out.push(byte);
  } while (n);
  return out;
}

function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(byte & 0x40)) || (n === -1 && byte & 0x40)) return [...out, byte];
    out.push(byte | 0x80);
  }
}

export const vec = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];
export const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];
export const name = (s: string): number[] => vec([...Buffer.from(s)].map((x) => [x]));
export const simd = (code: number, ...imm: number[]): number[] => [0xfd, ...uleb(code), ...imm];

export const op = {
  get: (i: number) => [0x20, ...uleb(i)],
  set: (i: number) => [0x21, ...uleb(i)],
  i32: (n: number) => [0x41, ...sleb(n)],
  add: [0x6a],
  sub: [0x6b],
  mul: [0x6c],
  and: [0x71],
  eqz: [0x45],
  leU: [0x4d],
  geU: [0x4f],
  ltU: [0x49],
  block: [0x02, 0x40],
  loop: [0x03, 0x40],
  if: [0x04, 0x40],
  else: [0x05],
  end: [0x0b],
  br: (depth: number) => [0x0c, depth],
  brIf: (depth: number) => [0x0d, depth],
  f32Load: [0x2a, 2, 0],
  f32Store: [0x38, 2, 0],
  f32Zero: [0x43, 0, 0, 0, 0],
  v128Load: (offset: number) => simd(0x00, 4, ...uleb(offset)),
  v128Store: (offset: number) => simd(0x0b, 4, ...uleb(offset)),
  f32Splat: (offset: number) => simd(0x09, 2, ...uleb(offset)),
  v128Zero: simd(0x0c, ...new Array(16).fill(0)),
  f32x4Add: simd(0xe4),
  f32x4Mul: simd(0xe6),
  f32x4RelaxedMadd: simd(0x105),
};

/** Rows of a packed a block and columns of a packed b panel: one tile is ROWS x COLS outputs. */
export const ROWS = 4;
export const COLS = 8;
const VECS = COLS / 4;

export type Emit = (...parts: number[][]) => void;

/** for (v = lo; v < hi; v += step) body(): v is a local, lo and hi push an i32. */
export function countedLoop(
  emit: Emit,
  [v, lo, hi, step]: [number, number[], number[], number],
  body: () => void,
) {
  emit(lo, op.set(v), op.block, op.loop, op.get(v), hi, op.geU, op.brIf(1));
  body();
  emit(op.get(v), op.i32(step), op.add, op.set(v), op.br(0), op.end, op.end);
}

export function functionBody(i32Locals: number, v128Locals: number, code: number[]): number[] {
  const locals = vec([
    [...uleb(i32Locals), I32],
    [...uleb(v128Locals), V128],
  ]);
  return [...uleb(locals.length + code.length), ...locals, ...code];
}

/**
 * Parameters of the tile functions: byte addresses of packed a, packed b, c and bias; K; the row
 * stride of c in elements; rows [i0, i1) (a multiple of R apart), panels [p0, p1), k in [k0, k1);
 * flags: 1 = add onto c (a later k block), 2 = add the bias (the last k block).
 */
const TILE_PARAMS = ['a', 'b', 'c', 'bias', 'K', 'ldc', 'i0', 'i1', 'p0', 'p1', 'k0', 'k1', 'flags'] as const;
const T = Object.fromEntries(TILE_PARAMS.map((p, i) => [p, i])) as Record<
  (typeof TILE_PARAMS)[number],
  number
>;

/**
 * R x 8 tiles (R = 4 for the bulk, 1-3 for the last rows). Only R * 2 accumulators, 2 panel vectors
 * and R broadcasts live in the k loop, and it is not unrolled: TurboFan schedules every load of a
 * loop body first, so anything larger spills accumulators to the stack (measured).
 */
function tileFunction(R: number, fma: boolean): number[] {
  let next = TILE_PARAMS.length;
  const local = () => next++;
  const [i, p, pa, paEnd, pb, cRow, ldcBytes] = Array.from({ length: 7 }, local);
  const firstVector = next;
  const acc = Array.from({ length: R * VECS }, local);
  const vb = Array.from({ length: VECS }, local);
  const va = local();
  const code: number[] = [];
  const emit = (...parts: number[][]) => {
    for (const x of parts) code.push(...x);
  };
  const rowOfC = (r: number) => [...op.get(cRow), ...op.i32(r), ...op.get(ldcBytes), ...op.mul, ...op.add];

  emit(op.get(T.ldc), op.i32(4), op.mul, op.set(ldcBytes));
  countedLoop(emit, [p, op.get(T.p0), op.get(T.p1), 1], () => {
    countedLoop(emit, [i, op.get(T.i0), op.get(T.i1), R], () => {
      // pa = a + i*K*4 + k0*R*4 (the block of rows i..i+R-1); pb = b + p*K*COLS*4 + k0*COLS*4
      emit(op.get(T.a), op.get(i), op.get(T.K), op.mul, op.i32(4), op.mul, op.add);
      emit(op.get(T.k0), op.i32(R * 4), op.mul, op.add, op.set(pa));
      emit(op.get(pa), op.get(T.k1), op.get(T.k0), op.sub, op.i32(R * 4), op.mul, op.add, op.set(paEnd));
      emit(op.get(T.b), op.get(p), op.get(T.K), op.mul, op.get(T.k0), op.add, op.i32(COLS * 4), op.mul);
      emit(op.add, op.set(pb));
      emit(op.get(T.c), op.get(i), op.get(ldcBytes), op.mul, op.add, op.get(p), op.i32(COLS * 4), op.mul);
      emit(op.add, op.set(cRow));

      emit(op.get(T.flags), op.i32(1), op.and, op.if);
      for (let r = 0; r < R; r++)
        for (let v = 0; v < VECS; v++) emit(rowOfC(r), op.v128Load(v * 16), op.set(acc[r * VECS + v]));
      emit(op.else);
      for (const x of acc) emit(op.v128Zero, op.set(x));
      emit(op.end);

      emit(op.block, op.loop, op.get(pa), op.get(paEnd), op.geU, op.brIf(1));
      for (let v = 0; v < VECS; v++) emit(op.get(pb), op.v128Load(v * 16), op.set(vb[v]));
      for (let r = 0; r < R; r++) {
        emit(op.get(pa), op.f32Splat(r * 4), op.set(va));
        for (let v = 0; v < VECS; v++) {
          const x = acc[r * VECS + v];
          if (fma) emit(op.get(va), op.get(vb[v]), op.get(x), op.f32x4RelaxedMadd, op.set(x));
          else emit(op.get(x), op.get(va), op.get(vb[v]), op.f32x4Mul, op.f32x4Add, op.set(x));
        }
      }
      emit(op.get(pa), op.i32(R * 4), op.add, op.set(pa));
      emit(op.get(pb), op.i32(COLS * 4), op.add, op.set(pb), op.br(0), op.end, op.end);

      emit(op.get(T.flags), op.i32(2), op.and, op.if);
      for (let v = 0; v < VECS; v++) {
        emit(op.get(T.bias), op.get(p), op.i32(COLS * 4), op.mul, op.add, op.v128Load(v * 16), op.set(vb[v]));
        for (let r = 0; r < R; r++) {
          const x = acc[r * VECS + v];
          emit(op.get(x), op.get(vb[v]), op.f32x4Add, op.set(x));
        }
      }
      emit(op.end);
      for (let r = 0; r < R; r++)
        for (let v = 0; v < VECS; v++) emit(rowOfC(r), op.get(acc[r * VECS + v]), op.v128Store(v * 16));
    });
  });
  emit(op.end);
  return functionBody(firstVector - TILE_PARAMS.length, next - firstVector, code);
}

/**
 * packW(src, dst, rows, K, blk0, blk1): blocks [blk0, blk1) of W rows of src [rows, K] (f32, or
 * bf16 bits widened on the way) to k-major f32 (the W values of one k adjacent) at
 * dst + first row * K * 4. The last block is cut to the rows left (pad = false: packed a) or
 * filled to W with zero rows (pad = true: packed b panels). Full blocks with K a multiple of 4 move
 * as 4 x 4 transposes of vectors, the rest one value at a time.
 */
const PACK_PARAMS = ['src', 'dst', 'rows', 'K', 'blk0', 'blk1'] as const;
const Q = Object.fromEntries(PACK_PARAMS.map((p, i) => [p, i])) as Record<
  (typeof PACK_PARAMS)[number],
  number
>;

/** i8x16.shuffle picking f32 lanes (0-3 from a, 4-7 from b). */
export const shuffle32 = (lanes: number[]) =>
  simd(0x0d, ...lanes.flatMap((l) => [0, 1, 2, 3].map((b) => l * 4 + b)));
const TRANSPOSE = {
  unpackLo: shuffle32([0, 4, 1, 5]),
  unpackHi: shuffle32([2, 6, 3, 7]),
  lowHalves: shuffle32([0, 1, 4, 5]),
  highHalves: shuffle32([2, 3, 6, 7]),
};

/** How one source value (at the address on the stack) becomes f32: bytes, one value, four values. */
const SOURCES = {
  f32: { bytes: 4, one: [op.f32Load], four: [op.v128Load(0)] },
  // bf16 is the top half of an f32: load zero-extended, shift up by 16
  bf16: {
    bytes: 2,
    one: [[0x2f, 1, 0], op.i32(16), [0x74], [0xbe]],
    four: [simd(0x04, 3, 0), op.i32(16), simd(0xab)],
  },
};

function packFunction(W: number, pad: boolean, source: keyof typeof SOURCES): number[] {
  const src = SOURCES[source];
  let next = PACK_PARAMS.length;
  const local = () => next++;
  const [blk, row0, m, r, s, d, dEnd, strideBytes, srcRowBytes] = Array.from({ length: 9 }, local);
  const firstVector = next;
  const rows4 = Array.from({ length: 4 }, local);
  const pairs = Array.from({ length: 4 }, local);
  const code: number[] = [];
  const emit = (...parts: number[][]) => {
    for (const x of parts) code.push(...x);
  };
  const sAtRow = (row: number[][]) =>
    emit(op.get(Q.src), ...row, op.get(srcRowBytes), op.mul, op.add, op.set(s));

  // one row at a time: d walks dst + (row0 * K + k * m + r) * 4, zeros for rows past the end
  const scalarBlock = () =>
    countedLoop(emit, [r, op.i32(0), op.get(m), 1], () => {
      emit(op.get(Q.dst), op.get(row0), op.get(Q.K), op.mul, op.get(r), op.add, op.i32(4), op.mul, op.add);
      emit(op.set(d), op.get(d), op.get(Q.K), op.get(strideBytes), op.mul, op.add, op.set(dEnd));
      sAtRow([op.get(row0), op.get(r), op.add]);
      const copyOrZero = (value: number[][]) => {
        emit(op.block, op.loop, op.get(d), op.get(dEnd), op.geU, op.brIf(1));
        emit(op.get(d), ...value, op.f32Store);
        emit(op.get(s), op.i32(src.bytes), op.add, op.set(s));
        emit(op.get(d), op.get(strideBytes), op.add, op.set(d), op.br(0), op.end, op.end);
      };
      emit(op.get(row0), op.get(r), op.add, op.get(Q.rows), op.ltU, op.if);
      copyOrZero([op.get(s), ...src.one]);
      emit(op.else);
      copyOrZero([op.f32Zero]);
      emit(op.end);
    });

  // 4 k at a time: s walks row row0 of src, d the packed block; rows 4g..4g+3 are transposed
  const vectorBlock = () => {
    sAtRow([op.get(row0)]);
    emit(op.get(Q.dst), op.get(row0), op.get(Q.K), op.mul, op.i32(4), op.mul, op.add, op.set(d));
    emit(op.get(d), op.get(Q.K), op.i32(4 * W), op.mul, op.add, op.set(dEnd));
    emit(op.block, op.loop, op.get(d), op.get(dEnd), op.geU, op.brIf(1));
    for (let g = 0; g < W / 4; g++) {
      for (let q = 0; q < 4; q++) {
        emit(op.get(s), op.get(srcRowBytes), op.i32(4 * g + q), op.mul, op.add, ...src.four);
        emit(op.set(rows4[q]));
      }
      const [a, b, c, e] = rows4;
      emit(op.get(a), op.get(b), TRANSPOSE.unpackLo, op.set(pairs[0]));
      emit(op.get(c), op.get(e), TRANSPOSE.unpackLo, op.set(pairs[1]));
      emit(op.get(a), op.get(b), TRANSPOSE.unpackHi, op.set(pairs[2]));
      emit(op.get(c), op.get(e), TRANSPOSE.unpackHi, op.set(pairs[3]));
      for (let t = 0; t < 4; t++) {
        const [lo, hi] = t < 2 ? [pairs[0], pairs[1]] : [pairs[2], pairs[3]];
        const half = t % 2 ? TRANSPOSE.highHalves : TRANSPOSE.lowHalves;
        emit(op.get(d), op.get(lo), op.get(hi), half, op.v128Store((t * W + 4 * g) * 4));
      }
    }
    emit(op.get(s), op.i32(4 * src.bytes), op.add, op.set(s));
    emit(op.get(d), op.i32(16 * W), op.add, op.set(d), op.br(0), op.end, op.end);
  };

  emit(op.get(Q.K), op.i32(src.bytes), op.mul, op.set(srcRowBytes));
  countedLoop(emit, [blk, op.get(Q.blk0), op.get(Q.blk1), 1], () => {
    emit(op.get(blk), op.i32(W), op.mul, op.set(row0));
    emit(op.i32(W), op.set(m));
    if (!pad) {
      emit(op.get(Q.rows), op.get(row0), op.sub, op.i32(W), op.ltU, op.if);
      emit(op.get(Q.rows), op.get(row0), op.sub, op.set(m), op.end);
    }
    emit(op.get(m), op.i32(4), op.mul, op.set(strideBytes));
    // vectors when the block has W real rows and K is a multiple of 4
    emit(op.get(row0), op.i32(W), op.add, op.get(Q.rows), op.leU, op.get(Q.K), op.i32(3), op.and, op.eqz);
    emit(op.and, op.if);
    vectorBlock();
    emit(op.else);
    scalarBlock();
    emit(op.end);
  });
  emit(op.end);
  return functionBody(firstVector - PACK_PARAMS.length, next - firstVector, code);
}

const PAGE = 65536;
/** 2 GiB: byte addresses stay below 2^31. */
export const MAX_PAGES = 32768;

/** Exports t1..t4 (tiles of 1..4 rows), pack4 (a), pack8 and pack8bf16 (b), and the memory. */
function moduleBytes(fma: boolean): Uint8Array {
  const signature = (n: number) => [0x60, ...vec(new Array(n).fill([I32])), 0];
  const type = section(1, vec([signature(TILE_PARAMS.length), signature(PACK_PARAMS.length)]));
  // imports env.memory: shared, 1 page min, MAX_PAGES max
  const imports = section(
    2,
    vec([[...name('env'), ...name('memory'), 2, 3, ...uleb(1), ...uleb(MAX_PAGES)]]),
  );
  const rows = Array.from({ length: ROWS }, (_, r) => r + 1);
  const packs = [
    packFunction(ROWS, false, 'f32'),
    packFunction(COLS, true, 'f32'),
    packFunction(COLS, true, 'bf16'),
  ];
  const funcs = section(3, vec([...rows.map(() => [0]), ...packs.map(() => [1])]));
  const exports = section(
    7,
    vec([
      ...rows.map((r, k) => [...name(`t${r}`), 0, k]),
      [...name('pack4'), 0, ROWS],
      [...name('pack8'), 0, ROWS + 1],
      [...name('pack8bf16'), 0, ROWS + 2],
      [...name('memory'), 2, 0],
    ]),
  );
  const code = section(10, vec([...rows.map((r) => tileFunction(r, fma)), ...packs]));
  return new Uint8Array([
    0,
    0x61,
    0x73,
    0x6d,
    1,
    0,
    0,
    0,
    ...type,
    ...imports,
    ...funcs,
    ...exports,
    ...code,
  ]);
}

/** The slice of the WebAssembly JS API used here (tsconfig's lib and @types/node 20 lack it). */
interface WasmMemory {
  readonly buffer: SharedArrayBuffer;
  grow(pages: number): number;
}
interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Memory: new (desc: { initial: number; maximum: number; shared: boolean }) => WasmMemory;
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
}
export const WASM = (globalThis as unknown as { WebAssembly?: WasmApi }).WebAssembly;

export interface WasmMatmul {
  module: object;
  memory: WasmMemory;
  /** whether the tiles use relaxed SIMD multiply-add (fused on CPUs with FMA) */
  fma: boolean;
}

let shared: WasmMatmul | null | undefined;

/**
 * The module bytes with relaxed SIMD multiply-add where this V8 validates it (Node 22+ by default;
 * Node 20 once its experimental flag is set, which V8 reads when it compiles), else with separate
 * multiply and add. LLMQ_WASM_FMA=0 forces the latter.
 */
function bestModuleBytes(): { bytes: Uint8Array; fma: boolean } {
  if (process.env.LLMQ_WASM_FMA !== '0') {
    const bytes = moduleBytes(true);
    if (WASM!.validate(bytes)) return { bytes, fma: true };
    try {
      v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
    } catch {}
    if (WASM!.validate(bytes)) return { bytes, fma: true };
  }
  return { bytes: moduleBytes(false), fma: false };
}

/** The module and memory, or null where WebAssembly SIMD is missing or LLMQ_WASM=0. */
export function wasmMatmul(): WasmMatmul | null {
  if (shared !== undefined) return shared;
  shared = null;
  if (process.env.LLMQ_WASM === '0' || WASM === undefined) return shared;
  try {
    const { bytes, fma } = bestModuleBytes();
    const module = new WASM.Module(bytes);
    const memory = new WASM.Memory({ initial: 16, maximum: MAX_PAGES, shared: true });
    installWasmMatmul(module, memory);
    shared = { module, memory, fma };
  } catch {
    shared = null;
  }
  return shared;
}

/** Instantiates the module over memory as the `llmqWasm` global the wasm kernels call. */
function installWasmMatmul(module: object, memory: WasmMemory): void {
  const instance = new WASM!.Instance(module, { env: { memory } });
  (globalThis as { llmqWasm?: unknown }).llmqWasm = instance.exports;
}

/** Grows the memory to hold `bytes`; false when that is past the 2 GiB limit. */
export function ensureWasmBytes(w: WasmMatmul, bytes: number): boolean {
  const pages = Math.ceil(bytes / PAGE);
  if (pages > MAX_PAGES) return false;
  const have = w.memory.buffer.byteLength / PAGE;
  if (pages > have) w.memory.grow(pages - have);
  return true;
}

/**
 * Byte offsets in the wasm memory for one [M, K] x [N, K]^T product: the packed operands, the bias
 * and c (row stride ldc = N rounded up to whole panels), then the unpacked copies of x and w.
 */
export interface WasmLayout {
  x: number;
  w: number;
  bias: number;
  out: number;
  ldc: number;
  xRaw: number;
  wRaw: number;
  bytes: number;
}

export function wasmLayout(M: number, N: number, K: number): WasmLayout {
  const ldc = Math.ceil(N / COLS) * COLS;
  const aligned = (bytes: number) => Math.ceil(bytes / 64) * 64;
  const x = 0;
  const w = aligned(x + M * K * 4);
  const bias = aligned(w + ldc * K * 4);
  const out = aligned(bias + ldc * 4);
  const xRaw = aligned(out + M * ldc * 4);
  const wRaw = aligned(xRaw + M * K * 4);
  return { x, w, bias, out, ldc, xRaw, wRaw, bytes: wRaw + N * K * 4 };
}

/** Work units of packWasm: row blocks of x, then two per panel of w (so a unit is 4 rows of either). */
export function packUnits(M: number, N: number): number {
  return Math.ceil(M / ROWS) + 2 * Math.ceil(N / COLS);
}

/** Work units of matmulWasm: panels of w (splitB) or row blocks of x. */
export function matmulUnits(M: number, N: number, splitB: number): number {
  return splitB ? Math.ceil(N / COLS) : Math.ceil(M / ROWS);
}

/**
 * Kernel (run by the pool like those of kernels.ts, so self-contained): copies row blocks
 * [start, end) of xSrc into the wasm memory at xRaw and packs them to x, then likewise the panels
 * of wSrc (f32, or bf16 bits) whose first unit falls in [start, end); wSrc null: w is already at
 * wRaw as f32. A few blocks at a time, so the pack reads rows just copied, still in cache.
 */
export function packWasm(
  xSrc: Float32Array,
  wSrc: Float32Array | Uint16Array | null,
  xRaw: number,
  x: number,
  wRaw: number,
  w: number,
  M: number,
  N: number,
  K: number,
  start: number,
  end: number,
): void {
  const wasm = (globalThis as unknown as { llmqWasm: Record<string, (...a: number[]) => void> }).llmqWasm;
  const memory = (wasm as unknown as { memory: { buffer: SharedArrayBuffer } }).memory;
  const blocksAtOnce = (rows: number) => Math.max(1, Math.floor(65536 / (rows * K * 4)));
  const xBlocks = Math.ceil(M / 4);
  const xRows = new Float32Array(memory.buffer, xRaw, M * K);
  for (let b = start, step = blocksAtOnce(4); b < Math.min(end, xBlocks); b += step) {
    const b1 = Math.min(end, xBlocks, b + step);
    xRows.set(xSrc.subarray(b * 4 * K, Math.min(M, b1 * 4) * K), b * 4 * K);
    wasm.pack4(xRaw, x, M, K, b, b1);
  }
  const p0 = Math.ceil(Math.max(0, start - xBlocks) / 2);
  const p1 = Math.ceil(Math.max(0, end - xBlocks) / 2);
  const bf16 = wSrc instanceof Uint16Array;
  const wRows = bf16
    ? new Uint16Array(memory.buffer, wRaw, N * K)
    : new Float32Array(memory.buffer, wRaw, N * K);
  for (let p = p0, step = blocksAtOnce(8); p < p1; p += step) {
    const pEnd = Math.min(p1, p + step);
    if (wSrc) wRows.set(wSrc.subarray(p * 8 * K, Math.min(N, pEnd * 8) * K), p * 8 * K);
    if (bf16) wasm.pack8bf16(wRaw, w, N, K, p, pEnd);
    else wasm.pack8(wRaw, w, N, K, p, pEnd);
  }
}

/**
 * Kernel: out = x w^T + bias over panels [start, end) of w (splitB) or row blocks [start, end) of x,
 * operands packed by packWasm, c the [M, ldc] scratch in wasm memory. Rows go in chunks of 64 (a
 * chunk of packed x stays in L2 while each panel of w, 8 x up to 512 values, sits in L1), K in
 * blocks of at most 512; each finished chunk is copied to out while it is still in cache.
 */
export function matmulWasm(
  x: number,
  w: number,
  c: number,
  bias: number,
  out: Float32Array,
  M: number,
  N: number,
  K: number,
  splitB: number,
  start: number,
  end: number,
): void {
  const wasm = (globalThis as unknown as { llmqWasm: Record<string, (...a: number[]) => void> }).llmqWasm;
  const memory = (wasm as unknown as { memory: { buffer: SharedArrayBuffer } }).memory;
  const ldc = Math.ceil(N / 8) * 8;
  const p0 = splitB ? start : 0;
  const p1 = splitB ? end : ldc / 8;
  const i0 = splitB ? 0 : start * 4;
  const i1 = splitB ? M : Math.min(M, end * 4);
  const j0 = p0 * 8;
  const j1 = Math.min(N, p1 * 8);
  const kc = Math.ceil(K / Math.ceil(K / 512));
  const cView = new Float32Array(memory.buffer, c, M * ldc);
  for (let i = i0; i < i1; i += 64) {
    const iEnd = Math.min(i1, i + 64);
    const iMid = i + ((iEnd - i) & ~3);
    for (let k0 = 0; k0 < K; k0 += kc) {
      const k1 = Math.min(K, k0 + kc);
      const flags = (k0 > 0 ? 1 : 0) | (k1 === K ? 2 : 0);
      if (iMid > i) wasm.t4(x, w, c, bias, K, ldc, i, iMid, p0, p1, k0, k1, flags);
      if (iEnd > iMid) wasm[`t${iEnd - iMid}`](x, w, c, bias, K, ldc, iMid, iEnd, p0, p1, k0, k1, flags);
    }
    if (ldc === N && j0 === 0 && j1 === N) out.set(cView.subarray(i * N, iEnd * N), i * N);
    else for (let r = i; r < iEnd; r++) out.set(cView.subarray(r * ldc + j0, r * ldc + j1), r * N + j0);
  }
}
