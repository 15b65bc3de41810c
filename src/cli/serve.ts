import { fail } from '../errors.ts';
import { createServer, listen } from '../runtime/server.ts';
import { intFlag, onePositional, optionalIntFlag, parse } from './args.ts';
import { ENGINE_FLAGS, ENGINE_HELP, openEngine } from './open-engine.ts';

export const SERVE_HELP = `llmq serve <model-dir | model.gguf> [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--max-queue N] [--max-body-bytes N] ${ENGINE_HELP}
  OpenAI-compatible HTTP API: POST /v1/completions, POST /v1/chat/completions (both with "stream": true
  for server-sent events), GET /v1/models, GET /health. Binds 127.0.0.1 unless --host says otherwise.
  --api-key (or $LLMQ_API_KEY) makes every request need "Authorization: Bearer KEY". One generation
  runs at a time; up to --max-queue (default 8) wait, more get 429. Bodies over --max-body-bytes
  (default 1 MiB) get 413. A client that disconnects stops its generation.`;

export async function serveCommand(argv: string[]): Promise<void> {
  const { values, positionals } = parse('serve', argv, {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '8080' },
    'api-key': { type: 'string' },
    'max-queue': { type: 'string' },
    'max-body-bytes': { type: 'string' },
    ...ENGINE_FLAGS,
  });
  const dir = onePositional('serve', positionals, 'model directory or .gguf file');
  const port = intFlag('port', values.port, 8080, 0);
  if (port > 65535) fail(`--port must be at most 65535, got ${port}`);
  const apiKey = values['api-key'] ?? process.env.LLMQ_API_KEY;
  if (apiKey === '') fail('--api-key must not be empty');
  const engine = await openEngine('serve', dir, values, false);
  // compiled before the first request rather than during it
  await engine.warmUp();
  const server = createServer(engine, {
    apiKey,
    maxQueue: optionalIntFlag('max-queue', values['max-queue'], 0),
    maxBodyBytes: optionalIntFlag('max-body-bytes', values['max-body-bytes']),
    log: (line) => process.stderr.write(`${line}\n`),
  });
  const { url } = await listen(server, values.host, port);
  process.stderr.write(
    `llmq serve: ${engine.modelName} on ${engine.model.backend.name} at ${url}/v1 (context ${engine.contextLength}` +
      `${apiKey ? ', API key required' : ''}); Ctrl-C stops\n`,
  );
}
