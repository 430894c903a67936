"""One-off measurement behind LlamaBatch's design (docs/backends.md, "Batched decoding"): B rows of
~P-token real prompts decoded greedily for STEPS tokens, in one llama context with a unified KV cache
(every row's token attends over all rows' cells, masked) vs one KV stream per row (kv_unified=False),
against each row decoded alone. One thread; the two layouts alternate twice in one run. Contexts and
decodes are the backend's own (`LlamaCppBackend.new_context` / `decode`).

    python docs/results/backends/batch-streams/measure.py 8 500 64 > docs/results/backends/batch-streams/result.json
"""
import json
import sys
import time

from clmkit.backends.llamacpp import LlamaCppBackend
from clmkit.data import data_path
from clmkit.models import EMBEDDED

B, P, STEPS = (int(a) for a in sys.argv[1:4])
backend = LlamaCppBackend(EMBEDDED["smollm2-135m"].locate(), n_threads=1)
lib = backend.lib


def tokenize(text: str) -> list[int]:
    buf = (lib.llama_token * 8192)()
    return list(buf[: lib.llama_tokenize(backend.vocab, text.encode(), len(text.encode()), buf, 8192, True, True)])


questions = [json.loads(line)["turns"][0] for line in data_path("spec_bench", "question.jsonl").read_text().splitlines()]
prompts = [tokenize(" ".join(questions[i::B][:12]))[:P] for i in range(B)]  # real text, P tokens each
assert all(len(p) == P for p in prompts), [len(p) for p in prompts]


def run(ctx, rows: list[int], alone: bool = False) -> tuple[dict, float, float]:
    """Greedy STEPS tokens for `rows` in ctx (row r = sequence id r, or 0 alone); logits per row and step."""
    seq = {r: 0 if alone else r for r in rows}
    t0 = time.perf_counter()
    logits = {r: [backend.decode(prompts[r], range(P), [[seq[r]]] * P, [False] * (P - 1) + [True], ctx)[0]] for r in rows}
    t1 = time.perf_counter()
    for k in range(STEPS - 1):
        out = backend.decode([int(logits[r][-1].argmax()) for r in rows], [P + k] * len(rows), [[seq[r]] for r in rows],
                             [True] * len(rows), ctx)
        for r, row in zip(rows, out):
            logits[r].append(row)
    return logits, t1 - t0, time.perf_counter() - t1


alone = {}
for r in range(B):
    ctx = backend.new_context(P + STEPS + 256, 1, unified=True)
    alone[r] = run(ctx, [r], alone=True)[0][r]
    lib.llama_free(ctx)
result = {"B": B, "prompt_tokens": P, "steps": STEPS, "runs": []}
for unified in (True, False, True, False):
    ctx = backend.new_context(B * (P + STEPS + 256) if unified else B * 1024, B, unified)
    logits, prefill_s, decode_s = run(ctx, list(range(B)))
    lib.llama_free(ctx)
    tokens = {r: [int(x.argmax()) for x in logits[r]] for r in range(B)}
    same = [tokens[r] == [int(x.argmax()) for x in alone[r]] for r in range(B)]
    first = [next((k for k in range(STEPS) if tokens[r][k] != int(alone[r][k].argmax())), STEPS) for r in range(B)]
    gap = max(float((logits[r][k] - alone[r][k]).abs().max()) for r in range(B) for k in range(first[r]))
    result["runs"].append({"kv": "unified" if unified else "stream per row", "prefill_s": round(prefill_s, 2),
                           "decode_s": round(decode_s, 2), "decode_tok_s": round(B * (STEPS - 1) / decode_s, 1),
                           "rows_identical_to_alone": sum(same), "max_abs_logit_diff_before_divergence": gap})
    print(result["runs"][-1], file=sys.stderr, flush=True)
print(json.dumps(result, indent=1))
