/**
 * Causal grouped-query attention of the CPU backend as WebAssembly SIMD, emitted with the bytecode
 * helpers of wasm.ts and run over the same shared memory by every pool thread.
 *
 * The work is split into blocks of 4 query rows of one head. Per block, three wasm functions:
 * - scores: S = Q_block K^T over the keys up to the block's last row, as 4 x 8 tiles (8 vector
 *   accumulators: broadcast loads of q, vector loads of K packed in panels of 8 keys, d-major);
 * - softmax: per row, masked keys (set to -inf here) drop out, exp(scale * (s - max)) is a
 *   vectorized polynomial, and the row sum is kept for later;
 * - pv: O = P V as 4 rows x 8 dims tiles straight from V's rows, divided by the row sums at the end.
 * Everything is f32 (fused multiply-adds where relaxed SIMD is on), as PyTorch's CPU attention is.
 */
import type { AttentionShape } from '../tensor.ts';
import {
  countedLoop,
  type Emit,
  ensureWasmBytes,
  functionBody,
  I32,
  MAX_PAGES,
  name,
  op,
  section,
  shuffle32,
  simd,
  uleb,
  vec,
  WASM,
  type WasmMatmul,
  wasmMatmul,
} from './wasm.ts';

const F32 = 0x7d;
/** Query rows per block and keys per packed K panel (the tile of the scores function). */
const ROWS = 4;
const KEYS = 8;

const f32x4Const = (x: number) => simd(0x0c, ...new Uint8Array(new Float32Array(4).fill(x).buffer));
const i32x4Const = (x: number) => simd(0x0c, ...new Uint8Array(new Int32Array(4).fill(x).buffer));
const vop = {
  splat: simd(0x13),
  lane0: simd(0x1f, 0),
  sub: simd(0xe5),
  div: simd(0xe7),
  max: simd(0xe9),
  i32x4Add: simd(0xae),
  i32x4Shl: simd(0xab),
};
const gtU = [0x4b];

/** Emits code into an array; `madd(x, a, b)` is x += a * b on v128 locals. */
function emitter(fma: boolean) {
  const code: number[] = [];
  const emit: Emit = (...parts) => {
    for (const x of parts) code.push(...x);
  };
  const madd = (x: number, a: number, b: number) => {
    if (fma) emit(op.get(a), op.get(b), op.get(x), op.f32x4RelaxedMadd, op.set(x));
    else emit(op.get(x), op.get(a), op.get(b), op.f32x4Mul, op.f32x4Add, op.set(x));
  };
  return { code, emit, madd };
}

/**
 * scores(q, kp, s, D, ldS, panels): s[r, p * 8 + c] = sum_d q[d, r] kp[p, d, c] for the 4 rows of the
 * packed query block q ([D, 4]) and panels [0, panels) of the packed keys kp ([panels, D, 8]).
 */
function scoresFunction(fma: boolean): number[] {
  const [q, kp, s, D, ldS, panels] = [0, 1, 2, 3, 4, 5];
  let next = 6;
  const local = () => next++;
  const [p, pa, paEnd, pb, sCol, ldSBytes] = Array.from({ length: 6 }, local);
  const firstVector = next;
  const acc = Array.from({ length: 8 }, local);
  const vb = [local(), local()];
  const va = local();
  const { code, emit, madd } = emitter(fma);

  emit(op.get(ldS), op.i32(4), op.mul, op.set(ldSBytes), op.get(kp), op.set(pb), op.get(s), op.set(sCol));
  countedLoop(emit, [p, op.i32(0), op.get(panels), 1], () => {
    for (const x of acc) emit(op.v128Zero, op.set(x));
    emit(op.get(q), op.set(pa), op.get(q), op.get(D), op.i32(16), op.mul, op.add, op.set(paEnd));
    emit(op.block, op.loop, op.get(pa), op.get(paEnd), op.geU, op.brIf(1));
    emit(op.get(pb), op.v128Load(0), op.set(vb[0]), op.get(pb), op.v128Load(16), op.set(vb[1]));
    for (let r = 0; r < ROWS; r++) {
      emit(op.get(pa), op.f32Splat(r * 4), op.set(va));
      for (let v = 0; v < 2; v++) madd(acc[r * 2 + v], va, vb[v]);
    }
    emit(op.get(pa), op.i32(16), op.add, op.set(pa));
    emit(op.get(pb), op.i32(32), op.add, op.set(pb), op.br(0), op.end, op.end);
    for (let r = 0; r < ROWS; r++)
      for (let v = 0; v < 2; v++) {
        emit(op.get(sCol), op.i32(r), op.get(ldSBytes), op.mul, op.add);
        emit(op.get(acc[r * 2 + v]), op.v128Store(v * 16));
      }
    emit(op.get(sCol), op.i32(32), op.add, op.set(sCol));
  });
  emit(op.end);
  return functionBody(firstVector - 6, next - firstVector, code);
}

/** ln 2 split so that n * LN2_HI is exact for |n| < 2^8. */
const LN2_HI = 0.693145751953125;
const LN2_LO = 1.4286068203094173e-6;
/** 1.5 * 2^23: x + MAGIC rounds x to an integer, held in the low mantissa bits. */
const MAGIC = 12582912;
/** Vectors per pass of the exp loop: two independent chains through the polynomial. */
const UNROLL = 2;
/** Taylor coefficients 1/k! of exp on [-ln2/2, ln2/2], highest first (error ~5e-9 relative). */
const EXP_POLY = [1 / 5040, 1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1, 1];

/**
 * softmax(s, ldS, len, scale, sums): for each of the 4 rows of s, s[j] = exp(scale * (s[j] - max))
 * over [0, len) (a multiple of 8) and sums[r] = the row's sum. exp splits x = n ln2 + t (Cody-Waite),
 * n rounded by adding 1.5 * 2^23 (n then sits in the low bits of the sum), and builds 2^n in the
 * exponent bits; x is clamped at -88, where n = -127 makes the result exactly 0, so -inf scores
 * (masked keys) weigh nothing. Constants live in locals: a v128.const in the loop is rebuilt from
 * immediates on every pass.
 */
function softmaxFunction(fma: boolean): number[] {
  const [s, ldS, len, scale, sums] = [0, 1, 2, 3, 4];
  let next = 5;
  const local = () => next++;
  const [r, row, end, ptr] = Array.from({ length: 4 }, local);
  const firstVector = next;
  const [m, total, scaleV] = Array.from({ length: 3 }, local);
  const temps = Array.from({ length: UNROLL }, () => Array.from({ length: 5 }, local));
  const { code, emit } = emitter(fma);
  const constant = (bytes: number[]) => {
    const at = local();
    emit(bytes, op.set(at));
    return at;
  };
  const [floor, log2e, magic, ln2Hi, ln2Lo, bias] = [
    constant(f32x4Const(-88)),
    constant(f32x4Const(Math.LOG2E)),
    constant(f32x4Const(MAGIC)),
    constant(f32x4Const(LN2_HI)),
    constant(f32x4Const(LN2_LO)),
    constant(i32x4Const(127)),
  ];
  const coefficient = new Map([...new Set(EXP_POLY)].map((c) => [c, constant(f32x4Const(c))]));
  const across = (v: number, combine: number[]) => {
    for (const lanes of [
      [2, 3, 0, 1],
      [1, 0, 3, 2],
    ])
      emit(op.get(v), op.get(v), op.get(v), shuffle32(lanes), combine, op.set(v));
  };
  const eachVector = (step: number, body: () => void) => {
    emit(op.get(row), op.set(ptr), op.block, op.loop, op.get(ptr), op.get(end), op.geU, op.brIf(1));
    body();
    emit(op.get(ptr), op.i32(16 * step), op.add, op.set(ptr), op.br(0), op.end, op.end);
  };
  const mulAdd = (a: number, b: number, c: number) => {
    if (fma) emit(op.get(a), op.get(b), op.get(c), op.f32x4RelaxedMadd);
    else emit(op.get(a), op.get(b), op.f32x4Mul, op.get(c), op.f32x4Add);
  };

  emit(op.get(scale), vop.splat, op.set(scaleV));
  countedLoop(emit, [r, op.i32(0), op.i32(ROWS), 1], () => {
    emit(op.get(s), op.get(r), op.get(ldS), op.mul, op.i32(4), op.mul, op.add, op.set(row));
    emit(op.get(row), op.get(len), op.i32(4), op.mul, op.add, op.set(end));
    emit(f32x4Const(Number.NEGATIVE_INFINITY), op.set(m));
    eachVector(1, () => emit(op.get(m), op.get(ptr), op.v128Load(0), vop.max, op.set(m)));
    across(m, vop.max);
    emit(op.v128Zero, op.set(total));
    eachVector(UNROLL, () => {
      temps.forEach(([x, kf, n, t, poly], u) => {
        emit(op.get(ptr), op.v128Load(16 * u), op.get(m), vop.sub, op.get(scaleV), op.f32x4Mul);
        emit(op.get(floor), vop.max, op.set(x));
        mulAdd(x, log2e, magic);
        emit(op.set(kf), op.get(kf), op.get(magic), vop.sub, op.set(n));
        emit(op.get(x), op.get(n), op.get(ln2Hi), op.f32x4Mul, vop.sub);
        emit(op.get(n), op.get(ln2Lo), op.f32x4Mul, vop.sub, op.set(t));
        emit(op.get(coefficient.get(EXP_POLY[0])!), op.set(poly));
      });
      for (const c of EXP_POLY.slice(1))
        for (const [, , , t, poly] of temps) {
          mulAdd(poly, t, coefficient.get(c)!);
          emit(op.set(poly));
        }
      temps.forEach(([x, kf, , , poly], u) => {
        // 2^n: (n + 127) << 23 as f32 bits (the high bits of kf shift out); n = -127 gives +0
        emit(op.get(kf), op.get(bias), vop.i32x4Add, op.i32(23), vop.i32x4Shl);
        emit(op.get(poly), op.f32x4Mul, op.set(x), op.get(ptr), op.get(x), op.v128Store(16 * u));
        emit(op.get(total), op.get(x), op.f32x4Add, op.set(total));
      });
    });
    across(total, op.f32x4Add);
    emit(op.get(sums), op.get(r), op.i32(4), op.mul, op.add, op.get(total), vop.lane0, op.f32Store);
  });
  emit(op.end);
  return functionBody(firstVector - 5, next - firstVector, code);
}

/**
 * pv(s, ldS, v, ldV, D, keys, out, ldOut, rows, sums): out[r, d] = sum_j s[r, j] v[j, d] / sums[r]
 * over keys [0, keys), for the first `rows` of the 4 rows; row strides in elements.
 */
function pvFunction(fma: boolean): number[] {
  const [s, ldS, v, ldV, D, keys, out, ldOut, rows, sums] = Array.from({ length: 10 }, (_, i) => i);
  let next = 10;
  const local = () => next++;
  const [dp, pp, ppEnd, pv, ldVBytes, ldOutBytes] = Array.from({ length: 6 }, local);
  const rowOffset = [0, local(), local(), local()];
  const firstVector = next;
  const acc = Array.from({ length: 8 }, local);
  const vb = [local(), local()];
  const va = local();
  const { code, emit, madd } = emitter(fma);

  for (let r = 1; r < ROWS; r++) emit(op.get(ldS), op.i32(4 * r), op.mul, op.set(rowOffset[r]));
  emit(
    op.get(ldV),
    op.i32(4),
    op.mul,
    op.set(ldVBytes),
    op.get(ldOut),
    op.i32(4),
    op.mul,
    op.set(ldOutBytes),
  );
  countedLoop(emit, [dp, op.i32(0), [...op.get(D), ...op.i32(4), ...op.mul], 32], () => {
    for (const x of acc) emit(op.v128Zero, op.set(x));
    emit(op.get(s), op.set(pp), op.get(s), op.get(keys), op.i32(4), op.mul, op.add, op.set(ppEnd));
    emit(op.get(v), op.get(dp), op.add, op.set(pv));
    emit(op.block, op.loop, op.get(pp), op.get(ppEnd), op.geU, op.brIf(1));
    emit(op.get(pv), op.v128Load(0), op.set(vb[0]), op.get(pv), op.v128Load(16), op.set(vb[1]));
    for (let r = 0; r < ROWS; r++) {
      emit(op.get(pp));
      if (r) emit(op.get(rowOffset[r]), op.add);
      emit(op.f32Splat(0), op.set(va));
      for (let c = 0; c < 2; c++) madd(acc[r * 2 + c], va, vb[c]);
    }
    emit(op.get(pp), op.i32(4), op.add, op.set(pp));
    emit(op.get(pv), op.get(ldVBytes), op.add, op.set(pv), op.br(0), op.end, op.end);
    for (let r = 0; r < ROWS; r++) {
      emit(op.get(sums), op.f32Splat(r * 4), op.set(va));
      emit(op.get(rows), op.i32(r), gtU, op.if);
      for (let c = 0; c < 2; c++) {
        emit(op.get(out), op.get(dp), op.add, op.i32(r), op.get(ldOutBytes), op.mul, op.add);
        emit(op.get(acc[r * 2 + c]), op.get(va), vop.div, op.v128Store(c * 16));
      }
      emit(op.end);
    }
  });
  emit(op.end);
  return functionBody(firstVector - 10, next - firstVector, code);
}

function moduleBytes(fma: boolean): Uint8Array {
  const signature = (params: number[]) => [0x60, ...vec(params.map((p) => [p])), 0];
  const type = section(
    1,
    vec([
      signature(new Array(6).fill(I32)),
      signature([I32, I32, I32, F32, I32]),
      signature(new Array(10).fill(I32)),
    ]),
  );
  const imports = section(
    2,
    vec([[...name('env'), ...name('memory'), 2, 3, ...uleb(1), ...uleb(MAX_PAGES)]]),
  );
  const funcs = section(3, vec([[0], [1], [2]]));
  const exports = section(
    7,
    vec([
      [...name('scores'), 0, 0],
      [...name('softmax'), 0, 1],
      [...name('pv'), 0, 2],
    ]),
  );
  const code = section(10, vec([scoresFunction(fma), softmaxFunction(fma), pvFunction(fma)]));
  const header = [0, 0x61, 0x73, 0x6d, 1, 0, 0, 0];
  return new Uint8Array([...header, ...type, ...imports, ...funcs, ...exports, ...code]);
}

export interface WasmAttention {
  module: object;
  /** the matmul's module and memory: attention runs over the same memory */
  matmul: WasmMatmul;
}

let shared: WasmAttention | null | undefined;

/** The attention module over the matmul's memory, or null where that is off or missing. */
export function wasmAttention(): WasmAttention | null {
  if (shared !== undefined) return shared;
  const matmul = wasmMatmul();
  shared = null;
  if (!matmul || process.env.LLMQ_WASM_ATTENTION === '0') return shared;
  try {
    shared = { module: new WASM!.Module(moduleBytes(matmul.fma)), matmul };
  } catch {
    shared = null;
  }
  return shared;
}

/** Byte offsets in the wasm memory: V as is, K packed, the output, a slot counter, per-thread slots. */
interface AttentionLayout {
  v: number;
  k: number;
  out: number;
  counter: number;
  slots: number;
  slotBytes: number;
  bytes: number;
}

function attentionLayout(s: AttentionShape, threads: number): AttentionLayout {
  const aligned = (bytes: number) => Math.ceil(bytes / 64) * 64;
  const rows = s.batch * s.seqLen;
  const keys = Math.ceil(s.seqLen / KEYS) * KEYS;
  const v = 0;
  const k = aligned(v + rows * s.numKvHeads * s.headDim * 4);
  const out = aligned(k + s.batch * s.numKvHeads * keys * s.headDim * 4);
  const counter = aligned(out + rows * s.numHeads * s.headDim * 4);
  const slots = counter + 64;
  // a slot: the packed query block [D, 4], the 4 row sums, the scores [4, keys]
  const slotBytes = aligned(ROWS * 4 * (s.headDim + 1 + keys));
  return { v, k, out, counter, slots, slotBytes, bytes: slots + threads * slotBytes };
}

/**
 * Copies V and packs K into the wasm memory for attentionBlocks. Returns the kernel's arguments
 * and unit count, and a view of the output there; null when it does not fit or D is not a
 * multiple of 8.
 */
export function prepareAttention(
  wasm: WasmAttention,
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  s: AttentionShape,
  threads: number,
) {
  if (s.headDim % 8 !== 0) return null;
  const at = attentionLayout(s, threads);
  if (!ensureWasmBytes(wasm.matmul, at.bytes)) return null;
  const memory = wasm.matmul.memory;
  const buffer = memory.buffer;
  new Float32Array(buffer, at.v, v.length).set(v);
  packKeys(k, new Float32Array(buffer, at.k, (at.out - at.k) / 4), s);
  new Int32Array(buffer, at.counter, 1)[0] = 0;
  const { seqLen, numHeads, numKvHeads, headDim } = s;
  const args = [
    wasm.module,
    memory,
    q,
    at.v,
    at.k,
    at.out,
    at.counter,
    at.slots,
    at.slotBytes,
    seqLen,
    numHeads,
    numKvHeads,
    headDim,
  ] as const;
  const pairs = Math.ceil(Math.ceil(seqLen / ROWS) / 2);
  const out = new Float32Array(buffer, at.out, q.length);
  return { args, units: s.batch * numHeads * pairs, out };
}

/** K [batch * seqLen, kvHeads * D] to panels of 8 keys per (sequence, kv head), d-major, zero-padded. */
function packKeys(k: Float32Array, dst: Float32Array, s: AttentionShape): void {
  const { batch, seqLen, numKvHeads, headDim: D } = s;
  const panels = Math.ceil(seqLen / KEYS);
  const kvStride = numKvHeads * D;
  dst.fill(0);
  for (let b = 0; b < batch; b++)
    for (let h = 0; h < numKvHeads; h++) {
      const base = (b * numKvHeads + h) * panels * D * KEYS;
      for (let j = 0; j < seqLen; j++) {
        const src = (b * seqLen + j) * kvStride + h * D;
        const o = base + (j >> 3) * D * KEYS + (j & 7);
        for (let d = 0; d < D; d++) dst[o + d * KEYS] = k[src + d];
      }
    }
}

/**
 * Kernel (run by the pool, so self-contained): units [start, end) are (sequence, head, pair of
 * query blocks), the pair being blocks p and last - p so that every unit has the same causal work.
 * Each call takes a scratch slot of its own through an atomic counter.
 */
export function attentionBlocks(
  module: object,
  memory: { buffer: SharedArrayBuffer },
  q: Float32Array,
  vAt: number,
  kAt: number,
  outAt: number,
  counter: number,
  slots: number,
  slotBytes: number,
  seqLen: number,
  numHeads: number,
  numKvHeads: number,
  headDim: number,
  start: number,
  end: number,
): void {
  const g = globalThis as unknown as {
    llmqAttention?: Record<string, (...a: number[]) => void>;
    WebAssembly: {
      Instance: new (m: object, i: object) => { exports: Record<string, (...a: number[]) => void> };
    };
  };
  if (!g.llmqAttention) g.llmqAttention = new g.WebAssembly.Instance(module, { env: { memory } }).exports;
  const wasm = g.llmqAttention;
  const buffer = memory.buffer;
  const mem = new Float32Array(buffer);
  const D = headDim;
  const slot = slots + Atomics.add(new Int32Array(buffer, counter, 1), 0, 1) * slotBytes;
  const qBlock = slot;
  const sums = qBlock + D * 16;
  const scores = sums + 16;
  const panels = Math.ceil(seqLen / 8);
  const ldS = panels * 8;
  const qStride = numHeads * D;
  const kvStride = numKvHeads * D;
  const blocks = Math.ceil(seqLen / 4);
  const pairs = Math.ceil(blocks / 2);
  const scale = 1 / Math.sqrt(D);
  for (let unit = start; unit < end; unit++) {
    const seqHead = Math.floor(unit / pairs);
    const pair = unit % pairs;
    const b = Math.floor(seqHead / numHeads);
    const h = seqHead % numHeads;
    const kvh = Math.floor(h / (numHeads / numKvHeads));
    const last = blocks - 1 - pair;
    for (let t = 0; t < (last > pair ? 2 : 1); t++) {
      const blk = t ? last : pair;
      const i0 = blk * 4;
      const rows = Math.min(4, seqLen - i0);
      for (let r = 0; r < 4; r++) {
        const src = (b * seqLen + i0 + r) * qStride + h * D;
        for (let d = 0; d < D; d++) mem[qBlock / 4 + d * 4 + r] = r < rows ? q[src + d] : 0;
      }
      const keys = i0 + rows;
      const used = Math.ceil(keys / 8);
      wasm.scores(qBlock, kAt + (b * numKvHeads + kvh) * panels * D * 32, scores, D, ldS, used);
      // causal mask: row r sees keys [0, i0 + r]
      for (let r = 0; r < 4; r++)
        mem.fill(
          Number.NEGATIVE_INFINITY,
          scores / 4 + r * ldS + Math.min(i0 + r + 1, keys),
          scores / 4 + r * ldS + used * 8,
        );
      wasm.softmax(scores, ldS, used * 8, scale, sums);
      const vHead = vAt + (b * seqLen * kvStride + kvh * D) * 4;
      const outRow = outAt + ((b * seqLen + i0) * qStride + h * D) * 4;
      wasm.pv(scores, ldS, vHead, kvStride, D, keys, outRow, qStride, rows, sums);
    }
  }
}
