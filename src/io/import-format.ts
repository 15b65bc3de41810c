/**
 * Reading checkpoints other tools quantized (from any Checkpoint: pure, so the browser entry reads
 * them too; io/import.ts reads them from disk), so `llmq eval` measures them with llmq's protocol:
 * AutoAWQ GEMM (quant_method "awq"), GPTQ v1 / v2 ("gptq") and compressed-tensors pack-quantized
 * ("compressed-tensors"). Each layout file in io/export reads its quantization_config and unpacks
 * one linear (the inverse of its packing); here the unpacked codes become llmq's INT encoding:
 * an INT group (or per-row) spec of the stored bits and symmetry, codes and zero points unchanged
 * (symmetric: offset binary with the implied zero 2^(bits-1), as llmq stores symmetric INT), the
 * stored fp16 / bf16 scales widened to f32 and g_idx where it reorders the groups. The forward pass
 * uses the decoded weights, (code - zero) * scale in f32, which is what the tools' reference
 * dequantization computes; the packed WebGPU path runs from the same encoding.
 *
 * Linears the config leaves in full precision (ignore, modules_to_not_convert, ...) and everything
 * else (embeddings, norms, lm_head) load as plain F16 / BF16 / F32 tensors. Older AutoGPTQ and
 * AutoAWQ checkpoints keep their settings in quantize_config.json / quant_config.json instead of
 * config.json; those are read when config.json has no quantization_config.
 */
import { fail } from '../errors.ts';
import type { Encoded, IntSpec } from '../formats/index.ts';
import { formatName } from '../formats/index.ts';
import { type LinearName, LlamaModel, linearTensorName, type QuantizedWeight } from '../model/llama.ts';
import { type CodesOnly, codesOnlyWeight } from '../model/packed.ts';
import { dequantizeWeight } from '../quant/weights.ts';
import { bf16ToF32, f16ToF32 } from '../tensor/dtype.ts';
import type { Backend } from '../tensor/tensor.ts';
import type { ModelConfig } from './config.ts';
import { AUTOAWQ_READER } from './export/autoawq.ts';
import { COMPRESSED_TENSORS_READER } from './export/compressed-tensors.ts';
import { GPTQ_READER } from './export/gptq.ts';
import type {
  ConfigFields,
  ImportSettings,
  LayoutReader,
  StoredTensors,
  UnpackedLinear,
} from './export/index.ts';
import type { Checkpoint } from './safetensors-format.ts';

/** quant_method -> the layout that reads it */
const READERS: Record<string, LayoutReader> = {
  awq: AUTOAWQ_READER,
  gptq: GPTQ_READER,
  'compressed-tensors': COMPRESSED_TENSORS_READER,
};

/** Where checkpoints without config.json quantization_config keep it, and the method it implies. */
export const LEGACY_CONFIG_FILES: [file: string, method: string][] = [
  ['quantize_config.json', 'gptq'],
  ['quant_config.json', 'awq'],
];

export interface ForeignQuantization {
  /** quant_method as the checkpoint names it */
  method: string;
  reader: LayoutReader;
  settings: ImportSettings;
  /** the file the quantization_config was read from */
  file: string;
  /** the full-precision model, when llmq exported this checkpoint (config.json llmq_export) */
  sourceModel?: string;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A Python `re` pattern as a JS RegExp anchored like re.match (the syntax both share, named groups). */
function pythonPattern(source: string): RegExp {
  let flags = '';
  const body = source
    .replace(/^\(\?([aiLmsux]+)\)/, (_, f: string) => {
      flags = [...f].filter((x) => 'ims'.includes(x)).join('');
      return '';
    })
    .replace(/\(\?P</g, '(?<')
    .replace(/\(\?P=(\w+)\)/g, '\\k<$1>')
    .replace(/\\Z/g, '$')
    .replace(/\\A/g, '^');
  return new RegExp(`^(?:${body})`, flags);
}

function configFields(raw: Record<string, unknown>, where: string): ConfigFields {
  const present = (keys: string | string[]) =>
    (Array.isArray(keys) ? keys : [keys]).filter((k) => raw[k] !== undefined && raw[k] !== null);
  const failAt = (key: string, message: string): never => fail(`${where}.${key} ${message}`);
  /** the value of the first present alias; all present aliases must agree */
  const pick = (keys: string | string[]): [string, unknown] | undefined => {
    const found = present(keys);
    for (const k of found.slice(1))
      if (JSON.stringify(raw[k]) !== JSON.stringify(raw[found[0]]))
        failAt(found[0], `is ${JSON.stringify(raw[found[0]])} but ${k} is ${JSON.stringify(raw[k])}`);
    return found.length ? [found[0], raw[found[0]]] : undefined;
  };
  const first = (keys: string | string[]) => (Array.isArray(keys) ? keys[0] : keys);
  return {
    where,
    has: (key) => present(key).length > 0,
    int(keys, fallback) {
      const p = pick(keys);
      if (!p) return fallback ?? failAt(first(keys), 'is missing');
      const n = typeof p[1] === 'string' && /^-?\d+$/.test(p[1]) ? Number(p[1]) : p[1];
      if (typeof n !== 'number' || !Number.isInteger(n))
        failAt(p[0], `must be an integer, got ${JSON.stringify(p[1])}`);
      return n as number;
    },
    bool(keys, fallback) {
      const p = pick(keys);
      if (!p) return fallback ?? failAt(first(keys), 'is missing');
      if (typeof p[1] !== 'boolean') failAt(p[0], `must be true or false, got ${JSON.stringify(p[1])}`);
      return p[1] as boolean;
    },
    str(keys) {
      const p = pick(keys);
      if (p && typeof p[1] !== 'string') failAt(p[0], `must be a string, got ${JSON.stringify(p[1])}`);
      return p?.[1] as string | undefined;
    },
    strings(key) {
      const v = raw[key];
      if (v === undefined || v === null) return undefined;
      if (!Array.isArray(v) || !v.every((x) => typeof x === 'string'))
        failAt(key, `must be a list of strings, got ${JSON.stringify(v)}`);
      return v as string[];
    },
    sub(key) {
      const v = raw[key];
      if (v === undefined || v === null) return undefined;
      if (!isObject(v)) failAt(key, `must be an object, got ${JSON.stringify(v)}`);
      return configFields(v as Record<string, unknown>, `${where}.${key}`);
    },
    keys: () => Object.keys(raw),
    value: (key) => raw[key],
    pattern(key, source) {
      try {
        return pythonPattern(source);
      } catch {
        return failAt(key, `pattern "${source}" is not a regular expression llmq can read`);
      }
    },
    fail: failAt,
  };
}

/**
 * The quantization of a checkpoint another tool wrote, from config.json's fields `raw` and, where it
 * has no quantization_config, a legacy file's (`readLegacy` gives its parsed JSON, undefined when the
 * file is absent; `fileName` names a file of the checkpoint in messages); undefined for full-precision
 * and llmq checkpoints. Fails (one line) for methods and layout variants llmq cannot read.
 */
export function foreignQuantizationOf(
  raw: Record<string, unknown>,
  fileName: (name: string) => string,
  readLegacy: (name: string) => unknown,
): ForeignQuantization | undefined {
  const found = findQuantConfig(raw, fileName, readLegacy);
  if (!found) return undefined;
  const { q, file } = found;
  if (!isObject(q)) return fail(`${file}: quantization_config must be an object`);
  const method = q.quant_method ?? q.method ?? found.method;
  if (method === 'llmq') return undefined;
  const reader = typeof method === 'string' ? READERS[method] : undefined;
  if (!reader)
    return fail(
      `${file}: quantization_config.quant_method ${JSON.stringify(method)} is not supported (llmq reads llmq, ${Object.keys(READERS).join(', ')} checkpoints)`,
    );
  const settings = reader.settings(configFields(q, `${file}: quantization_config`));
  const exported = raw.llmq_export;
  const source = isObject(exported) ? exported.source_model : undefined;
  return {
    method: method as string,
    reader,
    settings,
    file,
    ...(typeof source === 'string' ? { sourceModel: source } : {}),
  };
}

/** config.json's quantization_config, else a legacy file's, with the file it came from. */
function findQuantConfig(
  raw: Record<string, unknown>,
  fileName: (name: string) => string,
  readLegacy: (name: string) => unknown,
): { q: unknown; file: string; method?: string } | undefined {
  if (raw.quantization_config !== undefined && raw.quantization_config !== null)
    return { q: raw.quantization_config, file: fileName('config.json') };
  for (const [name, method] of LEGACY_CONFIG_FILES) {
    const q = readLegacy(name);
    if (q !== undefined) return { q, file: fileName(name), method };
  }
  return undefined;
}

const INT_DTYPES = ['I8', 'I16', 'I32', 'I64', 'U8', 'U16', 'U32', 'U64'];

function storedTensors(ckpt: Checkpoint, prefix: string, [rows, cols]: [number, number]): StoredTensors {
  const name = (suffix: string) => `${prefix}.${suffix}`;
  const failAt = (suffix: string, message: string): never =>
    fail(`${ckpt.dir}: tensor "${name(suffix)}" ${message}`);
  const read = (suffix: string, shape: number[]) => {
    if (!ckpt.has(name(suffix))) failAt(suffix, 'is missing');
    const t = ckpt.read(name(suffix));
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))
      failAt(
        suffix,
        `has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}] for a [${rows}, ${cols}] linear`,
      );
    return t;
  };
  return {
    prefix,
    rows,
    cols,
    has: (suffix) => ckpt.has(name(suffix)),
    shape: (suffix) =>
      ckpt.has(name(suffix)) ? ckpt.info(name(suffix)).shape : failAt(suffix, 'is missing'),
    words(suffix, shape) {
      const t = read(suffix, shape);
      if (t.dtype !== 'I32') failAt(suffix, `has dtype ${t.dtype}, expected I32 (packed int32 words)`);
      return t.data as Int32Array;
    },
    ints(suffix, shape) {
      const t = read(suffix, shape);
      if (!INT_DTYPES.includes(t.dtype)) failAt(suffix, `has dtype ${t.dtype}, expected an integer dtype`);
      if (t.dtype === 'I32') return t.data as Int32Array;
      const values = t.data as ArrayLike<number | bigint>;
      return Int32Array.from({ length: values.length }, (_, i) => Number(values[i]));
    },
    floats(suffix, shape) {
      const t = read(suffix, shape);
      if (t.dtype === 'F16') return f16ToF32(t.data as Uint16Array);
      if (t.dtype === 'BF16') return bf16ToF32(t.data as Uint16Array);
      if (t.dtype === 'F32') return t.data as Float32Array;
      return failAt(suffix, `has dtype ${t.dtype}, expected F16, BF16 or F32 scales`);
    },
    groupIndex(suffix, nG) {
      const gIdx = this.ints(suffix, [cols]);
      const bad = gIdx.findIndex((g) => !(g >= 0 && g < nG));
      if (bad >= 0) failAt(suffix, `entry ${bad} is ${gIdx[bad]}, not a group of 0..${nG - 1}`);
      return gIdx;
    },
    fail: failAt,
  };
}

/** llmq's encoding of an unpacked linear: an INT group (or per-row) format of the same values. */
export function quantizedWeight(lin: UnpackedLinear): QuantizedWeight {
  const { bits, symmetric, group, rows, cols } = lin;
  const spec: IntSpec =
    group === cols
      ? { kind: 'int', bits, symmetric, granularity: 'row' }
      : { kind: 'int', bits, symmetric, granularity: 'group', group };
  const encoded: Encoded = {
    spec,
    rows,
    cols,
    bits,
    codes: lin.codes,
    block: group,
    scales: lin.scales,
    ...(symmetric ? {} : { zeros: lin.zeros }),
  };
  const gIdx = nonTrivialGIdx(lin.gIdx, group);
  return gIdx ? { encoded, gIdx } : { encoded };
}

/** Packed tensors outside the decoder linears (a quantized lm_head or embedding) are not read. */
function checkQuantizedModules(ckpt: Checkpoint, fq: ForeignQuantization): void {
  const suffix = `.${fq.reader.packedSuffix}`;
  const linear = /^model\.layers\.\d+\.(?:self_attn|mlp)\.\w+$/;
  for (const name of ckpt.names())
    if (name.endsWith(suffix) && !linear.test(name.slice(0, -suffix.length)))
      fail(
        `${ckpt.dir}: tensor "${name}": llmq reads quantized decoder linears only (${name.slice(0, -suffix.length)} is quantized too)`,
      );
}

/** g_idx that only restates column / group carries no information. */
export function nonTrivialGIdx(gIdx: Int32Array | undefined, group: number): Int32Array | undefined {
  if (!gIdx) return undefined;
  for (let c = 0; c < gIdx.length; c++) if (gIdx[c] !== Math.floor(c / group)) return gIdx;
  return undefined;
}

/**
 * A checkpoint another tool quantized (foreignQuantizationOf) as a model, from any Checkpoint;
 * weights decoded to f32 unless `codesOnly` keeps them as codes. `dir` names it in messages.
 */
export function foreignQuantizedFromCheckpoint(
  dir: string,
  config: ModelConfig,
  ckpt: Checkpoint,
  backend: Backend,
  fq: ForeignQuantization,
  codesOnly?: CodesOnly,
): LlamaModel {
  checkQuantizedModules(ckpt, fq);
  const formats = new Set<string>();
  const unquantized: string[] = [];
  let quantized = 0;
  const readLinear = (layer: number, name: LinearName, shape: [number, number]) => {
    const module = linearTensorName(layer, name).replace(/\.weight$/, '');
    const settings = fq.settings.linear(module);
    const packed = `${module}.${fq.reader.packedSuffix}`;
    if (!settings) {
      if (ckpt.has(packed))
        fail(`${dir}: tensor "${packed}" is stored quantized but ${fq.file} leaves ${module} unquantized`);
      unquantized.push(module);
      return undefined;
    }
    if (!ckpt.has(packed))
      fail(`${dir}: tensor "${packed}" is missing; ${fq.file} quantizes ${module} (${fq.settings.describe})`);
    const q = quantizedWeight(fq.reader.unpack(storedTensors(ckpt, module, shape), settings));
    formats.add(formatName(q.encoded.spec));
    quantized++;
    const weight = codesOnly?.({ quantized: q })
      ? codesOnlyWeight(backend, ...shape)
      : backend.upload(dequantizeWeight(q), shape, 'f32');
    return { quantized: q, weight };
  };
  const model = LlamaModel.fromCheckpoint(dir, config, ckpt, backend, readLinear);
  model.quantization = {
    recipe: `${fq.reader.name} (imported)`,
    imported: fq.reader.name,
    config: fq.settings.describe,
    weight_formats: [...formats],
    quantized_linears: quantized,
    unquantized_linears: unquantized,
  };
  return model;
}
