"""CLadder's deterministic counterfactuals: boolean rules in words, abduction-action-prediction.

    We know that college degree or higher causes low skill level, and we know that high skill
    level causes low salary. [We observed ...] Would the employee has a high salary if high school
    degree or lower instead of college degree or higher?

The generator writes each non-root variable's rule as "<antecedents> causes <consequents>":
antecedents joined by one operator ("and" / "or") name the parents by their value-1 noun;
consequents name each child by the noun of the value the rule makes true (its value-0 noun, or
"not <value-1 noun>", when the rule is negated). Variables sharing one parent set share a clause.

The solver maps clauses to the background graph's parent sets, splits the noun lists, and assigns
phrases to variables under hard constraints (one value-1 noun per variable; the question's two
treatment nouns name X). Three links need the meaning of words: the outcome sentence in the
question ("the employee has a high salary") against the outcome noun in the rules ("low salary"),
each observation ("the person is a nonsmoker") against its root's noun ("smoker"), and, when the
strings differ, a consequent against the same variable's value-1 noun. `phrase_relation` decides
these conservatively (same words, explicit negation, or a listed antonym); when it cannot, every
reading is tried, and the row is unparsed unless all readings give the same answer.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import networkx as nx

from clmkit.causal.cladder import Solution, Story, Unparsed

# --------------------------------------------------------------------------------------------
# Words: does a sentence state a noun phrase, or its opposite?
# --------------------------------------------------------------------------------------------

_STOP = {
    "the", "a", "an", "is", "are", "was", "were", "be", "being", "been", "has", "have", "had", "does",
    "do", "did", "of", "to", "at", "in", "on", "by", "for", "with", "there", "it", "its", "s", "who",
    "that", "gets", "get", "got", "person", "patient", "individual", "employee", "student",
    "applicant", "infant", "child", "people", "someone",
}
_NEGATIONS = {"not", "no", "non", "never", "without", "absence", "lack"}  # "non-female" -> non, female
_LEMMAS = {"dead": "die", "death": "die", "dies": "die", "died": "die", "dying": "die",
           "alive": "live", "lives": "live", "born": "bear", "men": "man", "women": "woman",
           "feet": "foot", "teeth": "tooth", "children": "child", "goes": "go", "went": "go"}
_ANTONYMS = [
    ("high", "low"), ("increased", "reduced"), ("increase", "decrease"), ("increased", "decreased"),
    ("large", "small"), ("big", "small"), ("long", "short"), ("good", "bad"), ("good", "poor"),
    ("rich", "poor"), ("old", "young"), ("early", "late"), ("male", "female"), ("clean", "polluted"),
    ("clean", "dirty"), ("healthy", "sick"), ("wet", "dry"), ("dark", "bright"), ("hot", "cold"),
    ("strong", "weak"), ("fast", "slow"), ("thick", "thin"), ("happy", "sad"), ("many", "few"),
    ("more", "less"), ("win", "lose"), ("pass", "fail"), ("global", "local"), ("accepted", "rejected"),
    ("present", "absent"), ("positive", "negative"), ("heavy", "light"), ("alive", "dead"),
    ("survive", "die"), ("survival", "death"), ("admitted", "rejected"),
]
_COLOURS = {"black", "white", "blue", "brown", "green", "red", "blonde", "grey", "gray", "yellow"}
_OPPOSITE = {frozenset(p) for p in _ANTONYMS}  # stemmed below, once _stem exists


def _stem(word: str) -> str:
    """A light suffix stripper: goes/going -> go, lights/lighting -> light, fired -> fir(e)."""
    word = _LEMMAS.get(word, word)
    for suffix in ("ing", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) >= 4 and len(word) - len(suffix) >= 2 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


_OPPOSITE |= {frozenset((_stem(a), _stem(b))) for a, b in _ANTONYMS}


def _tokens(text: str) -> list[str]:
    text = text.lower().replace("n't", " not")
    return [t if t in _STOP or t in _NEGATIONS else _stem(t) for t in re.findall(r"[a-z]+", text)]


def _same_word(a: str, b: str) -> bool:
    if a == b:
        return True
    k = _common_prefix(a, b)
    return k >= 4 and k >= min(len(a), len(b)) - 3


def _common_prefix(a: str, b: str) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def _opposite_words(a: str, b: str) -> bool:
    return frozenset((a, b)) in _OPPOSITE or (a in _COLOURS and b in _COLOURS and a != b)


def _content(tokens: list[str], other: list[str]) -> tuple[list[str], int]:
    """Content words and the number of negations; "nonsmoker" counts as "not smoker" when the
    other phrase has "smoker" (likewise un-, in-, dis-)."""
    words, negations = [], 0
    for t in tokens:
        if t in _NEGATIONS:
            negations += 1
            continue
        if t in _STOP:
            continue
        for prefix in ("non", "un", "in", "dis"):
            rest = t[len(prefix):]
            if t.startswith(prefix) and len(rest) >= 3 and any(_same_word(rest, o) for o in other):
                negations += 1
                t = rest
                break
        words.append(t)
    return words, negations


def phrase_relation(sentence: str, noun: str, name: str = "") -> bool | None:
    """True: `sentence` states `noun`; False: it states the opposite; None: cannot tell.

    `name` is the variable's name ("gender" for the noun "male gender"): a category word, not a
    value, so its words are set aside when the noun keeps some other word ("the patient is male"
    states "male gender")."""
    s_tokens, n_tokens = _tokens(sentence), _tokens(noun)
    s_words, s_neg = _content(s_tokens, n_tokens)
    n_words, n_neg = _content(n_tokens, s_tokens)
    category = [t for t in _tokens(name) if t not in _STOP and t not in _NEGATIONS]
    value_words = [t for t in n_words if not any(_same_word(t, c) for c in category)]
    if value_words and value_words != n_words:
        n_words = value_words
        s_words = [t for t in s_words if not any(_same_word(t, c) for c in category)]
    if not n_words:
        return None
    unmatched = [t for t in n_words if not any(_same_word(t, s) for s in s_words)]
    same_polarity = (s_neg % 2) == (n_neg % 2)
    if not unmatched:
        return same_polarity
    if all(any(_opposite_words(t, s) for s in s_words) for t in unmatched):
        return not same_polarity
    return None


def _overlap(a: str, b: str) -> float:
    """Share of content words in common (0..1), for matching phrases to names."""
    wa = {t for t in _tokens(a) if t not in _STOP and t not in _NEGATIONS}
    wb = {t for t in _tokens(b) if t not in _STOP and t not in _NEGATIONS}
    if not wa or not wb:
        return 0.0
    hits = sum(any(_same_word(x, y) for y in wb) for x in wa)
    return hits / max(len(wa), len(wb))


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


@dataclass
class Clause:
    antecedents: str
    consequents: str


def read_clauses(sentences: list[str]) -> tuple[list[Clause], str | None]:
    """The rule clauses and the observation text ("We observed ...") from the given sentences."""
    if not sentences or not sentences[0].startswith("We know that "):
        raise Unparsed("counterfactual question without 'We know that' rules")
    observed = None
    clauses = []
    for i, s in enumerate(sentences):
        if s.startswith("We observed "):
            if i != len(sentences) - 1:
                raise Unparsed("text after the observations")
            observed = s[len("We observed "):].rstrip(".")
            continue
        text = s[len("We know that "):] if s.startswith("We know that ") else s
        for part in text.rstrip(".").split(", and we know that "):
            pieces = part.split(" causes ")
            if len(pieces) != 2:
                raise Unparsed(f"cannot read rule {part!r}")
            clauses.append(Clause(*pieces))
    return clauses, observed


def _splits(text: str, k: int, ops: tuple[str, ...]) -> list[tuple[str | None, list[str]]]:
    """Every way to cut `text` into k parts at k-1 of its " and "/" or " separators, one operator."""
    if k == 1:
        return [(None, [text])]
    found = []
    for op in ops:
        pieces = text.split(f" {op} ")
        n = len(pieces)
        for cuts in itertools.combinations(range(1, n), k - 1):
            bounds = (0, *cuts, n)
            found.append((op, [f" {op} ".join(pieces[a:b]) for a, b in zip(bounds, bounds[1:])]))
    return found


@dataclass
class Reading:
    """One consistent assignment of phrases to variables."""

    score: float
    value_noun: dict[str, str]  # variable -> its value-1 noun (as an antecedent)
    rule: dict[str, tuple[str | None, list[str], str]]  # variable -> (op, parents, consequent noun)


def _groups(g: nx.DiGraph) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(parents, children) for each parent set that has children, in topological order."""
    by_parents: dict[tuple[str, ...], list[str]] = {}
    for v in nx.topological_sort(g):
        parents = tuple(sorted(g.predecessors(v)))
        if parents:
            by_parents.setdefault(parents, []).append(v)
    return [(p, tuple(c)) for p, c in by_parents.items()]


def readings(g: nx.DiGraph, clauses: list[Clause], treatment_nouns: tuple[str, str]) -> list[Reading]:
    groups = _groups(g)
    if len(groups) != len(clauses):
        raise Unparsed(f"{len(clauses)} rules for {len(groups)} caused variable groups")
    options_per_clause = []
    for clause in clauses:
        options = []
        for parents, children in groups:
            for op, ants in _splits(clause.antecedents, len(parents), ("and", "or")):
                for _, cons in _splits(clause.consequents, len(children), ("and",)):
                    for p_order in itertools.permutations(parents):
                        for c_order in itertools.permutations(children):
                            options.append(((parents, children), op, dict(zip(p_order, ants)), dict(zip(c_order, cons))))
        options_per_clause.append(options)
    found = []
    for combo in itertools.product(*options_per_clause):
        if len({opt[0] for opt in combo}) != len(groups):
            continue  # each clause must describe a different group
        value_noun: dict[str, str] = {}
        ok = True
        for _, _, ants, _ in combo:
            for v, noun in ants.items():
                if value_noun.setdefault(v, noun) != noun:
                    ok = False
        if not ok or len(set(value_noun.values())) != len(value_noun):
            continue
        xs = [v for v, noun in value_noun.items() if noun in treatment_nouns]
        if len(xs) != 1:
            continue
        rule = {}
        score = 0.0
        for (parents, _), op, ants, cons in combo:
            effective = _spread_negation(list(cons.items()), value_noun)
            for child, noun in cons.items():
                rule[child] = (op, [v for v in parents], effective[child])
                a = value_noun.get(child)
                if a is not None:
                    score += 2.0 if noun in (a, f"not {a}") else (1.0 if phrase_relation(noun, a) is False else 0.0)
                score += _overlap(noun, child)
        score += sum(_overlap(noun, v) for v, noun in value_noun.items())
        found.append(Reading(score, value_noun, rule))
    if not found:
        raise Unparsed("no consistent reading of the rules")
    best = max(r.score for r in found)
    return [r for r in found if r.score >= best - 1e-9]


def _states_negation(noun: str, value_noun: str | None) -> bool:
    """Does a consequent state its variable's value 0 ("not zuph", "the private not shooting")?"""
    if noun.startswith("not "):
        return True
    if value_noun is not None:
        return noun != value_noun and phrase_relation(noun, value_noun) is False
    return any(t in _NEGATIONS for t in _tokens(noun))


def _spread_negation(consequents: list[tuple[str, str]], value_noun: dict[str, str]) -> dict[str, str]:
    """child -> the noun its rule makes true, reading "A causes not B and C" as "not B and not C".

    CLadder's generator writes one negated rule for a shared parent set as "not" (or the first
    child's value-0 noun) before the whole consequent list, and labels every child negated: the
    diamondcut rows "V1 causes not X and V3" are only consistent with V3 := not V1. (CounterBench
    writes each negation where it applies; its parser keeps the narrow reading.)"""
    (first, first_noun), rest = consequents[0], consequents[1:]
    if not rest or not _states_negation(first_noun, value_noun.get(first)):
        return dict(consequents)
    spread = {c: noun if _states_negation(noun, None) else f"not {noun}" for c, noun in rest}
    return {first: first_noun, **spread}


def _evaluate(g: nx.DiGraph, reading: Reading, x: str, action: int, roots: dict[str, int],
              y: str, y_same: bool) -> bool:
    values = dict(roots)
    values[x] = action
    for v in nx.topological_sort(g):
        if v in values:
            continue
        op, parents, noun = reading.rule[v]
        bits = [values[p] for p in parents]
        holds = bool(all(bits) if op in (None, "and") else any(bits))  # the consequent phrase is true
        if v == y:
            return holds == y_same
        a = reading.value_noun[v]
        values[v] = int(holds if noun == a else not holds)
    raise Unparsed("the outcome is not caused by anything")


def solve_counterfactual(story: Story) -> Solution:
    q = story.question
    g = story.graph
    clauses, observed = read_clauses(story.given)
    action_noun, other_noun = q.x, q.extra["x0"]
    sinks = [v for v in g if g.out_degree(v) == 0]
    if len(sinks) != 1:
        raise Unparsed("the rules do not end in one outcome")
    y = sinks[0]
    answers: dict[bool, list[str]] = {}
    unread: set[str] = set()
    for reading in readings(g, clauses, (action_noun, other_noun)):
        x = next(v for v, noun in reading.value_noun.items() if noun in (action_noun, other_noun))
        action = 1 if reading.value_noun[x] == action_noun else 0
        roots = [v for v in g if g.in_degree(v) == 0 and v != x]
        evidence, sentences = _read_evidence(observed, roots, reading)
        y_noun = reading.rule[y][2]
        relation = phrase_relation(q.y, y_noun, y)
        if relation is None:
            unread.add(f"outcome {q.y!r} vs {y_noun!r}")
        unknown = [v for v in roots if evidence[v] is None]
        unread.update(f"observation {sentences[v]!r} vs {reading.value_noun[v]!r}" for v in unknown)
        for y_same in [relation] if relation is not None else [True, False]:
            for bits in itertools.product((0, 1), repeat=len(unknown)):
                values = {v: (evidence[v] if evidence[v] is not None else bits[unknown.index(v)]) for v in roots}
                result = _evaluate(g, reading, x, action, values, y, y_same)
                answers.setdefault(result, []).append(
                    f"do({x}={action}), observed {values}, outcome phrase {'=' if y_same else '!='} {y_noun!r}")
    if len(answers) != 1:
        raise Unparsed("the answer depends on phrases that could not be read: " + "; ".join(sorted(unread)))
    result, how = next(iter(answers.items()))
    return Solution("yes" if result else "no", "det-counterfactual", None, float(result), how[0])


def _read_evidence(observed: str | None, roots: list[str], reading: Reading) -> tuple[dict[str, int | None], dict[str, str]]:
    """Each root's observed value (None when the sentence cannot be read) and its sentence."""
    if not roots:
        if observed:
            raise Unparsed("observations but no root variables to observe")
        return {}, {}
    if observed is None:
        raise Unparsed(f"no observations for {roots}")
    best: tuple[float, dict[str, str]] | None = None
    for _, parts in _splits(observed, len(roots), ("and",)):
        for order in itertools.permutations(roots):
            pairing = dict(zip(order, parts))
            score = sum(_overlap(pairing[v], reading.value_noun[v]) + _overlap(pairing[v], v) for v in roots)
            if best is None or score > best[0]:
                best = (score, pairing)
    if best is None:
        raise Unparsed(f"cannot split the observations into {len(roots)}")
    out: dict[str, int | None] = {}
    for v, sentence in best[1].items():
        relation = phrase_relation(sentence, reading.value_noun[v], v)
        out[v] = None if relation is None else int(relation)
    return out, best[1]
