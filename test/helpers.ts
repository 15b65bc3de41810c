/** Deterministic random numbers for tests (mulberry32 + Box-Muller). */
export function rng(seed: number) {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const normal = (n: number, std = 1): Float32Array => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const u = Math.max(uniform(), 1e-12);
      out[i] = std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * uniform());
    }
    return out;
  };
  return { uniform, normal };
}

export const SHARED = new URL('../../shared/', import.meta.url).pathname;
export const MODELS = `${SHARED}models/`;
export const WIKITEXT = `${SHARED}data/wikitext-2-raw/wiki.test.raw`;

/** A manifest for checkpoints that tests write (no real source hash or timings). */
export function testManifest(source: string) {
  return {
    tool: 'llmq',
    tool_version: 'test',
    created: '',
    source_model: source,
    source_sha256: '',
    timings: {},
  };
}
