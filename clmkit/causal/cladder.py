"""CLadder, answered by computation: read a story's graph, numbers and question; compute the estimand.

A CLadder prompt (Jin et al., *CLadder: Assessing Causal Reasoning in Language Models*, NeurIPS 2023)
is generated from one of ten small graph templates, a story that names the variables, and a query:

    <preamble> Husband has a direct effect on wife and alarm clock. Wife has a direct effect on
    alarm clock. For husbands that don't set the alarm, the probability of ringing alarm is 53%.
    For husbands that set the alarm, the probability of ringing alarm is 82%.
    Will alarm set by husband decrease the chance of ringing alarm?

The solver
1. reads the background ("A has a direct effect on B and C.", "A is unobserved.") into a DAG over
   the story's variable names and finds which templates it is isomorphic to (with role maps
   X, Y, V1, V2, V3);
2. reads the question into a query type and its polarity ("increase"/"decrease", ...);
3. reads the given information: each estimand needs a fixed list of terms (e.g. ATE under
   confounding needs P(Y | V1, X) and P(V1)); the generator states them in that order, every
   conditional enumerated over its parents' values (0, 0), (0, 1), (1, 0), (1, 1). The statement
   kinds and counts must match the template's list exactly, and the target noun phrases must be
   consistent (one noun per term, the question's outcome noun on the outcome's term); otherwise
   the row is *unparsed*;
4. computes the identified estimand (backdoor / front-door / IV / mediation formulas), and answers
   by its sign as the generator does (|estimate| < 0.005 counts as "no effect" -> "no").
Backdoor-set questions are answered with the backdoor criterion on the parsed graph
(d-separation via `clmkit.causal.dsep`); collider-bias questions by the absence of a directed
path; deterministic counterfactuals by abduction-action-prediction on the parsed boolean rules.

Anything the parser cannot read comes back as `Solution(answer=None, reason=...)`: never a guess.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from networkx.algorithms.isomorphism import DiGraphMatcher

PREAMBLE = (
    "Imagine a self-contained, hypothetical world with only the following conditions, "
    "and without any unmentioned factors or causal relationships: "
)

# The ten CLadder graph templates, in the roles the generator uses.
GRAPHS: dict[str, list[tuple[str, str]]] = {
    "chain": [("X", "V2"), ("V2", "Y")],
    "fork": [("X", "Y"), ("V2", "Y")],
    "collision": [("X", "V3"), ("Y", "V3")],
    "confounding": [("V1", "X"), ("V1", "Y"), ("X", "Y")],
    "mediation": [("X", "V2"), ("X", "Y"), ("V2", "Y")],
    "IV": [("V1", "X"), ("V2", "X"), ("V1", "Y"), ("X", "Y")],
    "arrowhead": [("X", "V3"), ("V2", "V3"), ("X", "Y"), ("V2", "Y"), ("V3", "Y")],
    "diamond": [("X", "V3"), ("X", "V2"), ("V2", "Y"), ("V3", "Y")],
    "diamondcut": [("V1", "V3"), ("V1", "X"), ("X", "Y"), ("V3", "Y")],
    "frontdoor": [("V1", "X"), ("X", "V3"), ("V1", "Y"), ("V3", "Y")],
}
LATENT_ROLE = {"arrowhead": "V2", "frontdoor": "V1", "IV": "V1"}  # the stories say "... is unobserved"

Term = tuple[str, tuple[str, ...]]  # ("Y", ("V1", "X")) is P(Y=1 | V1, X)
_SIMPLE = ("chain", "fork", "mediation", "arrowhead", "diamond")
_Y_X: list[Term] = [("Y", ("X",))]
_ADJUST_V1: list[Term] = [("Y", ("V1", "X")), ("V1", ())]
_FRONTDOOR: list[Term] = [("V3", ("X",)), ("Y", ("X", "V3")), ("X", ())]
_MEDIATION: list[Term] = [("Y", ("X", "V2")), ("V2", ("X",))]
_ARROWHEAD: list[Term] = [("Y", ("X", "V3")), ("V3", ("X", "V2")), ("V2", ())]

# The terms each (query, graph) estimand needs, in the order the generator states them.
TERMS: dict[str, dict[str, list[Term]]] = {
    "marginal": {g: [("X", ()), ("Y", ("X",))] for g in GRAPHS},
    "correlation": {g: [("X", ())] for g in GRAPHS},  # + two joint statements P(X=x, Y=1)
    "exp_away": {"collision": [("X", ()), ("Y", ("X", "V3"))]},
    "ate": {**{g: _Y_X for g in _SIMPLE}, "confounding": _ADJUST_V1, "diamondcut": _ADJUST_V1,
            "frontdoor": _FRONTDOOR, "IV": [("Y", ("V2",)), ("X", ("V2",))]},
    "ett": {**{g: _Y_X for g in _SIMPLE}, "confounding": _ADJUST_V1,
            "diamondcut": [("Y", ("X", "V3")), ("V3", ("X",))],
            "frontdoor": [("Y", ("X", "V3")), ("V3", ("X",))]},
    "nde": {"mediation": _MEDIATION, "arrowhead": _ARROWHEAD},
    "nie": {"chain": _Y_X, "diamond": _Y_X, "mediation": _MEDIATION, "frontdoor": _FRONTDOOR,
            "arrowhead": _ARROWHEAD},
}


@dataclass
class Solution:
    answer: str | None  # "yes" / "no"; None = unparsed (never a guess)
    query_type: str | None = None
    graph: str | None = None  # template name ("confounding/mediation" when several fit with one answer)
    estimate: float | None = None  # the computed quantity, when there is one
    reason: str = ""  # why unparsed, or how it was answered
    rounding_sensitive: bool = False  # the answer could flip within the rounding of the given numbers

    @property
    def parsed(self) -> bool:
        return self.answer is not None


class Unparsed(Exception):
    """The prompt does not read as a CLadder question this parser understands."""


# ---------------------------------------------------------------------------------------------
# Reading the text
# ---------------------------------------------------------------------------------------------


@dataclass
class Statement:
    kind: str  # "marginal" | "conditional" | "joint" | "correlation"
    target: str  # the noun phrase whose probability is given ("" for correlations)
    condition: str  # the "For ..." population, or the joint's first noun
    value: float


@dataclass
class Question:
    query_type: str
    polarity: bool  # True for more / larger / increase / positively / affects / Method 1
    x: str = ""  # treatment: a name (backadj, nde, nie) or a noun phrase
    y: str = ""  # outcome: a name or a noun phrase
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Story:
    graph: nx.DiGraph  # over lower-cased variable names
    latent: set[str]
    given: list[str]  # the sentences between the background and the question
    question: Question


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.?])\s+(?=\S)", text.strip()) if s.strip()]


_EFFECT = re.compile(r"^(.+?) has a direct effect on (.+)\.$")
_LATENT = re.compile(r"^(.+?) is unobserved\.$")


def _split_list(text: str) -> list[str]:
    return [p for p in re.split(r",\s*and\s+|,\s*|\s+and\s+", text) if p]


def parse_background(sentences: list[str]) -> tuple[nx.DiGraph, set[str], int]:
    """Edges and latent names from the leading background sentences; returns how many were read."""
    effects: list[tuple[str, str]] = []
    latent: set[str] = set()
    n = 0
    for s in sentences:
        if m := _EFFECT.match(s):
            effects.append((m.group(1).lower(), m.group(2).lower()))
        elif m := _LATENT.match(s):
            latent.add(m.group(1).lower())
        else:
            break
        n += 1
    if not effects:
        raise Unparsed("no 'has a direct effect on' sentences")
    subjects = {a for a, _ in effects}
    g = nx.DiGraph()
    for parent, children in effects:
        parts = _split_list(children)
        # a name may itself contain " and ": keep the whole list as one name unless the parts are names
        if len(parts) > 1 and sum(p not in subjects for p in parts) > 1:
            parts = [children]
        for child in parts:
            g.add_edge(parent, child)
    if not nx.is_directed_acyclic_graph(g):
        raise Unparsed("the background graph has a cycle")
    unknown = latent - set(g.nodes)
    if unknown:
        raise Unparsed(f"unobserved variable not in the graph: {sorted(unknown)}")
    return g, latent, n


_POL = {"more": True, "less": False, "larger": True, "smaller": False, "increase": True,
        "decrease": False, "positively": True, "negatively": False}

_QUESTIONS: list[tuple[str, re.Pattern]] = [
    ("marginal", re.compile(r"^Is (?P<y>.+) (?P<pol>more|less) likely than (?P<y0>.+) overall\?$")),
    ("correlation", re.compile(r"^Is the chance of (?P<y>.+) (?P<pol>larger|smaller) when observing (?P<x>.+)\?$")),
    ("ate", re.compile(r"^Will (?P<x>.+) (?P<pol>increase|decrease) the chance of (?P<y>.+)\?$")),
    ("ett", re.compile(r"^For (?P<pop>.+?), would it be (?P<pol>more|less) likely to see (?P<y>.+?) (?P<cf>if .+)\?$")),
    ("nde", re.compile(r"^If we disregard the mediation effect through (?P<med>.+), would (?P<x>.+) "
                       r"(?P<pol>positively|negatively) affect (?P<y>.+)\?$")),
    ("nie", re.compile(r"^Does (?P<x>.+) (?P<pol>positively|negatively) affect (?P<y>.+) through (?P<med>.+)\?$")),
    ("collider_bias", re.compile(r"^If we look at (?P<pop>.+?), does it mean that (?P<x>.+?) "
                                 r"(?P<pol>affects|does not affect) (?P<y>.+)\?$")),
    ("exp_away", re.compile(r"^If we look at (?P<pop>.+?), does the chance of (?P<y>.+) "
                            r"(?P<pol>increase|decrease) when (?P<x>.+)\?$")),
    ("backadj", re.compile(r"^To understand how (?P<x>.+) affects (?P<y>.+), is it more correct to use "
                           r"the Method (?P<first>[12]) than Method (?P<second>[12])\?$")),
    ("det-counterfactual", re.compile(r"^Would (?P<y>.+) if (?P<x>.+) instead of (?P<x0>.+)\?$")),
]


def parse_question(sentence: str) -> Question:
    for query_type, pattern in _QUESTIONS:
        m = pattern.match(sentence)
        if not m:
            continue
        d = m.groupdict()
        if query_type == "collider_bias":
            polarity = d["pol"] == "affects"
        elif query_type == "backadj":
            polarity = d["first"] == "1"
        elif query_type == "det-counterfactual":
            polarity = True
        else:
            polarity = _POL[d["pol"]]
        extra = {k: v for k, v in d.items() if k not in ("x", "y", "pol")}
        return Question(query_type, polarity, d.get("x", ""), d.get("y", ""), extra)
    raise Unparsed(f"unknown question form: {sentence!r}")


def parse_story(prompt: str) -> Story:
    text = prompt.strip()
    if text.startswith(PREAMBLE.strip()):
        text = text[len(PREAMBLE.strip()):]
    sentences = split_sentences(text)
    if len(sentences) < 2 or not sentences[-1].endswith("?"):
        raise Unparsed("no question sentence at the end")
    graph, latent, n = parse_background(sentences[:-1])
    return Story(graph, latent, sentences[n:-1], parse_question(sentences[-1]))


_PCT = r"(\d+(?:\.\d+)?)%"
_STATEMENTS: list[tuple[str, re.Pattern]] = [
    ("marginal", re.compile(rf"^The overall probability of (?P<t>.+) is {_PCT}\.$")),
    ("joint", re.compile(rf"^The probability of (?P<c>.+) is {_PCT}\.$")),
    ("correlation", re.compile(r"^For (?P<c>.+), the correlation between (?P<t>.+) is (-?\d+(?:\.\d+)?)\.$")),
    ("conditional", re.compile(rf"^For (?P<c>.+?), the probability of (?P<t>.+) is {_PCT}\.$")),
]


def parse_statement(sentence: str) -> Statement:
    for kind, pattern in _STATEMENTS:
        m = pattern.match(sentence)
        if m:
            number = float(m.groups()[-1])
            value = number if kind == "correlation" else number / 100.0
            d = m.groupdict()
            return Statement(kind, d.get("t", ""), d.get("c", ""), value)
    raise Unparsed(f"cannot read given information: {sentence!r}")


# ---------------------------------------------------------------------------------------------
# Which template, and which variable is which
# ---------------------------------------------------------------------------------------------


def role_maps(story: Story) -> list[tuple[str, dict[str, str]]]:
    """(template, role -> name) for every template isomorphic to the story's graph."""
    found = []
    for name, edges in GRAPHS.items():
        template = nx.DiGraph(edges)
        if template.number_of_nodes() != story.graph.number_of_nodes():
            continue
        for iso in DiGraphMatcher(template, story.graph).isomorphisms_iter():
            latent_role = LATENT_ROLE.get(name)
            if story.latent and (latent_role is None or {iso[latent_role]} != story.latent):
                continue
            found.append((name, dict(iso)))
    return found


def _p(p1: float, v: int) -> float:
    """P(V = v) from P(V = 1)."""
    return p1 if v else 1.0 - p1


Table = dict[str, Any]  # "Y|V1,X" -> nested lists of P(Y=1 | V1=v1, X=x), "V1" -> P(V1=1)


def _key(term: Term) -> str:
    target, parents = term
    return f"{target}|{','.join(parents)}" if parents else target


def estimate(query_type: str, graph: str, t: Table) -> float:
    """The estimand for (query, template) from the given-information table (the CLadder formulas)."""
    def simple() -> float:
        return t["Y|X"][1] - t["Y|X"][0]

    def adjust_v1() -> float:
        return sum(_p(t["V1"], v) * (t["Y|V1,X"][v][1] - t["Y|V1,X"][v][0]) for v in (0, 1))

    def frontdoor() -> float:
        return sum((_p(t["V3|X"][1], v) - _p(t["V3|X"][0], v))
                   * sum(t["Y|X,V3"][h][v] * _p(t["X"], h) for h in (0, 1))
                   for v in (0, 1))

    if query_type == "marginal":
        return t["X"] * t["Y|X"][1] + (1 - t["X"]) * t["Y|X"][0]
    if query_type == "correlation":
        return t["joint"][1] / t["X"] - t["joint"][0] / (1 - t["X"])
    if query_type == "exp_away":
        y = t["Y|X,V3"]
        return y[1][1] - (t["X"] * y[1][1] + (1 - t["X"]) * y[0][1])
    if query_type == "ate":
        if graph in _SIMPLE:
            return simple()
        if graph in ("confounding", "diamondcut"):
            return adjust_v1()
        if graph == "frontdoor":
            return frontdoor()
        if graph == "IV":
            return (t["Y|V2"][1] - t["Y|V2"][0]) / (t["X|V2"][1] - t["X|V2"][0])
    if query_type == "ett":
        if graph in _SIMPLE:
            return simple()
        if graph == "confounding":  # P(V1 | X=1) is not given; the generator's estimand uses P(V1)
            return adjust_v1()
        if graph == "diamondcut":
            return sum(_p(t["V3|X"][1], v) * (t["Y|X,V3"][1][v] - t["Y|X,V3"][0][v]) for v in (0, 1))
        if graph == "frontdoor":
            return sum(t["Y|X,V3"][1][v] * (_p(t["V3|X"][1], v) - _p(t["V3|X"][0], v)) for v in (0, 1))
    if query_type == "nde":
        if graph == "mediation":
            return sum(_p(t["V2|X"][0], v) * (t["Y|X,V2"][1][v] - t["Y|X,V2"][0][v]) for v in (0, 1))
        if graph == "arrowhead":
            return sum((t["Y|X,V3"][1][v] - t["Y|X,V3"][0][v]) * _p(t["V3|X,V2"][0][k], v) * _p(t["V2"], k)
                       for v in (0, 1) for k in (0, 1))
    if query_type == "nie":
        if graph in ("chain", "diamond"):
            return simple()
        if graph == "mediation":
            return sum(t["Y|X,V2"][0][v] * (_p(t["V2|X"][1], v) - _p(t["V2|X"][0], v)) for v in (0, 1))
        if graph == "frontdoor":
            return frontdoor()
        if graph == "arrowhead":
            return sum(t["Y|X,V3"][0][v] * (_p(t["V3|X,V2"][1][k], v) - _p(t["V3|X,V2"][0][k], v)) * _p(t["V2"], k)
                       for v in (0, 1) for k in (0, 1))
    raise Unparsed(f"no estimand for {query_type} on the {graph} graph")


def _expected_kinds(query_type: str, terms: list[Term]) -> list[str]:
    kinds = []
    for _, parents in terms:
        kinds += ["marginal"] if not parents else ["conditional"] * 2 ** len(parents)
    if query_type == "correlation":
        kinds += ["joint", "joint"]
    return kinds


def _nest(values: list[float], depth: int) -> Any:
    """[a, b, c, d] -> [[a, b], [c, d]] (values enumerated with the first parent slowest)."""
    if depth == 0:
        return values[0]
    half = len(values) // 2
    return [_nest(values[:half], depth - 1), _nest(values[half:], depth - 1)]


_NOUN_QUESTIONS = ("marginal", "correlation", "ate", "ett", "exp_away")  # the others name X and Y


def read_table(query_type: str, terms: list[Term], statements: list[Statement], question: Question) -> Table:
    """Assign the statements to the terms in order, checking kinds and noun consistency."""
    kinds = [s.kind for s in statements]
    if kinds != _expected_kinds(query_type, terms):
        raise Unparsed(f"given information {kinds} does not fit {[_key(t) for t in terms]}")
    table: Table = {}
    nouns: dict[str, str] = {}
    i = 0
    for term in terms:
        n = 2 ** len(term[1])
        group = statements[i:i + n]
        i += n
        if len({s.target for s in group}) != 1:
            raise Unparsed(f"term {_key(term)} is stated about different nouns")
        nouns[term[0]] = group[0].target
        table[_key(term)] = _nest([s.value for s in group], len(term[1]))
    if len(set(nouns.values())) != len(nouns):
        raise Unparsed("two terms share a target noun")
    if query_type == "correlation":
        joints = statements[i:]
        if not all(s.condition.endswith(" and " + question.y) for s in joints):
            raise Unparsed("joint statements do not end with the question's outcome")
        table["joint"] = [s.value for s in joints]
        nouns["Y"] = question.y
    if question.query_type in _NOUN_QUESTIONS and "Y" in nouns and nouns["Y"] != question.y:
        raise Unparsed(f"question outcome {question.y!r} is not the stated outcome {nouns['Y']!r}")
    if query_type in ("correlation", "exp_away") and nouns.get("X") != question.x:
        raise Unparsed(f"question treatment {question.x!r} is not the stated treatment {nouns.get('X')!r}")
    table["_nouns"] = nouns
    table["_statements"] = statements
    return table


# ---------------------------------------------------------------------------------------------
# Answering
# ---------------------------------------------------------------------------------------------

NO_EFFECT = 0.005  # the generator answers "no" when |estimand| is below this


def _by_sign(value: float, polarity: bool) -> str:
    if abs(value) < NO_EFFECT:
        return "no"
    return "yes" if (value > 0) == polarity else "no"


def _treated_value(question: Question, table: Table) -> int:
    """Which value of X the ATE/ETT question is about (CLadder v1.5 asks about X = 1)."""
    if question.query_type == "ate":
        x1 = table["_nouns"].get("X")
        if x1 is not None and question.x != x1:
            return 0
        return 1
    # ett: the population "For <X=x where-phrase>, ..." against the X-conditioned statements
    pop = question.extra["pop"]
    for s in table["_statements"]:
        if s.kind == "conditional" and s.condition == pop:
            pos = [t.condition for t in table["_statements"] if t.kind == "conditional" and t.target == s.target]
            if len(pos) == 2:
                return pos.index(pop)
    return 1


def _answer(q: Question, graph: str, terms: list[Term], statements: list[Statement]) -> tuple[str, float]:
    table = read_table(q.query_type, terms, statements, q)
    try:
        value = estimate(q.query_type, graph, table)
    except ZeroDivisionError:
        raise Unparsed("a stated probability of 0% leaves the estimand undefined (division by zero)") from None
    if q.query_type == "marginal":
        return ("yes" if (value > 0.5) == q.polarity and value != 0.5 else "no"), value
    if q.query_type in ("ate", "ett"):
        x = _treated_value(q, table)
        if q.query_type == "ett" and x != 1:
            raise Unparsed("ETT for the untreated is not supported")
        signed = value if x == 1 else -value
        # ETT asks whether Y would be more likely had X been the other value: the sign flips
        return _by_sign(-signed if q.query_type == "ett" else signed, q.polarity), value
    if q.query_type == "exp_away":
        return ("yes" if value != 0 and (value > 0) == q.polarity else "no"), value
    return _by_sign(value, q.polarity), value


ROUNDING = 0.005  # the given percentages are rounded to whole percents


def rounding_sensitive(q: Question, graph: str, terms: list[Term], statements: list[Statement]) -> bool:
    """Could the answer change if the stated numbers were anywhere within their rounding?"""
    answer, _ = _answer(q, graph, terms, statements)
    numbered = [i for i, s in enumerate(statements) if s.kind != "correlation"]
    corners = itertools.product((-ROUNDING, ROUNDING), repeat=len(numbered))
    if len(numbered) > 10:  # 2^n corners would be slow: a fixed sample of them is enough here
        import random

        rng = random.Random(0)
        corners = (tuple(rng.choice((-ROUNDING, ROUNDING)) for _ in numbered) for _ in range(1024))
    for deltas in corners:
        moved = list(statements)
        for i, d in zip(numbered, deltas):
            s = statements[i]
            moved[i] = Statement(s.kind, s.target, s.condition, min(1.0, max(0.0, s.value + d)))
        try:
            if _answer(q, graph, terms, moved)[0] != answer:
                return True
        except Unparsed:
            return True
    return False


def _solve_numeric(story: Story, statements: list[Statement]) -> Solution:
    q = story.question
    candidates: dict[str, tuple[str, float]] = {}
    failures = []
    for graph, roles in role_maps(story):
        if q.query_type in ("nde", "nie") and (roles["X"] != q.x.lower() or roles["Y"] != q.y.lower()):
            continue
        terms = TERMS[q.query_type].get(graph)
        if terms is None:
            continue
        try:
            candidates[graph] = _answer(q, graph, terms, statements)
        except Unparsed as e:
            failures.append(f"{graph}: {e}")
    if not candidates:
        raise Unparsed("no template fits: " + ("; ".join(failures) or "graph shape not a CLadder template"))
    if len({a for a, _ in candidates.values()}) > 1:
        raise Unparsed(f"templates disagree: {candidates}")
    graph, (answer, value) = next(iter(candidates.items()))
    fragile = rounding_sensitive(q, graph, TERMS[q.query_type][graph], statements)
    graph = "/".join(sorted(candidates))  # isomorphic templates with the same estimand: "confounding/mediation"
    reason = f"{q.query_type} on {graph}: {value:+.4f}"
    if fragile:
        reason += " (the answer can flip within the 1% rounding of the given numbers)"
    return Solution(answer, q.query_type, graph, value, reason, rounding_sensitive=fragile)


def _names_in(text: str, graph: nx.DiGraph) -> list[str]:
    """A verbalised list of variable names ("a, b and c") as graph nodes."""
    text = text.lower()
    if text in graph:
        return [text]
    parts = _split_list(text)
    if all(p in graph for p in parts):
        return parts
    raise Unparsed(f"unknown variable(s) in {text!r}")


_METHOD = re.compile(r"^Method ([12]): We look (?:directly )?at (?:how (?P<x>.+?) correlates with (?P<y>.+?)|this correlation)"
                     r"(?: in general| case by case according to (?P<set>.+))\.$")


def is_backdoor_set(g: nx.DiGraph, x: str, y: str, z: set[str]) -> bool:
    """Pearl's backdoor criterion: no descendant of x in z, and z blocks every path into x."""
    from clmkit.causal.dsep import is_d_separated

    if z & nx.descendants(g, x):
        return False
    cut = g.copy()
    cut.remove_edges_from(list(g.out_edges(x)))
    return is_d_separated(cut, x, y, tuple(sorted(z)))


def _solve_backadj(story: Story) -> Solution:
    q = story.question
    x, y = q.x.lower(), q.y.lower()
    for v in (x, y):
        if v not in story.graph:
            raise Unparsed(f"unknown variable {v!r}")
    methods: dict[str, set[str]] = {}
    for s in story.given:
        m = _METHOD.match(s)
        if not m:
            raise Unparsed(f"cannot read method: {s!r}")
        methods[m.group(1)] = set(_names_in(m.group("set"), story.graph)) if m.group("set") else set()
    if set(methods) != {"1", "2"}:
        raise Unparsed("expected Method 1 and Method 2")
    first, second = methods[q.extra["first"]], methods[q.extra["second"]]
    ok_first, ok_second = (is_backdoor_set(story.graph, x, y, z) for z in (first, second))
    if ok_first != ok_second:
        answer = "yes" if ok_first else "no"
    elif ok_first and len(first) != len(second):  # both valid: the simpler (smaller) set is preferred
        answer = "yes" if len(first) < len(second) else "no"
    else:
        raise Unparsed("both or neither adjustment sets are valid")
    return Solution(answer, "backadj", None, None,
                    f"backdoor({sorted(first)})={ok_first}, backdoor({sorted(second)})={ok_second}")


def _solve_collider_bias(story: Story) -> Solution:
    """"Among <collider = 1>, does X affect Y?" -- X and Y are the collider's parents with no directed
    path between them, so conditioning on the collider creates correlation, never an effect."""
    q = story.question
    g = story.graph
    if not story.given or parse_statement(story.given[0]).kind != "correlation":
        raise Unparsed("collider-bias question without a correlation statement")
    pairs = [(a, b) for c in g for a, b in itertools.combinations(sorted(g.predecessors(c)), 2)
             if not nx.has_path(g, a, b) and not nx.has_path(g, b, a)]
    if not pairs:
        raise Unparsed("no collider with two unconnected causes")
    answer = "no" if q.polarity else "yes"
    return Solution(answer, "collider_bias", "collision", 0.0, "the collider's causes do not affect each other")


def solve(prompt: str) -> Solution:
    """Answer one CLadder prompt exactly, or say why it cannot be read (answer=None)."""
    try:
        story = parse_story(prompt)
        q = story.question
        if q.query_type == "backadj":
            return _solve_backadj(story)
        if q.query_type == "det-counterfactual":
            from clmkit.causal.cladder_counterfactual import solve_counterfactual

            return solve_counterfactual(story)
        if q.query_type == "collider_bias":
            return _solve_collider_bias(story)
        statements = [parse_statement(s) for s in story.given]
        return _solve_numeric(story, statements)
    except Unparsed as e:
        qt = None
        try:
            qt = parse_question(split_sentences(prompt)[-1]).query_type
        except Unparsed:
            pass
        return Solution(None, qt, None, None, str(e))


def solve_for_engine(prompt: str):
    """`solve` as a `clmkit.causal.solve.Solution` (status "ok" / "unparsed"), for `clm causal solve`."""
    from clmkit.causal.solve import Solution as EngineSolution

    s = solve(prompt)
    if s.answer is None:
        return EngineSolution(None, "unparsed", s.reason)
    return EngineSolution(s.answer, "ok", s.reason)
