import { type ParseArgsConfig, parseArgs } from 'node:util';
import { fail } from '../errors.ts';

type Options = NonNullable<ParseArgsConfig['options']>;

/** node:util parseArgs with its errors turned into one-line user errors. */
export function parse<T extends Options>(command: string, argv: string[], options: T) {
  try {
    return parseArgs<{ args: string[]; options: T; allowPositionals: true; strict: true }>({
      args: argv,
      options,
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    return fail(`${command}: ${(e as Error).message.split('\n')[0]}`);
  }
}

export function intFlag(name: string, value: unknown, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) fail(`--${name} must be an integer >= ${min}, got "${String(value)}"`);
  return n;
}

export function optionalIntFlag(name: string, value: unknown, min = 1): number | undefined {
  return value === undefined ? undefined : intFlag(name, value, 0, min);
}

export function onePositional(command: string, positionals: string[], what: string): string {
  if (positionals.length !== 1) fail(`${command}: expected exactly one ${what}, got ${positionals.length}`);
  return positionals[0];
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}
