/**
 * Bad inputs through the real CLI (`bin/llmq eval`): each must end with exit code 2 and one stderr
 * line that names the file and the field at fault: no stack trace, nothing on stdout, no file written.
 * The broken model directories are llama-tiny with one thing corrupted; files left intact are symlinked.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { MODELS, WIKITEXT } from './helpers.ts';

const BIN = new URL('../bin/llmq', import.meta.url).pathname;
const TINY = `${MODELS}llama-tiny`;
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-cli-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

/** About 700 tokens of WikiText-2: enough for one window of 64. */
const TEXT = path.join(root, 'text.raw');
fs.writeFileSync(TEXT, fs.readFileSync(WIKITEXT, 'utf8').slice(0, 3000));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function llmq(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(BIN, args, { env: { ...process.env, LLMQ_DEBUG: '' } }, (err, stdout, stderr) => {
      const code = err ? Number((err as { code?: unknown }).code ?? -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Every file under dir (relative paths), to show that a failed run wrote nothing. */
function listing(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[]).sort();
}

/**
 * Runs `llmq eval <dir> --ppl <text> --seqlen <n> --json` and checks the failure: exit code 2, one
 * stderr line holding every fragment, no stack frames, empty stdout, no new file in dir or root.
 */
async function expectUserError(
  dir: string,
  fragments: string[],
  opts: { text?: string; seqlen?: number } = {},
): Promise<void> {
  const before = { dir: listing(dir), root: listing(root) };
  const r = await llmq([
    'eval',
    dir,
    '--ppl',
    opts.text ?? TEXT,
    '--seqlen',
    String(opts.seqlen ?? 64),
    '--max-windows',
    '1',
    '--json',
  ]);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.equal(r.code, 2, `exit code ${r.code}; stderr:\n${r.stderr}`);
  assert.equal(lines.length, 1, `expected one stderr line, got:\n${r.stderr}`);
  assert.ok(!/^\s*at /m.test(r.stderr), `stack trace in stderr:\n${r.stderr}`);
  assert.ok(lines[0].startsWith('llmq: '), lines[0]);
  for (const f of fragments) assert.ok(lines[0].includes(f), `"${f}" missing from: ${lines[0]}`);
  assert.equal(r.stdout, '');
  assert.deepEqual({ dir: listing(dir), root: listing(root) }, before, 'files were written');
}

let seq = 0;
/** A copy of llama-tiny: every file symlinked except those in `replace` (name -> new contents). */
function brokenModel(replace: Record<string, Buffer | string | null>): string {
  const dir = path.join(root, `model${seq++}`);
  fs.mkdirSync(dir);
  for (const name of fs.readdirSync(TINY)) {
    if (!(name in replace)) fs.symlinkSync(path.join(TINY, name), path.join(dir, name));
  }
  for (const [name, contents] of Object.entries(replace)) {
    if (contents !== null) fs.writeFileSync(path.join(dir, name), contents);
  }
  return dir;
}

type Header = Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;

/** llama-tiny's safetensors header (without __metadata__) and data section. */
function tinyWeights(): { header: Header; data: Buffer } {
  const file = fs.readFileSync(path.join(TINY, 'model.safetensors'));
  const n = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.subarray(8, 8 + n).toString('utf8'));
  delete header.__metadata__;
  return { header, data: file.subarray(8 + n) };
}

function safetensorsBytes(header: unknown, data: Buffer): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, data]);
}

const NORM0 = 'model.layers.0.input_layernorm.weight';
const POST0 = 'model.layers.0.post_attention_layernorm.weight';

test('truncated safetensors file', async () => {
  const whole = fs.readFileSync(path.join(TINY, 'model.safetensors'));
  const dir = brokenModel({ 'model.safetensors': whole.subarray(0, whole.length - 100) });
  await expectUserError(dir, ['model.safetensors', 'model.norm.weight', 'exceed the data section']);
});

test('safetensors header length past the end of the file', async () => {
  const bytes = Buffer.from(fs.readFileSync(path.join(TINY, 'model.safetensors')));
  bytes.writeBigUInt64LE(BigInt(bytes.length) * 4n, 0);
  const dir = brokenModel({ 'model.safetensors': bytes });
  await expectUserError(dir, ['model.safetensors', 'header length', 'past the end of the file']);
});

test('overlapping tensor offsets', async () => {
  const { header, data } = tinyWeights();
  // both layer-0 norms claim the same 512 bytes; the 512 freed bytes move to the end
  header[POST0].data_offsets = [...header[NORM0].data_offsets];
  const dir = brokenModel({ 'model.safetensors': safetensorsBytes(header, data) });
  await expectUserError(dir, ['model.safetensors', POST0, NORM0, 'overlap']);
});

test('tensor offsets out of range', async () => {
  const { header, data } = tinyWeights();
  header['model.norm.weight'].data_offsets = [data.length, data.length + 512];
  const dir = brokenModel({ 'model.safetensors': safetensorsBytes(header, data) });
  await expectUserError(dir, [
    'model.safetensors',
    'model.norm.weight',
    `[${data.length}, ${data.length + 512}]`,
  ]);
});

test('unknown dtype', async () => {
  const { header, data } = tinyWeights();
  header[NORM0].dtype = 'Q4_K';
  const dir = brokenModel({ 'model.safetensors': safetensorsBytes(header, data) });
  await expectUserError(dir, ['model.safetensors', NORM0, 'Q4_K']);
});

test('NaN or Inf in a weight', async () => {
  for (const bits of [0x7fc0, 0xff80]) {
    // bf16 NaN, then -Inf
    const { header, data } = tinyWeights();
    const copy = Buffer.from(data);
    assert.equal(header[NORM0].dtype, 'BF16');
    copy.writeUInt16LE(bits, header[NORM0].data_offsets[0] + 2 * 5); // element 5 of the norm
    const dir = brokenModel({ 'model.safetensors': safetensorsBytes(header, copy) });
    await expectUserError(dir, [NORM0, 'NaN or Inf', 'element 5']);
  }
});

test('a tensor the config requires is missing', async () => {
  const { header, data } = tinyWeights();
  const gone = 'model.layers.2.mlp.up_proj.weight';
  const [begin, end] = header[gone].data_offsets;
  delete header[gone];
  for (const t of Object.values(header)) {
    if (t.data_offsets[0] >= end)
      t.data_offsets = [t.data_offsets[0] - (end - begin), t.data_offsets[1] - (end - begin)];
  }
  const rest = Buffer.concat([data.subarray(0, begin), data.subarray(end)]);
  const dir = brokenModel({ 'model.safetensors': safetensorsBytes(header, rest) });
  await expectUserError(dir, [gone, 'missing', 'config.json']);
});

test('unsupported model_type', async () => {
  const config = JSON.parse(fs.readFileSync(path.join(TINY, 'config.json'), 'utf8'));
  config.model_type = 'gpt2';
  const dir = brokenModel({ 'config.json': JSON.stringify(config) });
  await expectUserError(dir, ['config.json', 'model_type', 'gpt2']);
});

test('missing tokenizer.json', async () => {
  const dir = brokenModel({ 'tokenizer.json': null });
  await expectUserError(dir, [dir, 'tokenizer.json']);
});

test('empty evaluation text file', async () => {
  const empty = path.join(root, 'empty.raw');
  fs.writeFileSync(empty, '\n\n');
  await expectUserError(brokenModel({}), [empty, 'empty'], { text: empty });
});

test('--seqlen larger than the evaluation text', async () => {
  await expectUserError(brokenModel({}), [TEXT, '--seqlen 4096', 'tokens'], { seqlen: 4096 });
});

test('inspect counts the tokens of a vocab whose added tokens reuse vocab ids', async () => {
  const r = await llmq(['inspect', TINY, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(out.vocab_size, 8192);
  assert.match(out.tokenizer, /^BPE tokenizer, 8192 tokens \(2 added, 2 of them in the BPE vocab\)/);
});
