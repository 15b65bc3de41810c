/** Shared output for bench/ scripts: a printed table plus a dated section appended to BENCHMARKS.md. */
import { execSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';

export type Row = Record<string, string | number>;

export function table(rows: Row[]): string {
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cell = (v: string | number) => (typeof v === 'number' ? formatNumber(v) : v);
  return [
    `| ${cols.join(' | ')} |`,
    `|${cols.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${cols.map((c) => cell(r[c] ?? '')).join(' | ')} |`),
  ].join('\n');
}

function formatNumber(v: number): string {
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(3);
}

export function machine(): string {
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  return `${os.cpus().length} x ${cpu}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
}

export function commitId(): string {
  try {
    return execSync('git rev-parse --short HEAD', { stdio: ['ignore', 'pipe', 'ignore'] })
      .toString()
      .trim();
  } catch {
    return 'unknown';
  }
}

/** Prints the section and appends it to BENCHMARKS.md unless --no-write is given. */
export function publish(title: string, command: string, body: string, notes = '', where = machine()): void {
  const date = new Date().toISOString().slice(0, 10);
  const section = `\n## ${title} (${date})\n\nMachine: ${where}; commit ${commitId()}.\nCommand: \`${command}\`\n\n${body}\n${notes ? `\n${notes}\n` : ''}`;
  console.log(section);
  if (!process.argv.includes('--no-write'))
    fs.appendFileSync(new URL('../BENCHMARKS.md', import.meta.url), section);
}

/** A profiled kernel's GPU time a decode token (bench/generate.ts --profile). */
export interface KernelShare {
  key: string;
  usPerToken: number;
}

/** The four ops (a kernel key's first part) with the most GPU time a token: "op ms, ...". */
export function largestKernels(kernels: readonly KernelShare[]): string {
  const byOp = new Map<string, number>();
  for (const k of kernels) {
    const op = k.key.split(':')[0];
    byOp.set(op, (byOp.get(op) ?? 0) + k.usPerToken);
  }
  return [...byOp]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 4)
    .map(([op, us]) => `${op} ${(us / 1000).toFixed(2)}`)
    .join(', ');
}
