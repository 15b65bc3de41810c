/**
 * OpenAI-compatible HTTP API over an Engine, on node:http.
 *
 *   GET  /health               {"status":"ok"} (no API key needed, for liveness probes)
 *   GET  /v1/models            the one model, named engine.modelName
 *   POST /v1/completions       prompt: a string (or an array of one string)
 *   POST /v1/chat/completions  messages: [{role: system|developer|user|assistant, content: string | text parts}]
 *
 * Both POST endpoints take max_tokens (chat: max_completion_tokens first), temperature (default 1, as
 * OpenAI; 0 = greedy), top_p, top_k (-1 or 0 = off), min_p, repetition_penalty, seed, stop, stream
 * (Server-Sent Events ending with `data: [DONE]`) and stream_options.include_usage. The `model` field
 * is accepted and ignored: the server has one model and answers with its name. Fields that would
 * change the answer in a way this server cannot honour (n > 1, logprobs, penalties, tools, ...) get
 * a 400 instead of being ignored.
 *
 * Safety: an optional API key (Authorization: Bearer), a bound on the body (413 as soon as it is
 * passed, without reading the rest), one generation at a time with a bounded FIFO queue (429 beyond
 * it), and a client that goes away aborts its generation or leaves the queue.
 */
import crypto from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { fail, UserError } from '../errors.ts';
import type { ChatMessage, Engine, GenerateOptions, GenerateResult, SamplingOptions } from './engine.ts';

export interface ServerOptions {
  /** when set, every request but /health needs `Authorization: Bearer <apiKey>` */
  apiKey?: string;
  /** largest request body in bytes (default 1 MiB) */
  maxBodyBytes?: number;
  /** most requests waiting for the running generation (default 8); one more gets 429 */
  maxQueue?: number;
  /** one line per request and per generation */
  log?: (line: string) => void;
}

const DEFAULT_MAX_BODY_BYTES = 1 << 20;
const DEFAULT_MAX_QUEUE = 8;
/** OpenAI's default max_tokens for /v1/completions; chat defaults to the rest of the context */
const DEFAULT_COMPLETION_TOKENS = 16;

type Json = Record<string, unknown>;

interface ErrorDetails {
  /** the request field at fault */
  param?: string;
  /** OpenAI's error type (default invalid_request_error) */
  type?: string;
  headers?: Record<string, string>;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly details: ErrorDetails = {},
  ) {
    super(message);
  }
}

function invalid(param: string, message: string): HttpError {
  return new HttpError(400, message, { param });
}

/** One generation at a time; the others wait in arrival order. */
class TurnQueue {
  private busy = false;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly maxWaiting: number) {}

  /** Resolves true when it is the caller's turn, false if `signal` aborts while it waits. */
  acquire(signal: AbortSignal): Promise<boolean> {
    if (signal.aborted) return Promise.resolve(false);
    if (!this.busy) {
      this.busy = true;
      return Promise.resolve(true);
    }
    if (this.waiting.length >= this.maxWaiting) {
      const message = `the server is busy: ${this.waiting.length} requests are already waiting`;
      throw new HttpError(429, message, { type: 'rate_limit_exceeded', headers: { 'retry-after': '1' } });
    }
    return new Promise((resolve) => {
      const leave = () => {
        this.waiting.splice(this.waiting.indexOf(wake), 1);
        resolve(false);
      };
      const wake = () => {
        signal.removeEventListener('abort', leave);
        resolve(true);
      };
      this.waiting.push(wake);
      signal.addEventListener('abort', leave, { once: true });
    });
  }

  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.busy = false;
  }
}

interface Context {
  engine: Engine;
  apiKey: string | undefined;
  maxBodyBytes: number;
  queue: TurnQueue;
  log: (line: string) => void;
}

interface Route {
  method: 'GET' | 'POST';
  run(ctx: Context, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> | void;
}

const ROUTES = new Map<string, Route>([
  ['/health', { method: 'GET', run: (_ctx, _req, res) => sendJson(res, 200, { status: 'ok' }) }],
  ['/v1/models', { method: 'GET', run: (ctx, _req, res) => sendJson(res, 200, modelList(ctx.engine)) }],
  ['/v1/completions', { method: 'POST', run: (ctx, req, res) => generateFor(ctx, req, res, 'completion') }],
  ['/v1/chat/completions', { method: 'POST', run: (ctx, req, res) => generateFor(ctx, req, res, 'chat') }],
]);

export function createServer(engine: Engine, opts: ServerOptions = {}): http.Server {
  const maxBodyBytes = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const maxQueue = opts.maxQueue ?? DEFAULT_MAX_QUEUE;
  if (!Number.isSafeInteger(maxBodyBytes) || maxBodyBytes < 1) {
    fail(`maxBodyBytes: expected an integer >= 1, got ${maxBodyBytes}`);
  }
  if (!Number.isSafeInteger(maxQueue) || maxQueue < 0)
    fail(`maxQueue: expected an integer >= 0, got ${maxQueue}`);
  if (opts.apiKey === '') fail('apiKey: expected a non-empty key (leave it out for no key)');
  const ctx: Context = {
    engine,
    apiKey: opts.apiKey,
    maxBodyBytes,
    queue: new TurnQueue(maxQueue),
    log: opts.log ?? (() => {}),
  };
  const server = http.createServer((req, res) => void handle(ctx, req, res));
  // `Expect: 100-continue` with a body declared too large: answer 413 without inviting the body
  server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (!tooLarge(req, maxBodyBytes)) res.writeContinue();
    server.emit('request', req, res);
  });
  return server;
}

/** Starts listening (port 0: any free port) and resolves with the base URL. */
export async function listen(server: http.Server, host = '127.0.0.1', port = 0): Promise<{ url: string }> {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    fail(`port: expected an integer from 0 to 65535, got ${port}`);
  }
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => reject(new UserError(`cannot listen on ${host}:${port} (${e.message})`));
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      const bound = (server.address() as AddressInfo).port;
      resolve({ url: `http://${host.includes(':') ? `[${host}]` : host}:${bound}` });
    });
  });
}

async function handle(ctx: Context, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const started = performance.now();
  const pathname = new URL(req.url ?? '/', 'http://localhost').pathname;
  res.on('close', () => {
    const status = res.headersSent ? res.statusCode : '-';
    const gone = res.writableFinished ? '' : ' (client went away)';
    ctx.log(`${req.method} ${pathname} ${status} ${Math.round(performance.now() - started)} ms${gone}`);
  });
  try {
    const route = findRoute(ctx, req, pathname);
    await route.run(ctx, req, res);
  } catch (e) {
    const error = asHttpError(e);
    if (error.status === 500) ctx.log(`error: ${(e as Error).stack ?? error.message}`);
    sendError(req, res, error);
  }
}

function findRoute(ctx: Context, req: http.IncomingMessage, pathname: string): Route {
  if (ctx.apiKey !== undefined && pathname !== '/health' && !authorized(req, ctx.apiKey)) {
    const message = 'missing or wrong API key: send the header Authorization: Bearer <key>';
    throw new HttpError(401, message, { headers: { 'www-authenticate': 'Bearer' } });
  }
  const route = ROUTES.get(pathname);
  if (!route) throw new HttpError(404, `no such endpoint: ${pathname}`);
  if (req.method !== route.method) {
    const message = `${pathname} takes ${route.method}, not ${req.method}`;
    throw new HttpError(405, message, { headers: { allow: route.method } });
  }
  return route;
}

/** Compares digests so that the time taken says nothing about the key. */
function authorized(req: http.IncomingMessage, apiKey: string): boolean {
  const given = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')?.[1] ?? '';
  const digest = (s: string) => crypto.createHash('sha256').update(s).digest();
  return given !== '' && crypto.timingSafeEqual(digest(given), digest(apiKey));
}

function asHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  // the engine and the chat template fail() on input the client sent (e.g. roles out of order)
  if (e instanceof UserError) return new HttpError(400, e.message);
  return new HttpError(500, e instanceof Error ? e.message : String(e), { type: 'server_error' });
}

function sendJson(
  res: http.ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(text)),
    ...headers,
  });
  res.end(text);
}

function sendError(req: http.IncomingMessage, res: http.ServerResponse, error: HttpError): void {
  if (res.destroyed) return;
  const { param = null, type = 'invalid_request_error', headers = {} } = error.details;
  const body = { error: { message: error.message, type, param, code: null } };
  if (!res.headersSent) {
    // a body left unread is not drained for keep-alive: the connection closes after the answer
    const close: Record<string, string> = req.complete ? {} : { connection: 'close' };
    sendJson(res, error.status, body, { ...headers, ...close });
  } else if (res.getHeader('content-type') === 'text/event-stream') {
    res.end(`data: ${JSON.stringify(body)}\n\ndata: [DONE]\n\n`);
  } else {
    res.destroy();
  }
}

function modelList(engine: Engine) {
  return { object: 'list', data: [{ id: engine.modelName, object: 'model', owned_by: 'llmq' }] };
}

// ---------------------------------------------------------------------------------------------
// request body

function tooLarge(req: http.IncomingMessage, maxBytes: number): boolean {
  return Number(req.headers['content-length'] ?? 0) > maxBytes;
}

function readBody(req: http.IncomingMessage, maxBytes: number): Promise<Buffer> {
  const refusal = () => new HttpError(413, `the request body exceeds ${maxBytes} bytes`);
  if (tooLarge(req, maxBytes)) return Promise.reject(refusal());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    const onData = (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes <= maxBytes) return void chunks.push(chunk);
      req.off('data', onData);
      req.pause();
      reject(refusal());
    };
    req.on('data', onData);
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

async function readJsonBody(ctx: Context, req: http.IncomingMessage): Promise<Json> {
  const text = (await readBody(req, ctx.maxBodyBytes)).toString('utf8');
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `the request body is not valid JSON (${(e as Error).message})`);
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new HttpError(400, 'the request body must be a JSON object');
  }
  return body as Json;
}

// ---------------------------------------------------------------------------------------------
// fields

function shown(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 40 ? `${text.slice(0, 37)}...` : text;
}

/** `body[field]`, with null read as absent (OpenAI clients send null for "default"). */
function field(body: Json, name: string): unknown {
  return body[name] ?? undefined;
}

interface NumberRule {
  integer?: boolean;
  min?: number;
  /** exclusive lower bound */
  above?: number;
  max?: number;
  expected: string;
}

function numberField(body: Json, name: string, rule: NumberRule): number | undefined {
  const value = field(body, name);
  if (value === undefined) return undefined;
  const ok =
    typeof value === 'number' &&
    Number.isFinite(value) &&
    (!rule.integer || Number.isSafeInteger(value)) &&
    (rule.min === undefined || value >= rule.min) &&
    (rule.above === undefined || value > rule.above) &&
    (rule.max === undefined || value <= rule.max);
  if (!ok) throw invalid(name, `${name}: expected ${rule.expected}, got ${shown(value)}`);
  return value as number;
}

function booleanField(body: Json, name: string): boolean | undefined {
  const value = field(body, name);
  if (value === undefined || typeof value === 'boolean') return value;
  throw invalid(name, `${name}: expected true or false, got ${shown(value)}`);
}

function stopField(body: Json): string[] | undefined {
  const value = field(body, 'stop');
  if (value === undefined) return undefined;
  const stops = typeof value === 'string' ? [value] : value;
  const ok = Array.isArray(stops) && stops.every((s) => typeof s === 'string' && s !== '');
  if (!ok) {
    throw invalid('stop', `stop: expected a non-empty string or an array of them, got ${shown(value)}`);
  }
  return stops.length > 0 ? stops : undefined;
}

/** Fields whose non-default values this server cannot honour, with the test for "default". */
const UNSUPPORTED: [string, (value: unknown) => boolean][] = [
  ['n', (v) => v === 1],
  ['best_of', (v) => v === 1],
  ['echo', (v) => v === false],
  ['suffix', (v) => v === ''],
  ['logprobs', (v) => v === false || v === 0],
  ['top_logprobs', (v) => v === 0],
  ['presence_penalty', (v) => v === 0],
  ['frequency_penalty', (v) => v === 0],
  ['logit_bias', (v) => typeof v === 'object' && Object.keys(v as object).length === 0],
  ['tools', (v) => Array.isArray(v) && v.length === 0],
  ['response_format', (v) => (v as { type?: unknown }).type === 'text'],
];

function refuseUnsupported(body: Json): void {
  for (const [name, isDefault] of UNSUPPORTED) {
    const value = field(body, name);
    if (value !== undefined && !isDefault(value)) {
      throw invalid(name, `${name}: ${shown(value)} is not supported by this server`);
    }
  }
}

function samplingOptions(body: Json): SamplingOptions {
  const topK = numberField(body, 'top_k', {
    integer: true,
    min: -1,
    expected: 'an integer >= -1 (-1 or 0: off)',
  });
  const optional = {
    topP: numberField(body, 'top_p', { above: 0, max: 1, expected: 'a number in (0, 1]' }),
    topK: topK === -1 ? 0 : topK,
    minP: numberField(body, 'min_p', { min: 0, max: 1, expected: 'a number in [0, 1]' }),
    repetitionPenalty: numberField(body, 'repetition_penalty', { above: 0, expected: 'a number > 0' }),
    seed: numberField(body, 'seed', { integer: true, expected: 'an integer' }),
  };
  return {
    temperature: numberField(body, 'temperature', { min: 0, expected: 'a number >= 0' }) ?? 1,
    ...Object.fromEntries(Object.entries(optional).filter(([, v]) => v !== undefined)),
  };
}

function completionPrompt(body: Json): string {
  const value = field(body, 'prompt');
  if (typeof value === 'string') return value;
  if (Array.isArray(value) && value.length === 1 && typeof value[0] === 'string') return value[0];
  throw invalid('prompt', `prompt: expected a string (or an array of one string), got ${shown(value)}`);
}

const ROLES: Record<string, ChatMessage['role']> = {
  system: 'system',
  developer: 'system',
  user: 'user',
  assistant: 'assistant',
};

function chatMessages(body: Json): ChatMessage[] {
  const value = field(body, 'messages');
  if (!Array.isArray(value) || value.length === 0) {
    throw invalid('messages', `messages: expected a non-empty array of {role, content}, got ${shown(value)}`);
  }
  return value.map((m, i) => chatMessage(m, `messages[${i}]`));
}

function chatMessage(value: unknown, where: string): ChatMessage {
  if (typeof value !== 'object' || value === null) {
    throw invalid(where, `${where}: expected an object {role, content}, got ${shown(value)}`);
  }
  const { role, content } = value as { role?: unknown; content?: unknown };
  const mapped = typeof role === 'string' && Object.hasOwn(ROLES, role) ? ROLES[role] : undefined;
  if (!mapped) {
    throw invalid(
      `${where}.role`,
      `${where}.role: expected system, developer, user or assistant, got ${shown(role)}`,
    );
  }
  return { role: mapped, content: messageText(content, `${where}.content`) };
}

/** A string, or OpenAI's content parts of which only {type: "text", text} can be read here. */
function messageText(content: unknown, where: string): string {
  if (typeof content === 'string') return content;
  const parts = Array.isArray(content) ? (content as { type?: unknown; text?: unknown }[]) : undefined;
  if (parts?.every((p) => p?.type === 'text' && typeof p.text === 'string')) {
    return parts.map((p) => p.text).join('\n');
  }
  throw invalid(
    where,
    `${where}: expected a string or an array of {type: "text", text}, got ${shown(content)}`,
  );
}

// ---------------------------------------------------------------------------------------------
// generation

type Kind = 'completion' | 'chat';

interface Job {
  kind: Kind;
  prompt: Int32Array;
  options: Omit<GenerateOptions, 'signal'>;
  stream: boolean;
  includeUsage: boolean;
}

async function generateFor(ctx: Context, req: http.IncomingMessage, res: http.ServerResponse, kind: Kind) {
  const job = parseJob(ctx.engine, await readJsonBody(ctx, req), kind);
  const aborter = new AbortController();
  res.on('close', () => {
    if (!res.writableFinished) aborter.abort();
  });
  if (!(await ctx.queue.acquire(aborter.signal))) return;
  try {
    const options = { ...job.options, signal: aborter.signal };
    const result = job.stream
      ? await streamAnswer(ctx.engine, res, job, options)
      : await answerOnce(ctx.engine, res, job, options);
    logGeneration(ctx, result);
  } finally {
    ctx.queue.release();
  }
}

function parseJob(engine: Engine, body: Json, kind: Kind): Job {
  if (field(body, 'model') !== undefined && typeof body.model !== 'string') {
    throw invalid('model', `model: expected a string, got ${shown(body.model)}`);
  }
  refuseUnsupported(body);
  const tokens = { integer: true, min: 1, expected: 'an integer >= 1' };
  const requested =
    kind === 'chat'
      ? (numberField(body, 'max_completion_tokens', tokens) ?? numberField(body, 'max_tokens', tokens))
      : (numberField(body, 'max_tokens', tokens) ?? DEFAULT_COMPLETION_TOKENS);
  const sampling = samplingOptions(body);
  const stop = stopField(body);
  const stream = booleanField(body, 'stream') ?? false;
  const includeUsage = streamOptions(body);
  const prompt =
    kind === 'chat' ? engine.encodeChat(chatMessages(body)) : engine.encode(completionPrompt(body));
  const maxTokens = Math.min(requested ?? Number.POSITIVE_INFINITY, room(engine, prompt, kind));
  return {
    kind,
    prompt,
    options: { ...sampling, maxTokens, ...(stop ? { stop } : {}) },
    stream,
    includeUsage,
  };
}

function streamOptions(body: Json): boolean {
  const value = field(body, 'stream_options');
  if (value === undefined) return false;
  const include = typeof value === 'object' ? (value as Json).include_usage : undefined;
  if (include === undefined || typeof include === 'boolean') return include ?? false;
  throw invalid(
    'stream_options',
    `stream_options: expected {include_usage: true|false}, got ${shown(value)}`,
  );
}

/** Tokens the context has left after the prompt; none left is the client's error. */
function room(engine: Engine, prompt: Int32Array, kind: Kind): number {
  const left = engine.contextLength - prompt.length;
  if (left > 0) return left;
  const param = kind === 'chat' ? 'messages' : 'prompt';
  const message = `${param}: ${prompt.length} tokens leave no room in the model's context of ${engine.contextLength} tokens`;
  throw invalid(param, message);
}

function logGeneration(ctx: Context, result: GenerateResult): void {
  const rate = result.tokens.length / Math.max(result.decodeSeconds, 1e-9);
  ctx.log(
    `generated ${result.tokens.length} tokens after a ${result.promptTokens}-token prompt ` +
      `(prefill ${result.prefillSeconds.toFixed(2)} s, ${rate.toFixed(1)} tokens/s), finish ${result.finishReason}`,
  );
}

/** The fields every response object starts with (a stream's chunks share one). */
function responseHead(engine: Engine, kind: Kind, stream: boolean) {
  const chatObject = stream ? 'chat.completion.chunk' : 'chat.completion';
  return {
    id: `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${crypto.randomUUID().replaceAll('-', '')}`,
    object: kind === 'chat' ? chatObject : 'text_completion',
    created: Math.floor(Date.now() / 1000),
    model: engine.modelName,
  };
}

function usage(result: GenerateResult) {
  const completion = result.tokens.length;
  return {
    prompt_tokens: result.promptTokens,
    completion_tokens: completion,
    total_tokens: result.promptTokens + completion,
  };
}

/** 'abort' never reaches a client: it only happens when the client has gone. */
function finishReason(result: GenerateResult): 'stop' | 'length' {
  return result.finishReason === 'length' ? 'length' : 'stop';
}

async function answerOnce(
  engine: Engine,
  res: http.ServerResponse,
  job: Job,
  options: GenerateOptions,
): Promise<GenerateResult> {
  const result = await engine.generate(job.prompt, options);
  if (result.finishReason !== 'abort') sendJson(res, 200, answer(engine, job.kind, result));
  return result;
}

function answer(engine: Engine, kind: Kind, result: GenerateResult) {
  const finish_reason = finishReason(result);
  const choice =
    kind === 'chat'
      ? { index: 0, message: { role: 'assistant', content: result.text }, finish_reason, logprobs: null }
      : { index: 0, text: result.text, finish_reason, logprobs: null };
  return { ...responseHead(engine, kind, false), choices: [choice], usage: usage(result) };
}

async function streamAnswer(
  engine: Engine,
  res: http.ServerResponse,
  job: Job,
  options: GenerateOptions,
): Promise<GenerateResult> {
  const head = responseHead(engine, job.kind, true);
  const send = (data: unknown) => {
    if (!res.destroyed) res.write(`data: ${JSON.stringify(data)}\n\n`);
  };
  const chunk = (choice: Json) => ({ ...head, choices: [{ index: 0, ...choice, logprobs: null }] });
  const chat = job.kind === 'chat';
  const piece = (text: string): Json => (chat ? { delta: { content: text } } : { text });
  // setHeader (not writeHead's argument) so that sendError can tell a stream by getHeader
  res.setHeader('content-type', 'text/event-stream');
  res.setHeader('cache-control', 'no-cache');
  res.flushHeaders();
  if (chat) send(chunk({ delta: { role: 'assistant', content: '' }, finish_reason: null }));
  const result = await engine.generate(job.prompt, options, (delta) => {
    if (delta !== '') send(chunk({ ...piece(delta), finish_reason: null }));
  });
  if (result.finishReason === 'abort') return result;
  const last = chat ? { delta: {} } : piece('');
  send(chunk({ ...last, finish_reason: finishReason(result) }));
  if (job.includeUsage) send({ ...head, choices: [], usage: usage(result) });
  res.end('data: [DONE]\n\n');
  return result;
}
