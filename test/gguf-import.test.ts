/**
 * Importing llama.cpp GGUF files (io/gguf-model.ts): weights, tokenizer, perplexity, the ggml block
 * dequantizers against gguf-py, and the refusals.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { UserError } from '../src/errors.ts';
import { readEvalText } from '../src/eval/eval-text.ts';
import { perplexity } from '../src/eval/perplexity.ts';
import {
  dequantizeF16,
  dequantizeQ4_0,
  dequantizeQ4_1,
  dequantizeQ4_K,
  dequantizeQ5_0,
  dequantizeQ5_1,
  dequantizeQ5_K,
  dequantizeQ6_K,
  dequantizeQ8_0,
  ggmlBlocks,
  unpackQ4_1,
  unpackQ4_K,
  unpackQ5_0,
  unpackQ5_1,
  unpackQ5_K,
  unpackQ6_K,
} from '../src/formats/ggml.ts';
import type { GgmlSpec } from '../src/formats/spec.ts';
import { exportGguf, permuteRotaryRows } from '../src/io/export/gguf.ts';
import { GGML_TYPE, type GgufFile, gguf, readGguf, readGgufTensor, writeGguf } from '../src/io/gguf.ts';
import { loadGgufModel, loadGgufTokenizer } from '../src/io/gguf-load.ts';
import { unpermuteRotaryRows } from '../src/io/gguf-model.ts';
import { loadTokenizer } from '../src/io/tokenizer.ts';
import { LINEARS, type LinearName, type LlamaModel } from '../src/model/llama.ts';
import { loadLlama } from '../src/model/llama-dir.ts';
import { blockCodes } from '../src/model/packed.ts';
import { loadModel } from '../src/quant/load.ts';
import { resolveRecipe } from '../src/quant/recipe.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { f32ToF16 } from '../src/tensor/dtype.ts';
import type { Tensor } from '../src/tensor/tensor.ts';
import { LLAMA3_PRE_TOKENIZER, LOADER, MODELS, randomGgmlBlocks, WIKITEXT } from './helpers.ts';

const SOURCE = `${MODELS}llama-tiny`;
const WIKI = WIKITEXT;
const backend = new CpuBackend();
let tmp: string;
const files: Record<'q8_0' | 'q4_0' | 'f16', string> = { q8_0: '', q4_0: '', f16: '' };
let source: LlamaModel;

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llmq-gguf-import-'));
  for (const type of ['q8_0', 'q4_0', 'f16'] as const) {
    files[type] = path.join(tmp, `tiny-${type}.gguf`);
    await exportGguf(SOURCE, files[type], { type });
  }
  source = loadLlama(SOURCE, backend);
});

after(() => {
  source?.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const LINEAR_GGUF: Record<LinearName, string> = {
  q_proj: 'attn_q',
  k_proj: 'attn_k',
  v_proj: 'attn_v',
  o_proj: 'attn_output',
  gate_proj: 'ffn_gate',
  up_proj: 'ffn_up',
  down_proj: 'ffn_down',
};

/** Every weight of a model with its GGUF tensor name and, for q/k, the head count of the permutation. */
function weightsOf(model: LlamaModel): { gguf: string; tensor: Tensor; heads?: number }[] {
  const { numHeads, numKvHeads } = model.config;
  const out: { gguf: string; tensor: Tensor; heads?: number }[] = [
    { gguf: 'token_embd.weight', tensor: model.embedTokens },
    { gguf: 'output_norm.weight', tensor: model.finalNorm },
    { gguf: 'output.weight', tensor: model.lmHead },
  ];
  model.layers.forEach((layer, i) => {
    out.push({ gguf: `blk.${i}.attn_norm.weight`, tensor: layer.inputNorm });
    out.push({ gguf: `blk.${i}.ffn_norm.weight`, tensor: layer.postNorm });
    for (const name of LINEARS) {
      const heads = name === 'q_proj' ? numHeads : name === 'k_proj' ? numKvHeads : undefined;
      out.push({ gguf: `blk.${i}.${LINEAR_GGUF[name]}.weight`, tensor: layer.linears[name].weight, heads });
    }
  });
  return out;
}

/** Naive inverse of the GGUF q/k permutation, element by element: GGUF row h*hd + 2i + j is HF row h*hd + j*hd/2 + i. */
function naiveUnpermute(w: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const hd = rows / heads;
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) {
    const h = Math.floor(r / hd);
    const within = r % hd;
    const hfRow = h * hd + (within % 2) * (hd / 2) + Math.floor(within / 2);
    for (let c = 0; c < cols; c++) out[hfRow * cols + c] = w[r * cols + c];
  }
  return out;
}

function dequantizeStored(file: GgufFile, name: string): Float32Array {
  const t = file.tensors.find((x) => x.name === name);
  assert.ok(t, name);
  const bytes = readGgufTensor(file, name);
  if (t.type === GGML_TYPE.F32) return new Float32Array(bytes.slice().buffer);
  if (t.type === GGML_TYPE.F16) return dequantizeF16(bytes);
  if (t.type === GGML_TYPE.Q8_0) return dequantizeQ8_0(bytes);
  if (t.type === GGML_TYPE.Q4_0) return dequantizeQ4_0(bytes);
  if (t.type === GGML_TYPE.Q6_K) return dequantizeQ6_K(bytes);
  throw new Error(`unexpected type ${t.type} of ${name}`);
}

function fp16Round(x: Float32Array): Float32Array {
  const bits = f32ToF16(x);
  return dequantizeF16(new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength));
}

function sameValues(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, what);
  for (let i = 0; i < want.length; i++)
    if (!Object.is(got[i], want[i])) assert.fail(`${what}[${i}]: ${got[i]} != ${want[i]}`);
}

for (const type of ['q8_0', 'q4_0', 'f16'] as const) {
  test(`${type} GGUF: every weight is the ggml dequantization of the stored data, in HF row order`, async () => {
    const file = readGguf(files[type]);
    const model = loadGgufModel(files[type], backend);
    try {
      assert.equal(model.quantization?.recipe, `gguf mostly_${type}`);
      assert.equal(model.config.numLayers, source.config.numLayers);
      assert.equal(model.config.headDim, source.config.headDim);
      assert.equal(model.config.rope.theta, source.config.rope.theta);
      assert.equal(model.config.tieWordEmbeddings, false);
      const srcWeights = weightsOf(source);
      for (const [k, w] of weightsOf(model).entries()) {
        const [rows, cols] = w.tensor.shape.length === 2 ? w.tensor.shape : [w.tensor.shape[0], 1];
        let want = dequantizeStored(file, w.gguf);
        if (w.heads) want = naiveUnpermute(want, rows, cols, w.heads);
        const got = await backend.read(w.tensor);
        sameValues(got, want, w.gguf);
        const src = await backend.read(srcWeights[k].tensor);
        if (type === 'f16' || w.tensor.shape.length === 1)
          sameValues(got, w.tensor.shape.length === 1 ? src : fp16Round(src), `${w.gguf} vs source`);
        else {
          // the right row order: the error is that of the format, not of a shuffled matrix
          let err = 0;
          let norm = 0;
          for (let i = 0; i < src.length; i++) {
            err += (got[i] - src[i]) ** 2;
            norm += src[i] ** 2;
          }
          assert.ok(err / norm < (type === 'q8_0' ? 1e-3 : 0.05), `${w.gguf}: relative error ${err / norm}`);
        }
      }
    } finally {
      model.dispose();
    }
  });
}

for (const type of ['q8_0', 'q4_0'] as const) {
  test(`${type} GGUF: linears keep their codes and block scales; repacked they are the stored bytes`, () => {
    const file = readGguf(files[type]);
    const model = loadGgufModel(files[type], backend);
    try {
      const { numHeads, numKvHeads } = model.config;
      for (const [i, layer] of model.layers.entries())
        for (const name of LINEARS) {
          const gguf = `blk.${i}.${LINEAR_GGUF[name]}.weight`;
          const q = layer.linears[name].quantized;
          assert.ok(q, `${gguf}: no stored form`);
          const spec = q.encoded.spec as GgmlSpec;
          assert.deepEqual(spec, { kind: 'ggml', type });
          const { codes, scales, rows, cols } = q.encoded;
          const heads = name === 'q_proj' ? numHeads : name === 'k_proj' ? numKvHeads : undefined;
          const blocks = heads
            ? ggmlBlocks(
                permuteRotaryRows(codes, rows, cols, heads),
                permuteRotaryRows(scales, rows, cols / 32, heads),
                spec,
              )
            : ggmlBlocks(codes, scales, spec);
          assert.deepEqual(blocks, readGgufTensor(file, gguf), gguf);
        }
    } finally {
      model.dispose();
    }
  });
}

test('an F16 GGUF has no stored (coded) linears', () => {
  const model = loadGgufModel(files.f16, backend);
  try {
    assert.ok(model.layers.every((l) => LINEARS.every((n) => l.linears[n].quantized === undefined)));
  } finally {
    model.dispose();
  }
});

test('unpermuteRotaryRows inverts permuteRotaryRows and matches the naive index map', () => {
  const rows = 24;
  const cols = 3;
  const w = Float32Array.from({ length: rows * cols }, (_, i) => i * 0.5 - 7);
  const permuted = permuteRotaryRows(w, rows, cols, 2);
  sameValues(unpermuteRotaryRows(permuted, rows, cols, 2), w, 'round trip');
  sameValues(unpermuteRotaryRows(permuted, rows, cols, 2), naiveUnpermute(permuted, rows, cols, 2), 'naive');
  const halves = Uint16Array.from({ length: rows }, (_, i) => i);
  assert.deepEqual(
    Array.from(unpermuteRotaryRows(halves, rows, 1, 3)),
    Array.from(naiveUnpermute(Float32Array.from(halves), rows, 1, 3)),
  );
});

test('the GGUF tokenizer gives the HF tokenizer ids on 4 kB of wikitext', () => {
  const text = fs.readFileSync(WIKI, 'utf8').slice(0, 4096);
  const want = loadTokenizer(SOURCE).encode(text);
  const tok = loadGgufTokenizer(files.q8_0);
  const got = tok.encode(text);
  assert.deepEqual(Array.from(got), Array.from(want));
  assert.equal(got[0], 0, 'BOS first');
  assert.equal(tok.decode(got.subarray(1)), text);
});

test('perplexity of the f16 GGUF equals that of the source with fp16-rounded weights', async () => {
  const tokens = loadTokenizer(SOURCE).encode(readEvalText(WIKI).slice(0, 4000));
  const rounded = loadLlama(SOURCE, backend);
  const imported = loadGgufModel(files.f16, backend);
  try {
    const round = async (t: Tensor) => {
      const v = fp16Round(await backend.read(t));
      t.dispose();
      return backend.upload(v, t.shape, 'f32');
    };
    // the exporter writes the norms in F32, everything else in F16
    rounded.embedTokens = await round(rounded.embedTokens);
    rounded.lmHead = await round(rounded.lmHead);
    for (const layer of rounded.layers)
      for (const name of LINEARS) layer.linears[name].weight = await round(layer.linears[name].weight);
    const want = await perplexity(rounded, tokens, { seqLen: 64, maxWindows: 2 });
    const got = await perplexity(imported, tokens, { seqLen: 64, maxWindows: 2 });
    assert.equal(got.windows, 2);
    assert.ok(Math.abs(got.ppl - want.ppl) <= 1e-6 * want.ppl, `${got.ppl} vs ${want.ppl}`);
    assert.ok(Number.isFinite(got.ppl) && got.ppl > 1);
  } finally {
    rounded.dispose();
    imported.dispose();
  }
});

test('Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K dequantize bit for bit as gguf-py 0.19.0', () => {
  const fixture = JSON.parse(fs.readFileSync('test/fixtures/ggml-quants.json', 'utf8'));
  const fns: Record<string, (b: Uint8Array) => Float32Array> = {
    Q4_1: dequantizeQ4_1,
    Q5_0: dequantizeQ5_0,
    Q5_1: dequantizeQ5_1,
    Q4_K: dequantizeQ4_K,
    Q5_K: dequantizeQ5_K,
    Q6_K: dequantizeQ6_K,
  };
  assert.deepEqual(fixture.cases.map((c: { type: string }) => c.type).sort(), Object.keys(fns).sort());
  for (const c of fixture.cases) {
    const bytes = new Uint8Array(Buffer.from(c.bytes, 'base64'));
    const values = Buffer.from(c.values_f32le, 'base64');
    const want = new Float32Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.length));
    sameValues(fns[c.type](bytes), want, c.type);
  }
  assert.throws(() => dequantizeQ6_K(new Uint8Array(209), 256), RangeError);
});

test('blockCodes: (code - zero) * scale of Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K data is its dequantization (exact without a min)', () => {
  const cases = [
    ['Q4_1', unpackQ4_1, dequantizeQ4_1],
    ['Q5_0', unpackQ5_0, dequantizeQ5_0],
    ['Q5_1', unpackQ5_1, dequantizeQ5_1],
    ['Q4_K', unpackQ4_K, dequantizeQ4_K],
    ['Q5_K', unpackQ5_K, dequantizeQ5_K],
    ['Q6_K', unpackQ6_K, dequantizeQ6_K],
  ] as const;
  const rows = 3;
  const cols = 512;
  for (const [i, [type, unpack, dequantize]] of cases.entries()) {
    const bytes = randomGgmlBlocks(type, rows * cols, 100 + i, 0.05);
    const want = dequantize(bytes, rows * cols);
    const u = unpack(bytes, rows * cols);
    const bc = blockCodes(u, rows, cols);
    assert.ok(bc, type);
    assert.equal(bc.group, type === 'Q6_K' ? 16 : 32);
    for (let k = 0; k < want.length; k++) {
      const g = Math.floor(k / bc.group);
      const got = Math.fround((bc.codes[k] - bc.zeros[g]) * bc.scales[g]);
      // the min types: z = -m/d rounds once, (q - z) once, the product once: a few ulps of |q d| + |m|
      const tol: number = u.mins
        ? 4 * 2 ** -24 * (Math.abs(bc.codes[k] * bc.scales[g]) + Math.abs(u.mins[g]))
        : 0;
      if (!(Math.abs(got - want[k]) <= tol)) assert.fail(`${type}[${k}]: ${got} vs ${want[k]} (tol ${tol})`);
    }
  }
  const zeroScale = randomGgmlBlocks('Q4_1', 64, 7, 0.05);
  zeroScale[0] = zeroScale[1] = 0; // block 0: d = 0 with a nonzero min, every value is m
  const u = unpackQ4_1(zeroScale);
  const bc = blockCodes(u, 1, 64)!;
  const m = u.mins![0];
  assert.notEqual(m, 0);
  for (let k = 0; k < 32; k++) assert.equal((bc.codes[k] - bc.zeros[0]) * bc.scales[0], m);
  assert.deepEqual(bc.codes.subarray(32), u.codes.subarray(32), 'other blocks keep their codes');
  zeroScale[20] = 0x00;
  zeroScale[21] = 0x7c; // block 1: d = +inf
  assert.equal(blockCodes(unpackQ4_1(zeroScale), 1, 64), undefined);
});

/** A copy of `from` with some metadata replaced and one tensor optionally swapped. */
function rewrite(
  from: string,
  to: string,
  meta: Record<string, ReturnType<typeof gguf.str>>,
  swap?: { name: string; type: number; data: Uint8Array },
): string {
  const file = readGguf(from);
  const metadata = new Map(file.metadata);
  for (const [k, v] of Object.entries(meta)) metadata.set(k, v);
  const tensors = file.tensors.map((t) =>
    swap && t.name === swap.name
      ? { name: t.name, dims: t.dims, type: swap.type, data: swap.data }
      : { name: t.name, dims: t.dims, type: t.type, data: readGgufTensor(file, t.name) },
  );
  writeGguf(to, metadata, tensors);
  return to;
}

test('refusals: other architectures, undequantizable tensors, unknown tokenizers, --recipe', async () => {
  const qwen = rewrite(files.q8_0, path.join(tmp, 'qwen.gguf'), {
    'general.architecture': gguf.str('qwen2'),
  });
  assert.throws(
    () => loadGgufModel(qwen, backend),
    (e: Error) => {
      assert.ok(e instanceof UserError);
      assert.match(e.message, /general\.architecture "qwen2" is not supported/);
      return true;
    },
  );

  // blk.0.attn_v.weight is [128 rows, 256 cols]: one Q8_K block of 292 bytes per row
  const q8k = rewrite(
    files.q8_0,
    path.join(tmp, 'q8k.gguf'),
    {},
    {
      name: 'blk.0.attn_v.weight',
      type: GGML_TYPE.Q8_K,
      data: new Uint8Array(128 * 292),
    },
  );
  assert.throws(
    () => loadGgufModel(q8k, backend),
    /blk\.0\.attn_v\.weight has type Q8_K, which llmq cannot dequantize/,
  );

  const spm = rewrite(files.q8_0, path.join(tmp, 'spm.gguf'), { 'tokenizer.ggml.model': gguf.str('llama') });
  assert.throws(() => loadGgufTokenizer(spm), /tokenizer\.ggml\.model "llama" is not supported.*--tokenizer/);
  const qwenPre = rewrite(files.q8_0, path.join(tmp, 'pre.gguf'), {
    'tokenizer.ggml.pre': gguf.str('qwen2'),
  });
  assert.throws(
    () => loadGgufTokenizer(qwenPre),
    /tokenizer\.ggml\.pre "qwen2" is not supported.*--tokenizer/,
  );

  await assert.rejects(
    () => loadModel(files.q8_0, backend, { recipe: resolveRecipe('rtn-w8') }),
    /already quantized \(GGUF file\)/,
  );

  // the CLI: the unknown tokenizer is refused without --tokenizer, and evaluated with it
  const cli = (args: string[]) =>
    spawnSync(process.execPath, ['--import', LOADER, 'src/cli/main.ts', ...args], { encoding: 'utf8' });
  const common = ['--ppl', WIKI, '--seqlen', '64', '--max-windows', '1', '--json'];
  const refused = cli(['eval', spm, ...common]);
  assert.equal(refused.status, 2, refused.stderr);
  assert.match(refused.stderr, /--tokenizer <hf-model-dir>/);
  const withTok = cli(['eval', spm, ...common, '--tokenizer', SOURCE]);
  assert.equal(withTok.status, 0, withTok.stderr);
  const plain = cli(['eval', files.q8_0, ...common]);
  assert.equal(plain.status, 0, plain.stderr);
  const [a, b] = [JSON.parse(withTok.stdout), JSON.parse(plain.stdout)];
  assert.equal(a.ppl, b.ppl);
  assert.equal(b.recipe, 'gguf mostly_q8_0');
  const kl = cli(['eval', files.q8_0, ...common, '--kl']);
  assert.equal(kl.status, 2);
  assert.match(kl.stderr, /--kl-base/);
});

test('a Llama-3-style tokenizer (llama-bpe pre-tokenizer) round-trips through GGUF to the same ids', async () => {
  const dir = path.join(tmp, 'llama-bpe');
  fs.mkdirSync(dir);
  const tok = JSON.parse(fs.readFileSync(`${SOURCE}/tokenizer.json`, 'utf8'));
  tok.pre_tokenizer = LLAMA3_PRE_TOKENIZER;

  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tok));
  for (const f of ['config.json', 'tokenizer_config.json', 'model.safetensors'])
    fs.symlinkSync(path.join(SOURCE, f), path.join(dir, f));
  const out = path.join(tmp, 'llama-bpe.gguf');
  await exportGguf(dir, out, { type: 'f16' });
  // digits in threes, contractions, punctuation runs and newlines: where the two pre-tokenizers differ
  const text = `${fs.readFileSync(WIKI, 'utf8').slice(0, 4096)} 1234567 can't WE'LL ...!!\n\n  x`;
  const want = loadTokenizer(dir).encode(text);
  assert.notDeepEqual(
    Array.from(want),
    Array.from(loadTokenizer(SOURCE).encode(text)),
    'the variant tokenizes differently',
  );
  assert.deepEqual(Array.from(loadGgufTokenizer(out).encode(text)), Array.from(want));
});

test('llmq inspect model.gguf: config, tensor types by parameter count, tokenizer', () => {
  const r = spawnSync(
    process.execPath,
    ['--import', LOADER, 'src/cli/main.ts', 'inspect', files.q4_0, '--json'],
    {
      encoding: 'utf8',
    },
  );
  assert.equal(r.status, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  const config = JSON.parse(fs.readFileSync(`${SOURCE}/config.json`, 'utf8'));
  assert.equal(info.architecture, 'llama');
  assert.equal(info.file_type, 'mostly_q4_0');
  assert.equal(info.layers, config.num_hidden_layers);
  assert.equal(info.hidden_size, config.hidden_size);
  assert.equal(info.kv_heads, config.num_key_value_heads);
  const file = readGguf(files.q4_0);
  const count = (type: number) =>
    file.tensors.filter((t) => t.type === type).reduce((n, t) => n + t.dims.reduce((a, b) => a * b, 1), 0);
  // q4_0: the output matrix in Q6_K, as llama-quantize writes it
  assert.deepEqual(info.tensor_types, {
    Q4_0: count(GGML_TYPE.Q4_0),
    Q6_K: count(GGML_TYPE.Q6_K),
    F32: count(GGML_TYPE.F32),
  });
  assert.equal(info.disk_bytes, fs.statSync(files.q4_0).size);
  assert.match(info.tokenizer, /8192 tokens/);
});
