"""JRT-RNN: the masked linear attention equals its recurrence (a fixed-size state), the prefix mask
reads the whole prompt, JRT-Prompt repeats the context, the loss sees only the answers, the MQAR
layout (one-token keys and values, each value right after its key), follow-ups ask the other keys,
the short convolution is causal; smoke run."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clmkit.lab.corpora import default_tokenizer, kv_recall
from clmkit.lab.experiments import Context, run_experiment
from clmkit.lab.experiments._common import Size
from clmkit.lab.experiments.jrt_rnn import (PAIRS_TEST, Batches, LinearAttention, ShortConv, build, layout, recall_batch,
                                            single_token_keys, single_token_values)
from clmkit.lab.model import GPTConfig, attention_mask
from clmkit.lab.objectives import IGNORE


def test_causal_linear_attention_is_a_recurrence():
    torch.manual_seed(0)
    c = GPTConfig(vocab_size=10, n_embd=16, n_head=2, n_layer=1)
    attn = LinearAttention(c)
    x = torch.randn(1, 7, 16)
    out = attn(x, attention_mask("causal", 7))
    q = F.elu(attn.q(x).view(1, 7, 2, 8)) + 1
    k, v = attn.kv(x).view(1, 7, 2, 2, 8).unbind(2)
    k = F.elu(k) + 1
    S, z, ys = torch.zeros(2, 8, 8), torch.zeros(2, 8), []
    for t in range(7):  # the recurrent form: a d x d state per head, updated once per token
        S = S + k[0, t, :, :, None] * v[0, t, :, None, :]
        z = z + k[0, t]
        ys.append(torch.einsum("hd,hde->he", q[0, t], S) / (q[0, t] * z).sum(-1, keepdim=True))
    torch.testing.assert_close(out[0], attn.proj(torch.stack(ys).reshape(7, 16)), rtol=1e-4, atol=1e-5)


def test_prefix_mask_reads_the_whole_prompt():
    torch.manual_seed(0)
    attn = LinearAttention(GPTConfig(vocab_size=10, n_embd=16, n_head=2, n_layer=1))
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[0, 3] += 1.0  # change a later prompt token
    mask = attention_mask("prefix", 6, prefix_len=torch.tensor([4]))
    assert not torch.allclose(attn(x, mask)[0, 0], attn(y, mask)[0, 0])  # position 0 sees it (non-causal)
    causal = attention_mask("causal", 6)
    torch.testing.assert_close(attn(x, causal)[0, 0], attn(y, causal)[0, 0])


def test_jrt_prompt_layout_and_answer_only_loss():
    tok = default_tokenizer()
    item = kv_recall(1, 4, seed=3, keys=single_token_keys(tok), values=single_token_values(tok))[0]
    plain, p, _ = layout(tok, item, repeat=False)
    twice, q, _ = layout(tok, item, repeat=True)
    context = item["prompt"].split(" ? ")[0]
    assert tok.decode(twice[:q]).count(context) == 2 and plain[p:] == twice[q:] == tok.encode(" " + item["answer"])
    batch = recall_batch(tok, [item], "JRT-RNN")
    kept = (batch.targets[0] != IGNORE).nonzero().flatten().tolist()
    assert kept == [p - 1] and batch.prefix_len.tolist() == [p]
    item["more"] = [("ab", "7"), ("cd", "3")]  # training-only follow-up queries: a loss on their values only
    row, p2, answers = layout(tok, item, repeat=False)
    assert p2 == p and row[:p + 1] == plain and tok.decode(row[p + 1:]) == " ab 7 cd 3"
    batch = recall_batch(tok, [item], "JRT-RNN")
    kept = (batch.targets[0] != IGNORE).nonzero().flatten().tolist()
    assert kept == [a - 1 for a in answers] and [tok.decode([row[a]]) for a in answers[1:]] == [" 7", " 3"]


def test_keys_are_one_token_each_and_alike_in_context_and_question():
    tok = default_tokenizer()
    keys, values = single_token_keys(tok), single_token_values(tok)
    assert len(keys) >= max(PAIRS_TEST) and all(len(tok.encode(" " + k)) == 1 for k in keys + values)
    assert "9" not in values and not set(keys) & set(values)  # " 9" is two tokens in the lab BPE
    for seed in range(20):  # the queried key is sometimes the first one, which once lacked its space
        item = kv_recall(1, 8, seed=seed, keys=keys, values=values)[0]
        row, p, _ = layout(tok, item, repeat=False)
        key, = tok.encode(" " + item["query"])
        context = tok.encode(" " + item["prompt"].split(" ? ")[0])
        # MQAR layout: key then value, one token each, the value right after its key
        assert len(context) == 2 * 8 and context == [t for k, v in item["pairs"] for t in tok.encode(f" {k} {v}")]
        assert row[:p].count(key) == 2 and row[p - 1] == key  # once in the context, once as the question
        assert row[context.index(key) + 1] == row[p] == tok.encode(" " + item["answer"])[0]  # the answer is the key's value


def test_follow_ups_ask_the_other_keys_of_the_same_context():
    tok = default_tokenizer()
    batch = Batches(tok, "linear attn", 8)(0, torch.Generator().manual_seed(0))
    for ids, targets in zip(batch.input_ids.tolist(), batch.targets.tolist()):
        asked = [ids[i] for i, t in enumerate(targets) if t != IGNORE]  # the key right before each supervised value
        context = ids[:ids.index(tok.encode(" ?")[-1])]
        assert len(asked) == len(set(asked)) > 1 and set(asked) <= set(context[0::2])
        for i, t in enumerate(targets):
            if t != IGNORE:  # every target is the value that follows that key in the context
                assert context[context.index(ids[i]) + 1] == t


def test_short_conv_is_causal_and_wraps_every_mixer():
    torch.manual_seed(0)
    class PassThrough(torch.nn.Module):  # a token mixer that mixes nothing: the convolution alone
        def forward(self, x, mask, rope=None, memory=None):
            return x

    conv = ShortConv(PassThrough(), 8, 3)
    x = torch.randn(1, 6, 8)
    y = x.clone()
    y[0, 4] += 1.0
    a, b = conv(x, None), conv(y, None)
    torch.testing.assert_close(a[0, :4], b[0, :4])  # earlier positions never see a later token
    assert not torch.allclose(a[0, 5], b[0, 5])     # a position within the width does
    tok = default_tokenizer()
    size = Size(n_layer=2, n_head=2, n_embd=16, block_size=32)
    assert all(isinstance(b.attn, ShortConv) for b in build(tok, size, "JRT-RNN").blocks)
    assert all(isinstance(b.attn.mixer, LinearAttention) for b in build(tok, size, "JRT-RNN").blocks)
    assert not any(isinstance(b.attn, ShortConv) for b in build(tok, size, "softmax attn", conv=0).blocks)


def test_smoke_run(tmp_path):
    record = run_experiment("jrt-rnn", Context(scale=0.015, output=tmp_path, progress=False, tiny=True), command="test")
    for variant, curve in record["curves"].items():
        losses = curve["train_loss"]
        assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"{variant}: loss did not decrease"
    assert [r["variant"] for r in record["rows"]][3] == "JRT-RNN"
