import readline from 'node:readline';
import type { ChatMessage } from '../runtime/engine.ts';
import { onePositional, parse } from './args.ts';
import {
  ENGINE_FLAGS,
  ENGINE_HELP,
  openEngine,
  SAMPLING_FLAGS,
  SAMPLING_HELP,
  samplingFlags,
} from './open-engine.ts';

export const CHAT_HELP = `llmq chat <model-dir | model.gguf> [--system TEXT] ${SAMPLING_HELP} ${ENGINE_HELP}
  Interactive chat through the model's chat template (tokenizer_config.json's chat_template; models
  without one get plain "User:" / "Assistant:" turns). Each line you type is a user turn; the answer
  streams as it is generated. The KV cache keeps the conversation, so a turn only runs its new tokens.
  /reset starts over, /exit (or end of input) quits. Sampling as in generate (default --max-tokens 512).`;

export async function chatCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parse('chat', argv, {
    system: { type: 'string' },
    ...SAMPLING_FLAGS,
    ...ENGINE_FLAGS,
  });
  const dir = onePositional('chat', positionals, 'model directory or .gguf file');
  const sampling = samplingFlags({ 'max-tokens': '512', ...values });
  const engine = await openEngine('chat', dir, values, false);
  // kernels compile while the user types; the first reply waits for it
  const warm = engine.warmUp();
  warm.catch(() => undefined);
  const tty = Boolean(process.stdin.isTTY);
  const start = (): ChatMessage[] => (values.system ? [{ role: 'system', content: values.system }] : []);
  let messages = start();
  const input = readline.createInterface({ input: process.stdin, output: tty ? process.stdout : undefined });
  if (tty) process.stdout.write(`${engine.modelName} on ${engine.model.backend.name}; /reset, /exit\n> `);
  for await (const line of input) {
    const text = line.trim();
    if (text === '/exit') break;
    if (text === '/reset') messages = start();
    else if (text) {
      messages.push({ role: 'user', content: text });
      await warm;
      const result = await engine.generate(engine.encodeChat(messages), sampling, (d) =>
        process.stdout.write(d),
      );
      messages.push({ role: 'assistant', content: result.text });
      process.stdout.write('\n');
    }
    if (tty) process.stdout.write('> ');
  }
  input.close();
}
