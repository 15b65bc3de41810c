"""PyTorch baselines for bench/generate.ts, in the same device call: greedy generation with transformers
(model.generate, dynamic KV cache, sdpa) on llama-small in fp32 and bf16 from llmq's prompt ids (and
whether fp32 picks the same tokens as llmq), and a random-weight Llama-3-8B in bf16. Prints JSON lines,
writes --out.   python3 bench/generate_torch.py --model DIR --llmq llmq.json [--new 256] [--skip 8b]"""
import argparse, json, time
import torch
import transformers

p = argparse.ArgumentParser()
p.add_argument('--model'); p.add_argument('--llmq'); p.add_argument('--out')
p.add_argument('--new', type=int, default=256); p.add_argument('--prompt', type=int, default=128)
p.add_argument('--skip', default='')
a = p.parse_args()
skip = set(filter(None, a.skip.split(',')))
results = []
def report(r):
    print(json.dumps(r), flush=True); results.append(r)
    if a.out: json.dump(results, open(a.out, 'w'), indent=1)

dev = 'cuda'
report({'what': 'device', 'torch': torch.__version__, 'transformers': transformers.__version__,
        'gpu': torch.cuda.get_device_name()})

def timed(fn):
    torch.cuda.synchronize(); t0 = time.perf_counter(); out = fn(); torch.cuda.synchronize()
    return out, time.perf_counter() - t0

def bench(m, ids, label, n=a.new):
    x = torch.tensor([ids], device=dev)
    gen = lambda k: m.generate(x, max_new_tokens=k, min_new_tokens=k, do_sample=False,
                               attention_mask=torch.ones_like(x), pad_token_id=0)
    with torch.no_grad():
        gen(8)  # warm-up
        _, prefill = timed(lambda: m(x))
        out, total = timed(lambda: gen(n))
    new = out[0, x.shape[1]:].tolist()
    r = {'what': 'generate', 'model': label, 'promptTokens': len(ids), 'newTokens': len(new),
         'prefillSeconds': prefill, 'decodeTokensPerSecond': (len(new) - 1) / (total - prefill)}
    return r, new

if 'small' not in skip and a.model and a.llmq:
    llmq = next(r for r in json.load(open(a.llmq)) if r.get('ids'))
    for dt in (torch.float32, torch.bfloat16):
        m = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=dt).to(dev).eval()
        r, new = bench(m, llmq['promptIds'], f'llama-small {dt}', llmq['newTokens'])
        same = 0
        while same < min(len(new), len(llmq['ids'])) and new[same] == llmq['ids'][same]: same += 1
        r['sameGreedyPrefixAsLlmq'] = same
        report(r)
        del m; torch.cuda.empty_cache()

if '8b' not in skip:
    cfg = transformers.LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                   num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                   rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=False)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(dev):
        m = transformers.LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    ids = [(i * 7919) % 128000 for i in range(a.prompt)]
    r, _ = bench(m, ids, 'llama-3-8b random bf16')
    report(r)
