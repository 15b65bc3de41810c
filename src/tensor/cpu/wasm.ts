/**
 * The f32 matmul of the CPU backend as WebAssembly SIMD (128-bit, 4 f32 lanes), emitted here as
 * bytecode: V8 compiles plain TypeScript loops to scalar f64 code (~4.5 GFLOP/s a core on the bench
 * machine) and has no other way to reach the vector units.
 *
 * c[i, j] = sum_k a[i, k] * b[j, k] + bias[j] with a [M, K], b [N, K] row-major, K a multiple of 4.
 * Each output keeps 4 f32 partial sums (lane l sums k = l mod 4), added pairwise at the end, then the
 * bias: f32 accumulation, as PyTorch's CPU kernels do.
 *
 * One shared WebAssembly.Memory holds the operands; the main thread and every pool worker run an
 * instance of the same module over it (see pool.ts). Data is copied in and out per call.
 */

const I32 = 0x7f;
const V128 = 0x7b;

function uleb(n: number): number[] {
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

const vec = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];
const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];
const name = (s: string): number[] => vec([...Buffer.from(s)].map((x) => [x]));
const simd = (code: number, ...imm: number[]): number[] => [0xfd, ...uleb(code), ...imm];

const op = {
  get: (i: number) => [0x20, ...uleb(i)],
  set: (i: number) => [0x21, ...uleb(i)],
  i32: (n: number) => [0x41, ...sleb(n)],
  add: [0x6a],
  mul: [0x6c],
  geU: [0x4f],
  block: [0x02, 0x40],
  loop: [0x03, 0x40],
  end: [0x0b],
  br: (depth: number) => [0x0c, depth],
  brIf: (depth: number) => [0x0d, depth],
  f32Load: [0x2a, 2, 0],
  f32Store: [0x38, 2, 0],
  f32Add: [0x92],
  v128Load: simd(0x00, 4, 0),
  v128Zero: simd(0x0c, ...new Array(16).fill(0)),
  f32x4Add: simd(0xe4),
  f32x4Mul: simd(0xe6),
  lane: (l: number) => simd(0x1f, l),
};

/** Parameters of every tile function (byte addresses; rows [i0, i1) and columns [j0, j1)). */
const PARAMS = ['a', 'b', 'c', 'bias', 'N', 'K', 'i0', 'i1', 'j0', 'j1'] as const;
const P = Object.fromEntries(PARAMS.map((p, i) => [p, i])) as Record<(typeof PARAMS)[number], number>;

/**
 * Body of a function computing R x C output tiles over rows [i0, i1) (a multiple of R apart) and
 * columns [j0, j1) (a multiple of C apart).
 */
function tileFunction(R: number, C: number): number[] {
  let next = PARAMS.length;
  const local = () => next++;
  const [i, j, kk, kBytes] = [local(), local(), local(), local()];
  const rowA = Array.from({ length: R }, local);
  const rowB = Array.from({ length: C }, local);
  const firstVector = next;
  const acc = Array.from({ length: R * C }, local);
  const va = Array.from({ length: R }, local);
  const vb = local();
  const code: number[] = [];
  const emit = (...parts: number[][]) => {
    for (const p of parts) code.push(...p);
  };

  emit(op.get(P.K), op.i32(4), op.mul, op.set(kBytes));
  emit(op.get(P.i0), op.set(i), op.block, op.loop);
  emit(op.get(i), op.get(P.i1), op.geU, op.brIf(1));
  emit(op.get(P.j0), op.set(j), op.block, op.loop);
  emit(op.get(j), op.get(P.j1), op.geU, op.brIf(1));
  for (let r = 0; r < R; r++)
    emit(op.get(P.a), op.get(i), op.i32(r), op.add, op.get(kBytes), op.mul, op.add, op.set(rowA[r]));
  for (let q = 0; q < C; q++)
    emit(op.get(P.b), op.get(j), op.i32(q), op.add, op.get(kBytes), op.mul, op.add, op.set(rowB[q]));
  for (const x of acc) emit(op.v128Zero, op.set(x));

  // k loop, 4 lanes a step
  emit(op.i32(0), op.set(kk), op.block, op.loop);
  emit(op.get(kk), op.get(kBytes), op.geU, op.brIf(1));
  for (let r = 0; r < R; r++) emit(op.get(rowA[r]), op.get(kk), op.add, op.v128Load, op.set(va[r]));
  for (let q = 0; q < C; q++) {
    emit(op.get(rowB[q]), op.get(kk), op.add, op.v128Load, op.set(vb));
    for (let r = 0; r < R; r++) {
      const x = acc[r * C + q];
      emit(op.get(x), op.get(va[r]), op.get(vb), op.f32x4Mul, op.f32x4Add, op.set(x));
    }
  }
  emit(op.get(kk), op.i32(16), op.add, op.set(kk), op.br(0), op.end, op.end);

  // c[i + r, j + q] = (l0 + l1) + (l2 + l3) + bias[j + q]
  for (let r = 0; r < R; r++) {
    for (let q = 0; q < C; q++) {
      const x = acc[r * C + q];
      emit(op.get(P.c), op.get(i), op.i32(r), op.add, op.get(P.N), op.mul, op.get(j), op.add);
      emit(op.i32(q), op.add, op.i32(4), op.mul, op.add);
      emit(op.get(x), op.lane(0), op.get(x), op.lane(1), op.f32Add);
      emit(op.get(x), op.lane(2), op.get(x), op.lane(3), op.f32Add, op.f32Add);
      emit(op.get(P.bias), op.get(j), op.i32(q), op.add, op.i32(4), op.mul, op.add, op.f32Load, op.f32Add);
      emit(op.f32Store);
    }
  }
  emit(op.get(j), op.i32(C), op.add, op.set(j), op.br(0), op.end, op.end);
  emit(op.get(i), op.i32(R), op.add, op.set(i), op.br(0), op.end, op.end, op.end);

  const locals = vec([
    [...uleb(firstVector - PARAMS.length), I32],
    [...uleb(next - firstVector), V128],
  ]);
  return [...uleb(locals.length + code.length), ...locals, ...code];
}

/** Tile shapes: 2 x 4 for the bulk (fastest measured), the rest for the ragged edges. */
export const TILES = [
  [2, 4],
  [1, 4],
  [2, 1],
  [1, 1],
] as const;

function moduleBytes(): Uint8Array {
  const type = section(1, vec([[0x60, ...vec(PARAMS.map(() => [I32])), 0]]));
  // imports env.memory: shared, 1 page min, MAX_PAGES max
  const imports = section(
    2,
    vec([[...name('env'), ...name('memory'), 2, 3, ...uleb(1), ...uleb(MAX_PAGES)]]),
  );
  const funcs = section(3, vec(TILES.map(() => [0])));
  const exports = section(7, vec(TILES.map(([r, c], k) => [...name(`t${r}x${c}`), 0, k])));
  const code = section(10, vec(TILES.map(([r, c]) => tileFunction(r, c))));
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

const PAGE = 65536;
/** 2 GiB: byte addresses stay below 2^31. */
const MAX_PAGES = 32768;

/** The slice of the WebAssembly JS API used here (tsconfig's lib and @types/node 20 lack it). */
interface WasmMemory {
  readonly buffer: SharedArrayBuffer;
  grow(pages: number): number;
}
interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Memory: new (desc: { initial: number; maximum: number; shared: boolean }) => WasmMemory;
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
}
const WASM = (globalThis as unknown as { WebAssembly?: WasmApi }).WebAssembly;

export interface WasmMatmul {
  module: object;
  memory: WasmMemory;
}

let shared: WasmMatmul | null | undefined;

/** The module and memory, or null where WebAssembly SIMD is missing or LLMQ_WASM=0. */
export function wasmMatmul(): WasmMatmul | null {
  if (shared !== undefined) return shared;
  shared = null;
  if (process.env.LLMQ_WASM === '0' || WASM === undefined) return shared;
  try {
    const module = new WASM.Module(moduleBytes());
    const memory = new WASM.Memory({ initial: 16, maximum: MAX_PAGES, shared: true });
    installWasmMatmul(module, memory);
    shared = { module, memory };
  } catch {
    shared = null;
  }
  return shared;
}

/** Instantiates the module over memory as the `llmqWasm` global the matmulWasm kernel calls. */
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
