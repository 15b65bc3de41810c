import { CALIB_SAMPLERS, type CalibOptions, type CalibSampler } from '../calib/data.ts';
import { fail } from '../errors.ts';
import { optionalIntFlag } from './args.ts';

export const CALIB_HELP =
  '[--calib <file.txt|.jsonl|.parquet>] [--calib-samples N] [--calib-seqlen L] [--seed S] [--calib-sampler pool|gptq]';

export const CALIB_FLAGS = {
  calib: { type: 'string' },
  'calib-samples': { type: 'string' },
  'calib-seqlen': { type: 'string' },
  seed: { type: 'string' },
  'calib-sampler': { type: 'string' },
} as const;

/** Calibration settings given on the command line; the recipe supplies the rest. */
export function calibFlags(values: Record<string, unknown>): Partial<CalibOptions> {
  return {
    file: values.calib as string | undefined,
    samples: optionalIntFlag('calib-samples', values['calib-samples']),
    seqLen: optionalIntFlag('calib-seqlen', values['calib-seqlen'], 2),
    seed: optionalIntFlag('seed', values.seed, 0),
    sampler: samplerFlag(values['calib-sampler']),
  };
}

function samplerFlag(value: unknown): CalibSampler | undefined {
  if (value === undefined) return undefined;
  if (!CALIB_SAMPLERS.includes(value as CalibSampler))
    fail(`--calib-sampler: expected one of ${CALIB_SAMPLERS.join(', ')}, got "${value}"`);
  return value as CalibSampler;
}
