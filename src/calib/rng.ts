/** A seeded PRNG that gives the same stream on every platform. */

export type Rng = () => number;

/** mulberry32: a 32-bit state advanced by a Weyl constant, then mixed; all integer math. */
export function mulberry32(seed: number): Rng {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}
