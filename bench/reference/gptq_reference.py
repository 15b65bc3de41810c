"""Independent PyTorch GPTQ as the IST-DASLab reference code runs it (fp32 Hessian accumulated as a
running mean, percdamp 0.01, dead inputs, act_order, lazy blocks of 128, group parameters fitted when a
group starts, "true sequential", inputs of each layer through the quantized previous layers), written
from our reading of that code, for checking llmq's GPTQ numbers on the same token ids.

Inputs (made by bench/reference/dump-ids.ts): <work>/calib.bin, eval.bin (int32 token ids), meta.json.
Usage: python3 gptq_reference.py <model_dir> <work_dir> [cells...]   cells like w4, w3a (a = act_order)
A cell ending in "-bf16" calibrates as the reference scripts do with torch_dtype="auto" on a bf16
checkpoint (layers run in bf16, GPTQ in fp32, quantized weights stored back in bf16), then evaluates in fp32;
"fp-bf16" evaluates the unquantized model in bf16. A cell ending in "-f64" accumulates the Hessian and runs
GPTQ in float64 (layers still in fp32), as llmq's host solver does.
Prints one JSON line per cell and writes <work_dir>/gptq-reference.json.
"""
import json
import math
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
model_dir, work = sys.argv[1], sys.argv[2]
cells = sys.argv[3:] or ["rtn4", "rtn3", "w4", "w4a", "w3", "w3a"]
meta = json.load(open(f"{work}/meta.json"))
dev = "cuda" if torch.cuda.is_available() else "cpu"
calib = torch.from_numpy(np.fromfile(f"{work}/calib.bin", dtype=np.int32).astype(np.int64))
evals = torch.from_numpy(np.fromfile(f"{work}/eval.bin", dtype=np.int32).astype(np.int64))
GROUP, BLOCK, PERCDAMP, BATCH = 128, 128, 0.01, 16
SEQUENTIAL = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
              ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]


def params(x, maxq):
    """Asymmetric (scale, zero) per row of x, the range widened to hold 0 (GPTQ's quantizer)."""
    lo = torch.clamp(x.min(dim=1).values, max=0)
    hi = torch.clamp(x.max(dim=1).values, min=0)
    both = (lo == 0) & (hi == 0)
    lo[both], hi[both] = -1, 1
    scale = (hi - lo) / maxq
    return scale.unsqueeze(1), torch.round(-lo / scale).unsqueeze(1)


def qdq(x, scale, zero, maxq):
    return scale * (torch.clamp(torch.round(x / scale) + zero, 0, maxq) - zero)


def rtn_weight(w, bits):
    rows, cols = w.shape
    g = w.reshape(-1, GROUP)
    s, z = params(g, 2**bits - 1)
    return qdq(g, s, z, 2**bits - 1).reshape(rows, cols)


def gptq_weight(w, H, bits, act_order):
    maxq = 2**bits - 1
    W, H = w.clone(), H.clone()
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    H += PERCDAMP * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, BLOCK):
        i2 = min(i1 + BLOCK, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            if (i1 + i) % GROUP == 0:
                scale, zero = params(W[:, i1 + i:i1 + i + GROUP], maxq)
            w_col = W1[:, i]
            q = qdq(w_col.unsqueeze(1), scale, zero, maxq).flatten()
            Q[:, i1 + i] = q
            err = (w_col - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if act_order:
        Q = Q[:, torch.argsort(perm)]
    return Q


def load():
    return AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                attn_implementation="sdpa").to(dev).eval()


@torch.no_grad()
def perplexity(m):
    seq = meta["eval_seqlen"]
    nll = 0.0
    for w in range(meta["eval_windows"]):
        ids = evals[w * seq:(w + 1) * seq].unsqueeze(0).to(dev)
        logits = m(ids).logits.float()
        nll += torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    return math.exp(nll / meta["eval_windows"])


def run_layer(layer, h, rope):
    outs = []
    for b in range(0, h.shape[0], BATCH):
        r = tuple(t[b:b + BATCH] for t in rope)
        out = layer(h[b:b + BATCH], position_embeddings=r, attention_mask=None, position_ids=None)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return torch.cat(outs)


@torch.no_grad()
def gptq_model(m, bits, act_order, hdtype=torch.float32):
    n, seq = meta["calib_samples"], meta["calib_seqlen"]
    ids = calib.reshape(n, seq).to(dev)
    h = m.model.embed_tokens(ids)
    pos = torch.arange(seq, device=dev).unsqueeze(0).expand(n, -1)
    rope = m.model.rotary_emb(h, pos)
    for layer in m.model.layers:
        mods = dict(layer.named_modules())
        for names in SEQUENTIAL:
            cols = mods[names[0]].weight.shape[1]
            state = {"H": torch.zeros(cols, cols, device=dev, dtype=hdtype), "n": 0}

            def add_batch(_m, inp, _o, s=state):
                x = inp[0].reshape(-1, inp[0].shape[-1]).to(s["H"].dtype)
                k = inp[0].shape[0]
                s["H"] *= s["n"] / (s["n"] + k)
                s["n"] += k
                x = math.sqrt(2 / s["n"]) * x
                s["H"] += x.t().matmul(x)

            hook = mods[names[0]].register_forward_hook(add_batch)
            run_layer(layer, h, rope)
            hook.remove()
            for name in names:
                lin = mods[name]
                w = lin.weight.data
                lin.weight.data = gptq_weight(w.to(hdtype), state["H"], bits, act_order).to(w.dtype)
        h = run_layer(layer, h, rope)


def run(cell):
    m = load()
    if cell == "fp-bf16":
        return perplexity(m.to(torch.bfloat16))
    if cell.endswith("-bf16"):
        m.to(torch.bfloat16)
        gptq_model(m, int(cell[1]), cell[2] == "a")
        return perplexity(m.float())
    if cell.endswith("-f64"):
        gptq_model(m, int(cell[1]), cell[2] == "a", torch.float64)
        return perplexity(m)
    if cell.startswith("rtn"):
        for layer in m.model.layers:
            for mod in layer.modules():
                if isinstance(mod, torch.nn.Linear):
                    mod.weight.data = rtn_weight(mod.weight.data, int(cell[3:]))
    elif cell != "fp":
        gptq_model(m, int(cell[1]), cell.endswith("a"))
    return perplexity(m)


results = {"meta": meta}
for cell in cells:
    results[cell] = run(cell)
    print(json.dumps({"cell": cell, "ppl": results[cell], "draw": meta.get("calib_sha256", "")[:8]}), flush=True)
json.dump(results, open(f"{work}/gptq-reference.json", "w"), indent=1)
