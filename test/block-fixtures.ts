/** Reading the llama.cpp block fixtures (test/fixtures/*.json, base64 blocks and float32 values). */
import assert from 'node:assert/strict';

export const bytes = (b64: string) => new Uint8Array(Buffer.from(b64, 'base64'));

export const floats = (b64: string) => {
  const b = bytes(b64);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
};

/** A fixture input: rows x cols float32 values and an optional importance row (kquants-q5.json). */
export interface Source {
  name: string;
  rows: number;
  cols: number;
  input: string;
  importance?: string;
}

/** The first differing block (-2: different lengths, -1: none), to make a mismatch readable. */
export function firstBadBlock(got: Uint8Array, want: Uint8Array, blockBytes: number): number {
  if (got.length !== want.length) return -2;
  for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) return Math.floor(i / blockBytes);
  return -1;
}

interface Quantizer {
  bytes: number;
  quantize(x: Float32Array, imatrix?: { importance: Float32Array; cols: number }): Uint8Array;
}

/**
 * Runs each case's input (and importance row) through each type's quantizer and asserts the case's
 * blocks for that type, block by block; returns how many cases carried an importance row.
 */
export function assertBlocksMatch<C extends { name: string }>(
  cases: C[],
  sourceOf: (c: C) => Source,
  types: Record<string, Quantizer>,
): number {
  let weighted = 0;
  for (const c of cases) {
    const src = sourceOf(c);
    const x = floats(src.input);
    const imatrix = src.importance ? { importance: floats(src.importance), cols: src.cols } : undefined;
    if (imatrix) weighted++;
    for (const [type, t] of Object.entries(types)) {
      const want = bytes((c as unknown as Record<string, string>)[type]);
      assert.equal(firstBadBlock(t.quantize(x, imatrix), want, t.bytes), -1, `${c.name}: ${type} block`);
    }
  }
  return weighted;
}
