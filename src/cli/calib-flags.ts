import type { CalibOptions } from '../calib/data.ts';
import { optionalIntFlag } from './args.ts';

export const CALIB_HELP =
  '[--calib <file.txt|.jsonl|.parquet>] [--calib-samples N] [--calib-seqlen L] [--seed S]';

export const CALIB_FLAGS = {
  calib: { type: 'string' },
  'calib-samples': { type: 'string' },
  'calib-seqlen': { type: 'string' },
  seed: { type: 'string' },
} as const;

/** Calibration settings given on the command line; the recipe supplies the rest. */
export function calibFlags(values: Record<string, unknown>): Partial<CalibOptions> {
  return {
    file: values.calib as string | undefined,
    samples: optionalIntFlag('calib-samples', values['calib-samples']),
    seqLen: optionalIntFlag('calib-seqlen', values['calib-seqlen'], 2),
    seed: optionalIntFlag('seed', values.seed, 0),
  };
}
