/** Reading the llama.cpp block fixtures (test/fixtures/*.json, base64 blocks and float32 values). */

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
