/**
 * The model's chat template: conversation -> the text the model continues as the assistant.
 *
 * Where it comes from, as transformers loads it: <dir>/chat_template.jinja when present (transformers
 * gives that file priority), else `chat_template` in <dir>/tokenizer_config.json (a string, or a list
 * of {name, template} of which "default" is used). It is rendered with @huggingface/jinja (trim_blocks
 * and lstrip_blocks, as transformers compiles it) with {messages, add_generation_prompt: true,
 * bos_token, eos_token}; bos/eos come from tokenizer_config.json (a string or an {content} object).
 *
 * A model without a template (base models, llmq's test models) gets a plain fallback format, one
 * paragraph per message and an open assistant turn:
 *
 *     System: <system content>\n\nUser: <user content>\n\nAssistant: <reply>\n\nUser: <...>\n\nAssistant:
 *
 * Tokenizing the rendered text: transformers uses add_special_tokens=False, because templates write
 * the BOS themselves; `startsWithBos` tells whether the rendered text already holds one.
 */
import { Template } from '@huggingface/jinja';
import { fail } from '../errors.ts';
import { type GgufFile, ggufMeta } from '../io/gguf-format.ts';
import type { ChatMessage } from './engine.ts';

export interface ChatTemplate {
  readonly source: 'tokenizer_config' | 'chat_template.jinja' | 'gguf' | 'fallback';
  /** the BOS text of tokenizer_config.json, if it names one */
  readonly bosToken: string | undefined;
  render(messages: readonly ChatMessage[]): string;
}

export type Json = Record<string, unknown>;

const FALLBACK_LABELS: Record<ChatMessage['role'], string> = {
  system: 'System',
  user: 'User',
  assistant: 'Assistant',
};

/**
 * The template of a model's tokenizer_config.json (`config`, parsed; `configFile` names it in errors),
 * or of its chat_template.jinja when there is one, which wins as in transformers.
 */
export function chatTemplateFrom(
  config: Json,
  configFile: string,
  jinja?: { file: string; text: string },
): ChatTemplate {
  const bosToken = specialToken(configFile, config, 'bos_token');
  const eosToken = specialToken(configFile, config, 'eos_token');
  if (jinja) return jinjaTemplate('chat_template.jinja', jinja.file, jinja.text, bosToken, eosToken);
  const source = configTemplate(configFile, config.chat_template);
  if (source !== undefined) return jinjaTemplate('tokenizer_config', configFile, source, bosToken, eosToken);
  return { source: 'fallback', bosToken, render: renderFallback };
}

/** The template a GGUF file embeds (`tokenizer.chat_template`), with its BOS/EOS token texts. */
export function ggufChatTemplateOf(gguf: GgufFile): ChatTemplate {
  const file = gguf.path;
  const tokens = ggufMeta(gguf, 'tokenizer.ggml.tokens');
  const tokenText = (key: string): string | undefined => {
    const id = ggufMeta(gguf, key);
    return typeof id === 'number' && Array.isArray(tokens) && typeof tokens[id] === 'string'
      ? tokens[id]
      : undefined;
  };
  const bosToken = tokenText('tokenizer.ggml.bos_token_id');
  const text = ggufMeta(gguf, 'tokenizer.chat_template');
  if (typeof text !== 'string') return { source: 'fallback', bosToken, render: renderFallback };
  return jinjaTemplate('gguf', file, text, bosToken, tokenText('tokenizer.ggml.eos_token_id'));
}

/** Whether `rendered` already begins with the BOS text, so that encoding it must not add another. */
export function startsWithBos(rendered: string, bosToken: string | undefined): boolean {
  return bosToken !== undefined && bosToken !== '' && rendered.startsWith(bosToken);
}

/** tokenizer_config.json writes special tokens as a string or as an AddedToken object {content, ...}. */
function specialToken(file: string, config: Json, key: 'bos_token' | 'eos_token'): string | undefined {
  const value = config[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  const content = (value as { content?: unknown }).content;
  if (typeof content === 'string') return content;
  return fail(`${file}: ${key} must be a string or an object with a string "content"`);
}

function configTemplate(file: string, value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  if (!Array.isArray(value))
    return fail(`${file}: chat_template must be a string or a list of {name, template}`);
  const named = value as { name?: unknown; template?: unknown }[];
  const entry = named.find((t) => t?.name === 'default');
  if (entry === undefined) {
    const names = named.map((t) => String(t?.name)).join(', ');
    return fail(`${file}: chat_template lists templates (${names}) but none named "default"`);
  }
  if (typeof entry.template !== 'string')
    return fail(`${file}: chat_template "default" has no string template`);
  return entry.template;
}

export function jinjaTemplate(
  source: 'tokenizer_config' | 'chat_template.jinja' | 'gguf',
  file: string,
  text: string,
  bosToken: string | undefined,
  eosToken: string | undefined,
): ChatTemplate {
  let template: Template;
  try {
    template = new Template(text);
  } catch (e) {
    return fail(`${file}: the chat template does not parse (${(e as Error).message})`);
  }
  const render = (messages: readonly ChatMessage[], what = 'failed on this conversation'): string => {
    try {
      return template.render({
        messages: messages.map((m) => ({ role: m.role, content: m.content })),
        add_generation_prompt: true,
        bos_token: bosToken,
        eos_token: eosToken,
      });
    } catch (e) {
      return fail(`${file}: the chat template ${what} (${(e as Error).message})`);
    }
  };
  // a template the renderer cannot run (an unknown filter, say) is reported at load, not per request
  render([{ role: 'user', content: 'Hello' }], 'does not render a one-message conversation');
  return { source, bosToken, render: (messages) => render(messages) };
}

export function renderFallback(messages: readonly ChatMessage[]): string {
  const turns = messages.map((m) => `${FALLBACK_LABELS[m.role]}: ${m.content}\n\n`);
  return `${turns.join('')}Assistant:`;
}
