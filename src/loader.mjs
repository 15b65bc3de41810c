// Runs llmq's TypeScript in Node (bin/llmq, npm test, worker threads): `node --import ./src/loader.mjs`.
// esbuild strips the types of each .ts module as it loads. tsx does the same but also has esbuild wrap
// every function it creates in a naming helper (keepNames), a property definition per closure: loops
// that build closures ran up to 15x slower under it (IQ1_S's split search) and decode encoding ~15%.
import { register } from 'node:module';

process.setSourceMapsEnabled(true);
register('./loader-hooks.mjs', import.meta.url);
