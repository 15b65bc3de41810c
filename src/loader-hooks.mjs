// Module hooks of loader.mjs: a .ts file loads as the ES module esbuild makes of it (inline source map).
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { transform } from 'esbuild';

const options = {
  loader: 'ts',
  format: 'esm',
  target: `node${process.versions.node}`,
  sourcemap: 'inline',
  // tsconfig.json's target ES2022 gives class fields define semantics; say so, as tsc would
  tsconfigRaw: { compilerOptions: { useDefineForClassFields: true } },
  // bench/loader.ts's baseline: tsx's transform, which keeps every function's name through a helper
  keepNames: process.env.LLMQ_KEEP_NAMES === '1',
};

export async function load(url, context, next) {
  if (!url.startsWith('file:') || !url.endsWith('.ts')) return next(url, context);
  const file = fileURLToPath(url);
  const { code } = await transform(await readFile(file, 'utf8'), { ...options, sourcefile: file });
  return { format: 'module', source: code, shortCircuit: true };
}
