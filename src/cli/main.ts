#!/usr/bin/env node
import { UserError } from '../errors.ts';
import { CHAT_HELP, chatCommand } from './chat.ts';
import { EVAL_HELP, evalCommand } from './eval.ts';
import { EXPORT_HELP, exportCommand } from './export.ts';
import { GENERATE_HELP, generateCommand } from './generate.ts';
import { IMATRIX_HELP, imatrixCommand } from './imatrix.ts';
import { INSPECT_HELP, inspectCommand } from './inspect.ts';
import { QUANTIZE_HELP, quantizeCommand } from './quantize.ts';
import { RECIPES_HELP, recipesCommand } from './recipes.ts';
import { SERVE_HELP, serveCommand } from './serve.ts';
import { SWEEP_HELP, sweepCommand } from './sweep.ts';
import { SYNTH_HELP, synthCommand } from './synth.ts';

const COMMANDS: Record<string, { run: (argv: string[]) => Promise<void>; help: string }> = {
  chat: { run: chatCommand, help: CHAT_HELP },
  eval: { run: evalCommand, help: EVAL_HELP },
  export: { run: exportCommand, help: EXPORT_HELP },
  generate: { run: generateCommand, help: GENERATE_HELP },
  imatrix: { run: imatrixCommand, help: IMATRIX_HELP },
  inspect: { run: inspectCommand, help: INSPECT_HELP },
  quantize: { run: quantizeCommand, help: QUANTIZE_HELP },
  recipes: { run: recipesCommand, help: RECIPES_HELP },
  serve: { run: serveCommand, help: SERVE_HELP },
  sweep: { run: sweepCommand, help: SWEEP_HELP },
  synth: { run: synthCommand, help: SYNTH_HELP },
};

// `llmq recipes | head`: a reader that stops early is not an error
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});

function usage(): string {
  return `llmq: post-training quantization of LLMs (CPU and WebGPU)\n\n${Object.values(COMMANDS)
    .map((c) => c.help)
    .join('\n\n')}\n`;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(usage());
    return command ? 0 : 2;
  }
  const entry = COMMANDS[command];
  if (!entry) {
    process.stderr.write(
      `llmq: unknown command "${command}" (commands: ${Object.keys(COMMANDS).join(', ')})\n`,
    );
    return 2;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${entry.help}\n`);
    return 0;
  }
  await entry.run(rest);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    if (e instanceof UserError) {
      process.stderr.write(`llmq: ${e.message}\n`);
      process.exitCode = 2;
      return;
    }
    const err = e as Error;
    process.stderr.write(`llmq: internal error: ${err?.message ?? String(e)}\n`);
    if (process.env.LLMQ_DEBUG) process.stderr.write(`${err?.stack}\n`);
    process.exitCode = 1;
  },
);
