/**
 * RoPE inverse frequencies as transformers' rope init functions compute them (modeling_rope_utils:
 * default, linear, dynamic, llama3, yarn).
 *
 * Precision: transformers computes the table with float32 torch ops, e.g. the default
 *   inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
 * Every tensor op there rounds to float32 and Python scalars meeting a float32 tensor are cast to
 * float32, so we follow the same sequence of operations and round with Math.fround after each one.
 * Single ops (+ - * / and the exponent i/dim) are then bit-identical to torch's CPU kernels; pow is
 * computed in float64 and rounded once (correctly rounded), where torch's vectorized powf may be
 * 1 ulp off on some elements. Pure-Python scalar math (YaRN's correction range, dynamic NTK's base)
 * stays in float64, as in Python. `a / tensor` in torch is `reciprocal(tensor) * a`; mimicked.
 */
import type { RopeTable } from '../tensor/tensor.ts';
import type { ModelConfig } from './config.ts';

const f = Math.fround;

/** base ** (arange(0, dim, 2) / dim) in float32, i.e. 1 / invFreq before the reciprocal. */
function posFreqs(base: number, dim: number): Float32Array {
  const out = new Float32Array(dim / 2);
  const b = f(base);
  for (let i = 0; i < dim / 2; i++) out[i] = f(b ** f((2 * i) / dim));
  return out;
}

function defaultInvFreq(base: number, dim: number): Float32Array {
  const p = posFreqs(base, dim);
  for (let i = 0; i < p.length; i++) p[i] = f(1 / p[i]);
  return p;
}

/**
 * The inverse frequencies (headDim / 2 of them) and the cos/sin multiplier for `cfg.rope`.
 * `seqLen` matters only for 'dynamic' RoPE: the table for a sequence of that many tokens (transformers
 * recomputes it when a sequence grows past max_position_embeddings); omitted, the initial table.
 */
export function ropeTable(
  cfg: Pick<ModelConfig, 'headDim' | 'rope' | 'maxPositionEmbeddings'>,
  seqLen?: number,
): RopeTable {
  const dim = cfg.headDim;
  const rope = cfg.rope;
  switch (rope.type) {
    case 'default':
      return { invFreq: defaultInvFreq(rope.theta, dim), attentionScaling: 1 };

    case 'linear': {
      const inv = defaultInvFreq(rope.theta, dim);
      const factor = f(rope.factor);
      for (let i = 0; i < inv.length; i++) inv[i] = f(inv[i] / factor);
      return { invFreq: inv, attentionScaling: 1 };
    }

    case 'dynamic': {
      const maxPos = cfg.maxPositionEmbeddings;
      const seq = Math.max(seqLen ?? maxPos, maxPos);
      const base = rope.theta * ((rope.factor * seq) / maxPos - (rope.factor - 1)) ** (dim / (dim - 2));
      return { invFreq: defaultInvFreq(base, dim), attentionScaling: 1 };
    }

    case 'llama3': {
      const inv = defaultInvFreq(rope.theta, dim);
      const factor = f(rope.factor);
      const old = rope.originalMaxPositionEmbeddings;
      const lowWavelen = f(old / rope.lowFreqFactor);
      const highWavelen = f(old / rope.highFreqFactor);
      const twoPi = f(2 * Math.PI);
      const oldF = f(old);
      const lowF = f(rope.lowFreqFactor);
      const span = f(rope.highFreqFactor - rope.lowFreqFactor);
      const out = new Float32Array(inv.length);
      for (let i = 0; i < inv.length; i++) {
        const wavelen = f(f(1 / inv[i]) * twoPi);
        // wavelen > lowWavelen: low frequency, divide by factor; wavelen < highWavelen: keep
        const scaled = wavelen > lowWavelen ? f(inv[i] / factor) : inv[i];
        if (wavelen < highWavelen || wavelen > lowWavelen) {
          out[i] = scaled;
        } else {
          const smooth = f(f(f(f(1 / wavelen) * oldF) - lowF) / span);
          out[i] = f(f(f(f(1 - smooth) * scaled) / factor) + f(smooth * scaled));
        }
      }
      return { invFreq: out, attentionScaling: 1 };
    }

    case 'yarn': {
      const base = rope.theta;
      const pos = posFreqs(base, dim);
      const factor = f(rope.factor);
      // find_correction_dim / find_correction_range, in float64 as in Python
      const corrDim = (rot: number) =>
        (dim * Math.log(rope.originalMaxPositionEmbeddings / (rot * 2 * Math.PI))) / (2 * Math.log(base));
      let low = corrDim(rope.betaFast);
      let high = corrDim(rope.betaSlow);
      if (rope.truncate) {
        low = Math.floor(low);
        high = Math.ceil(high);
      }
      low = Math.max(low, 0);
      high = Math.min(high, dim - 1);
      if (low === high) high += 0.001;
      const lowF = f(low);
      const range = f(high - low);
      const out = new Float32Array(dim / 2);
      for (let i = 0; i < out.length; i++) {
        const extrapolation = f(1 / pos[i]);
        const interpolation = f(1 / f(factor * pos[i]));
        const ramp = Math.min(Math.max(f(f(i - lowF) / range), 0), 1);
        const extrapFactor = f(1 - ramp);
        out[i] = f(f(interpolation * f(1 - extrapFactor)) + f(extrapolation * extrapFactor));
      }
      return { invFreq: out, attentionScaling: rope.attentionFactor };
    }
  }
}

/**
 * llama3 rope frequency factors as LlamaModel.generate_extra_tensors computes them: torch float32
 * tensor arithmetic with the Python scalars cast to float32 (hence the fround after every step).
 */
export function llama3RopeFactors(config: ModelConfig): Float32Array {
  const rope = config.rope;
  if (rope.type !== 'llama3') throw new Error('not a llama3 rope');
  const fr = Math.fround;
  const dim = config.headDim;
  const oldContext = rope.originalMaxPositionEmbeddings;
  const lowWavelen = fr(oldContext / rope.lowFreqFactor);
  const highWavelen = fr(oldContext / rope.highFreqFactor);
  const out = new Float32Array(dim / 2);
  for (let k = 0; k < dim / 2; k++) {
    const freq = fr(1 / fr(fr(rope.theta) ** fr((2 * k) / dim)));
    const wavelen = fr(fr(2 * Math.PI) / freq);
    if (wavelen < highWavelen) out[k] = 1;
    else if (wavelen > lowWavelen) out[k] = rope.factor;
    else {
      const smooth = fr(
        fr(fr(oldContext / wavelen) - rope.lowFreqFactor) / fr(rope.highFreqFactor - rope.lowFreqFactor),
      );
      out[k] = fr(1 / fr(fr(fr(1 - smooth) / rope.factor) + smooth));
    }
  }
  return out;
}
