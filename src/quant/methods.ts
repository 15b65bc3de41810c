/** Registers every method's pipeline step (one method per file in this folder). */
import './awq.ts';
import './smoothquant.ts';
import './mixed.ts';
import './sqplus.ts';
import './gptq-layer.ts';
import './flatquant.ts';
import './imatrix.ts';
