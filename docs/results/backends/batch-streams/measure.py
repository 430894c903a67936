"""One-off measurement behind LlamaBatch's design (docs/backends.md, "Batched decoding"): B rows of
~P-token real prompts decoded greedily for STEPS tokens, in one llama context with a unified KV cache
(every row's token attends over all rows' cells, masked) vs one KV stream per row (kv_unified=False),
against each row decoded alone. One thread; the two layouts alternate twice in one run.

    python docs/results/backends/batch-streams/measure.py 8 500 64 > docs/results/backends/batch-streams/result.json
"""
import ctypes
import json
import sys
import time

import llama_cpp as lib
import numpy as np

from clmkit.data import data_path
from clmkit.models import EMBEDDED

B, P, STEPS = (int(a) for a in sys.argv[1:4])
lib.llama_backend_init()
quiet = lib.llama_log_callback(lambda level, text, data: None)
lib.llama_log_set(quiet, ctypes.c_void_p(0))
model = lib.llama_model_load_from_file(str(EMBEDDED["smollm2-135m"].locate()).encode(), lib.llama_model_default_params())
vocab = lib.llama_model_get_vocab(model)
nv = lib.llama_vocab_n_tokens(vocab)


def tokenize(text: str) -> list[int]:
    buf = (lib.llama_token * 8192)()
    return list(buf[: lib.llama_tokenize(vocab, text.encode(), len(text.encode()), buf, 8192, True, True)])


questions = [json.loads(line)["turns"][0] for line in data_path("spec_bench", "question.jsonl").read_text().splitlines()]
prompts = [tokenize(" ".join(questions[i::B][:12]))[:P] for i in range(B)]  # real text, P tokens each
assert all(len(p) == P for p in prompts), [len(p) for p in prompts]
batch = lib.llama_batch_init(512, 0, 1)


def context(n_ctx: int, n_seq: int, unified: bool):
    cp = lib.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.kv_unified = n_ctx, 512, 512, n_seq, unified
    cp.n_threads = cp.n_threads_batch = 1
    cp.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    return lib.llama_init_from_model(model, cp)


def decode(ctx, tokens, positions, seqs, want) -> np.ndarray:
    for j, (t, p, s, w) in enumerate(zip(tokens, positions, seqs, want)):
        batch.token[j], batch.pos[j], batch.logits[j], batch.n_seq_id[j] = t, p, w, 1
        batch.seq_id[j][0] = s
    batch.n_tokens = len(tokens)
    rc = lib.llama_decode(ctx, batch)
    assert rc == 0, (rc, len(tokens))
    return np.ctypeslib.as_array(lib.llama_get_logits(ctx), shape=(sum(want), nv)).copy()


def run(ctx, rows: list[int], alone: bool = False) -> tuple[dict, float, float]:
    """Greedy STEPS tokens for `rows` in ctx (row r = sequence id r, or 0 alone); logits per row and step."""
    seq = {r: 0 if alone else r for r in rows}
    t0 = time.perf_counter()
    logits = {r: [decode(ctx, prompts[r], range(P), [seq[r]] * P, [False] * (P - 1) + [True])[0]] for r in rows}
    t1 = time.perf_counter()
    for k in range(STEPS - 1):
        out = decode(ctx, [int(logits[r][-1].argmax()) for r in rows], [P + k] * len(rows), [seq[r] for r in rows], [True] * len(rows))
        for r, row in zip(rows, out):
            logits[r].append(row)
    return logits, t1 - t0, time.perf_counter() - t1


alone = {}
for r in range(B):
    ctx = context(P + STEPS + 256, 1, True)
    alone[r] = run(ctx, [r], alone=True)[0][r]
    lib.llama_free(ctx)
result = {"B": B, "prompt_tokens": P, "steps": STEPS, "runs": []}
for unified in (True, False, True, False):
    ctx = context(B * (P + STEPS + 256) if unified else B * 1024, B, unified)
    logits, prefill_s, decode_s = run(ctx, list(range(B)))
    lib.llama_free(ctx)
    tokens = {r: [int(x.argmax()) for x in logits[r]] for r in range(B)}
    same = [tokens[r] == [int(x.argmax()) for x in alone[r]] for r in range(B)]
    first = [next((k for k in range(STEPS) if tokens[r][k] != int(alone[r][k].argmax())), STEPS) for r in range(B)]
    gap = max(float(np.abs(logits[r][k] - alone[r][k]).max()) for r in range(B) for k in range(first[r]))
    result["runs"].append({"kv": "unified" if unified else "stream per row", "prefill_s": round(prefill_s, 2),
                           "decode_s": round(decode_s, 2), "decode_tok_s": round(B * (STEPS - 1) / decode_s, 1),
                           "rows_identical_to_alone": sum(same), "max_abs_logit_diff_before_divergence": gap})
    print(result["runs"][-1], file=sys.stderr, flush=True)
print(json.dumps(result, indent=1))
