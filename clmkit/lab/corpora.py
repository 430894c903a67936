"""Offline corpora for the lab: every one is on any machine that has Python, so a fresh clone runs
every experiment with no download and no `../shared/data`.

  reference  natural English prose: the Python Language Reference and library topics that CPython
             ships as plain text (`pydoc_data.topics`, ~465k characters, human-written). Chosen because
             it is installed everywhere the lab runs (no PyPI/Debian corpus package needs fetching and
             CI has no ../shared), versioned with the interpreter (reproducible), and real prose rather
             than generated text. Its register is technical; the docs say so beside every result.
  html       the same reference topics as small HTML documents (<h1>, <p>, <pre>): structured
             documents for CM3, built from the real text (the markup is ours).
  code       the Python standard library's own source (`sysconfig.get_paths()["stdlib"]`, tests excluded).
  synthetic  reversal facts, causal chains (`clmkit.tasks.axiomatic`), key–value recall, and
             identifier-role tags on stdlib code (a sequence-labelling task).

Documents are split into train / validation by a stable hash of their index (every 10th is held out).
"""

from __future__ import annotations

import functools
import html as html_lib
import io
import keyword
import random
import re
import sysconfig
import tokenize
from dataclasses import dataclass
from pathlib import Path

import torch

from clmkit.lab.tokenizer import LabTokenizer, lab_tokenizer

VAL_EVERY = 10


def reference_documents(chunk_chars: int = 3000) -> list[str]:
    """The reference topics, each cut at paragraph breaks into documents of about `chunk_chars`."""
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        chunk = ""
        for para in re.split(r"\n\s*\n", topics[name].strip()):
            if chunk and len(chunk) + len(para) > chunk_chars:
                docs.append(chunk)
                chunk = ""
            chunk = f"{chunk}\n\n{para}" if chunk else para
        if chunk:
            docs.append(chunk)
    return docs


def html_documents() -> list[str]:
    """Each reference document as a small HTML page: the first line is the heading, indented blocks
    (code in the reference) become <pre>, the rest <p>."""
    pages = []
    for doc in reference_documents():
        title, _, rest = doc.partition("\n")
        paras = re.split(r"\n\s*\n", rest)
        body = []
        for para in paras:
            if not para.strip():
                continue
            tag = "pre" if para.startswith("   ") else "p"
            text = html_lib.escape(para.strip() if tag == "p" else para)
            body.append(f"<{tag}>{' '.join(text.split()) if tag == 'p' else text}</{tag}>")
        pages.append(f"<html><body><h1>{html_lib.escape(title.strip())}</h1>\n" + "\n".join(body) + "\n</body></html>")
    return pages


def python_source_files(max_chars: int = 4_000_000, max_file_chars: int = 120_000) -> list[str]:
    """Stdlib .py files in sorted path order (tests, idlelib and site-packages left out), up to max_chars."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__", "ensurepip")
    files, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if any(part in skip for part in path.relative_to(root).parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip() or len(text) > max_file_chars:
            continue
        files.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return files


def split(docs: list, val: bool) -> list:
    return [d for i, d in enumerate(docs) if (i % VAL_EVERY == VAL_EVERY - 1) == val]


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> LabTokenizer:
    """The lab BPE (4096 tokens) over the prose, the HTML pages and ~1.5 MB of stdlib code."""
    code = python_source_files(max_chars=1_500_000)
    return lab_tokenizer(reference_documents() + html_documents()[:100] + code, vocab_size=4096)


@dataclass
class TokenStream:
    """A corpus as one token tensor (documents joined by <|endoftext|>), sampled as random windows."""

    ids: torch.Tensor  # (N,) int64

    @classmethod
    def from_docs(cls, tok: LabTokenizer, docs: list[str]) -> "TokenStream":
        ids = []
        for doc_ids in tok.encode_batch(docs):
            ids.extend(doc_ids)
            ids.append(tok.eos)
        return cls(torch.tensor(ids, dtype=torch.long))

    def windows(self, batch: int, length: int, g: torch.Generator) -> torch.Tensor:
        """(batch, length) windows starting at random offsets drawn from `g`."""
        if len(self.ids) <= length:
            raise ValueError(f"corpus of {len(self.ids)} tokens is shorter than a {length}-token window")
        starts = torch.randint(0, len(self.ids) - length, (batch,), generator=g)
        return torch.stack([self.ids[s:s + length] for s in starts.tolist()])


_STREAMS: dict = {}


def corpus_streams(name: str, tok: LabTokenizer, small: bool = False) -> tuple[TokenStream, TokenStream]:
    """(train, validation) streams of corpus `name` ("reference", "html", "code"), memoised per process.
    `small` (smoke tests): the first 300k characters of code only."""
    key = (name, id(tok), small)
    if key not in _STREAMS:
        code = lambda: python_source_files(max_chars=300_000 if small else 4_000_000)  # noqa: E731
        docs = {"reference": reference_documents, "html": html_documents, "code": code}[name]()
        _STREAMS[key] = (TokenStream.from_docs(tok, split(docs, False)), TokenStream.from_docs(tok, split(docs, True)))
    return _STREAMS[key]


# --- synthetic tasks -------------------------------------------------------------------------------

def reversal_facts(n: int, seed: int = 0) -> list[dict]:
    """n fictional parent facts {child, parent, forward: "C's parent is P.", backward: "P's child is C."}."""
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "za", "be", "do", "fu", "gi", "ha", "jo"]
    used: set[str] = set()

    def name():
        while True:
            s = "".join(rng.choice(syll) for _ in range(rng.randint(2, 3))).capitalize()
            if s not in used:
                used.add(s)
                return s

    facts = []
    for _ in range(n):
        child, parent = name(), name()
        facts.append({"child": child, "parent": parent,
                      "forward": f"{child}'s parent is {parent}.", "backward": f"{parent}'s child is {child}."})
    return facts


def causal_chain_texts(n: int, seed: int = 0, settings: tuple[str, ...] = ("chain",)) -> list[dict]:
    """Axiomatic-training demonstrations: {"text": premise + question + answer, "prompt", "answer", "setting"}."""
    from clmkit.tasks import axiomatic

    return [{"prompt": it.prompt, "answer": it.answer, "setting": it.meta["setting"], "text": f"{it.prompt} {it.answer}"}
            for it in axiomatic.generate(n, seed=seed, settings=settings)]


def kv_recall(n: int, n_pairs: int, seed: int = 0, keys: list[str] | None = None,
              values: list[str] | None = None) -> list[dict]:
    """Key–value recall (associative recall, MQAR layout): "k1 v1 k2 v2 ... ? kq" -> "vq", each value right
    after its key (as in Zoology's MQAR); keys unique per item, drawn from `keys` (default: every
    two-letter string), values from `values` (default: the digits). Items keep their `pairs` and
    `query` for follow-up questions."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    pool = keys or [a + b for a in letters for b in letters]
    values = values or [str(d) for d in range(10)]
    items = []
    for _ in range(n):
        pairs = [(k, rng.choice(values)) for k in rng.sample(pool, n_pairs)]
        key, value = pairs[rng.randrange(n_pairs)]
        context = " ".join(f"{k} {v}" for k, v in pairs)
        items.append({"prompt": f"{context} ? {key}", "answer": value, "pairs": pairs, "query": key})
    return items


# identifier roles: several need the right context ("call" needs the next "(", "store" the next "=")
TAGS = ("other", "keyword", "def", "call", "attribute", "store", "name", "number", "string", "comment", "op")


def python_token_roles(source: str) -> list[tuple[int, int, str]]:
    """(start_char, end_char, role) for every Python token of `source`; [] if it does not tokenize."""
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    try:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return []
    out = []
    for i, t in enumerate(toks):
        prev = toks[i - 1].string if i else ""
        nxt = toks[i + 1].string if i + 1 < len(toks) else ""
        if t.type == tokenize.NAME:
            role = ("keyword" if keyword.iskeyword(t.string) else "def" if prev in ("def", "class")
                    else "call" if nxt == "(" else "attribute" if prev == "." else "store" if nxt == "=" else "name")
        else:
            role = {tokenize.NUMBER: "number", tokenize.STRING: "string", tokenize.COMMENT: "comment",
                    tokenize.OP: "op"}.get(t.type, "other")
        start = line_starts[t.start[0] - 1] + t.start[1]
        end = line_starts[t.end[0] - 1] + t.end[1]
        out.append((start, end, role))
    return out


def tag_tokens(tok: LabTokenizer, source: str) -> tuple[list[int], list[int]]:
    """BPE ids of `source` and a tag id per BPE token: the role of the Python token holding its last
    character ("other" for whitespace)."""
    enc = tok.tok.encode(source)
    spans = python_token_roles(source)
    role_at = {}
    for start, end, role in spans:
        for c in range(start, end):
            role_at[c] = role
    tags = [TAGS.index(role_at.get(max(e - 1, s), "other")) for s, e in enc.offsets]
    return enc.ids, tags
