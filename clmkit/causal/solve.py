"""Exact solvers: read a formal benchmark item's text into the causal engine and compute the answer.

One function per benchmark: `solve_corr2cause(text)`, `solve_counterbench(question, given_info)`,
`solve_axiomatic(prompt)`. Each returns a `Solution`. A text the parser cannot read completely
comes back with status "unparsed" and no prediction — the solver never guesses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import networkx as nx

from clmkit.causal.counterfactual import (
    InconsistentEvidenceError,
    Literal,
    Mechanism,
    MultipleSolutionsError,
    SCM,
    TooLargeError,
    counterfactual,
)
from clmkit.causal.dsep import Independence, independence, marginally_dependent_pairs
from clmkit.causal.equivalence import UnfaithfulError, markov_equivalence_class
from clmkit.causal.graph import GraphError, dag_from_edges
from clmkit.causal.relations import holds, holds_in_every

YES, NO = "yes", "no"
MAX_CORR2CAUSE_VARIABLES = 7   # a complete graph on 7 variables already has 5,040 equivalent DAGs


@dataclass(frozen=True)
class Solution:
    prediction: str | None   # "yes" / "no"; None unless status == "ok"
    status: str              # "ok" | "unparsed" | "undetermined" | "inconsistent" | "too_large"
    detail: str = ""         # the reason when not "ok"; a one-line derivation when "ok"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class ParseError(ValueError):
    """The text is not in the benchmark's language; becomes status "unparsed"."""


def _names(text: str) -> list[str]:
    """'A, B and C' -> ['A', 'B', 'C']."""
    parts = [p.strip() for p in re.split(r",\s*|\s+and\s+", text.strip())]
    if not parts or not all(re.fullmatch(r"\w+", p) for p in parts):
        raise ParseError(f"cannot read the variable list {text!r}")
    return parts


# ============================================================================ Corr2Cause

@dataclass(frozen=True)
class Corr2CauseProblem:
    variables: tuple[str, ...]
    correlations: frozenset[tuple[str, str]]   # (x, y) with x < y: "x correlates with y"
    independencies: frozenset[Independence]
    relation: str                              # one of clmkit.causal.relations.RELATIONS
    x: str
    y: str


_C2C_PREMISE = re.compile(
    r"^\s*Premise:\s*Suppose there is a closed system of (\d+) variables?, (.+?)\. "
    r"All the statistical relations among these \1 variables? are as follows:(.*)$",
    re.S,
)
_C2C_STATEMENTS = [
    (re.compile(r"^(\w+) correlates with (\w+)$"), "corr"),
    (re.compile(r"^(\w+) is independent of (\w+)$"), "indep"),
    (re.compile(r"^(\w+) and (\w+) are independent given (.+)$"), "cond"),
]
# (pattern, the relation the sentence asserts about its captured names (x, y))
_C2C_HYPOTHESES = [
    (re.compile(r"^(\w+) directly (?:causes|affects) (\w+)\.?$"), "parent"),
    (re.compile(r"^(\w+) causes something else which causes (\w+)\.?$"), "non-parent ancestor"),
    (re.compile(r"^(\w+) is a cause for (\w+), but not a direct one\.?$"), "non-parent ancestor"),
    (re.compile(r"^(\w+) influences (\w+) through some mediator\(s\)\.?$"), "non-parent ancestor"),
    (re.compile(r"^There exists at least one collider \(i\.e\., common effect\) of (\w+) and (\w+)\.?$"), "has_collider"),
    (re.compile(r"^(\w+) and (\w+) together cause some other variable\(s\)\.?$"), "has_collider"),
    (re.compile(r"^There exists at least one confounder \(i\.e\., common cause\) of (\w+) and (\w+)\.?$"), "has_confounder"),
    (re.compile(r"^Some variable\(s\) cause\(s\) both (\w+) and (\w+)\.?$"), "has_confounder"),
]


def parse_corr2cause(text: str) -> Corr2CauseProblem:
    """Parse "Premise: ... \\nHypothesis: ..." (the `input` column of the Corr2Cause CSV)."""
    premise, sep, hypothesis = text.partition("Hypothesis:")
    if not sep:
        raise ParseError("no 'Hypothesis:' in the text")
    m = _C2C_PREMISE.match(premise)
    if not m:
        raise ParseError("the premise does not start 'Premise: Suppose there is a closed system of N variables, ...'")
    count, variable_text, body = int(m.group(1)), m.group(2), m.group(3)
    variables = tuple(_names(variable_text))
    if len(variables) != count or len(set(variables)) != count:
        raise ParseError(f"the premise announces {count} variables but lists {variable_text!r}")
    known = set(variables)

    def check(*names: str) -> None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ParseError(f"unknown variable(s) {', '.join(unknown)} (the system has {', '.join(variables)})")

    correlations: set[tuple[str, str]] = set()
    independencies: set[Independence] = set()
    for sentence in re.split(r"(?<=\.)\s+", body.strip()):
        sentence = sentence.strip().removeprefix("However,").strip().rstrip(".")
        if not sentence:
            continue
        for pattern, kind in _C2C_STATEMENTS:
            s = pattern.match(sentence)
            if s:
                break
        else:
            raise ParseError(f"cannot read the statement {sentence!r}")
        a, b = s.group(1), s.group(2)
        given = _names(s.group(3)) if kind == "cond" else []
        check(a, b, *given)
        if a == b or a in given or b in given:
            raise ParseError(f"malformed statement {sentence!r}")
        if kind == "corr":
            correlations.add(tuple(sorted((a, b))))
        else:
            independencies.add(independence(a, b, given))

    hypothesis = hypothesis.strip()
    for pattern, relation in _C2C_HYPOTHESES:
        h = pattern.match(hypothesis)
        if h:
            x, y = h.group(1), h.group(2)
            check(x, y)
            if x == y:
                raise ParseError(f"the hypothesis relates {x} to itself")
            return Corr2CauseProblem(variables, frozenset(correlations), frozenset(independencies), relation, x, y)
    raise ParseError(f"cannot read the hypothesis {hypothesis!r}")


@lru_cache(maxsize=4096)
def _equivalence_class(variables: tuple[str, ...], independencies: frozenset[Independence]) -> tuple[nx.DiGraph, ...]:
    return tuple(markov_equivalence_class(variables, independencies))


def solve_corr2cause(text: str) -> Solution:
    try:
        problem = parse_corr2cause(text)
    except ParseError as e:
        return Solution(None, "unparsed", str(e))
    if len(problem.variables) > MAX_CORR2CAUSE_VARIABLES:
        return Solution(None, "too_large", f"{len(problem.variables)} variables: the exact solver enumerates "
                                           f"equivalence classes of at most {MAX_CORR2CAUSE_VARIABLES}")
    # "All the statistical relations ... are as follows": the list is closed, so a pair is
    # correlated exactly when no unconditional independence is stated for it.
    implied_correlations = marginally_dependent_pairs(problem.variables, problem.independencies)
    if implied_correlations != problem.correlations:
        odd = sorted(implied_correlations ^ problem.correlations)[0]
        return Solution(None, "inconsistent", f"{odd[0]} and {odd[1]} are both or neither stated correlated and independent")
    try:
        dags = _equivalence_class(problem.variables, problem.independencies)
    except UnfaithfulError as e:
        return Solution(None, "inconsistent", str(e))
    entailed = holds_in_every(problem.relation, dags, problem.x, problem.y)
    members = sum(holds(problem.relation, g, problem.x, problem.y) for g in dags)
    return Solution(YES if entailed else NO, "ok",
                    f"{problem.relation}({problem.x}, {problem.y}) holds in {members} of {len(dags)} DAGs of the class")


# ============================================================================ CounterBench

@dataclass(frozen=True)
class CounterBenchProblem:
    scm: SCM
    evidence: dict[str, bool]       # the factual world: "if not X instead of X" says X happened
    interventions: dict[str, bool]  # the hypothetical world: supposition(s) plus standing observations
    query: str


_CB_QUESTIONS = [
    # "Would Y occur if not X instead of X?": factually X, counterfactually not X.
    (re.compile(r"^Would (\w+) occur if (not )?(\w+) instead of (not )?(\w+)\?$"), "basic"),
    # "Would Y occur if not A and not B?": a joint intervention.
    (re.compile(r"^Would (\w+) occur if ((?:not )?\w+(?: and (?:not )?\w+)+)\?$"), "joint"),
    # "Assume not A, and based on this assumption, further suppose not B. Would Y occur?"
    (re.compile(r"^Assume ((?:not )?\w+), and based on this assumption, further suppose ((?:not )?\w+)\. Would (\w+) occur\?$"), "nested"),
]
_VERB = re.compile(r"\b(?:causes|cause)\b")


def _literal(text: str) -> Literal:
    m = re.fullmatch(r"(not\s+)?(\w+)", text.strip())
    if not m or m.group(2) in ("not", "and", "or", "together"):
        raise ParseError(f"cannot read {text.strip()!r} as a variable or 'not <variable>'")
    return Literal(m.group(2), negated=bool(m.group(1)))


def _literal_list(text: str) -> list[Literal]:
    """'not B and C' / 'B' / 'B and not C' -> literals."""
    return [_literal(part) for part in re.split(r"\s+and\s+", text.strip())]


def _mechanisms(cause_text: str, effect_texts: list[str]) -> list[Mechanism]:
    """'A and not B together' + ['C', 'not D'] -> C := A and not B; D := not (A and not B)."""
    cause_text = re.sub(r"\s+together$", "", cause_text.strip())
    has_and, has_or = re.search(r"\sand\s", cause_text), re.search(r"\sor\s", cause_text)
    if has_and and has_or:
        raise ParseError(f"cannot read {cause_text!r}: mixes 'and' with 'or'")
    gate = "or" if has_or else "and"
    inputs = tuple(_literal(part) for part in re.split(r"\s+(?:and|or)\s+", cause_text))
    effects = [literal for text in effect_texts for literal in _literal_list(text)]
    return [Mechanism(e.name, inputs, gate, negated=e.negated) for e in effects]


def parse_counterbench_rules(given_info: str) -> tuple[SCM, dict[str, bool]]:
    """'We know that ... . We observed ...' -> (the SCM, the observations).

    Raises ParseError for text outside the rule language and GraphError for two rules for one
    variable. Cyclic rules are a model too: `counterfactual` solves them as a system.
    """
    text = " ".join(given_info.split())
    rules_text, _, observed_text = text.partition("We observed")
    rules_text = rules_text.strip()
    if not rules_text.startswith("We know that "):
        raise ParseError("the given information does not start with 'We know that'")
    rules_text = rules_text.removeprefix("We know that ").strip().rstrip(".").strip()

    # Clauses are comma-separated; a chunk without a verb continues the previous clause's effect
    # list ("A causes B, C, and D" / "A causes B, C and D").
    clauses: list[tuple[str, list[str]]] = []
    for chunk in re.split(r"\s*,\s*", rules_text):
        chunk = re.sub(r"^and\s+", "", chunk.strip())
        if not chunk:
            raise ParseError(f"empty clause in {rules_text!r}")
        parts = _VERB.split(chunk)
        if len(parts) == 1:
            if not clauses:
                raise ParseError(f"the rules start with {chunk!r}, which has no 'causes'")
            clauses[-1][1].append(chunk)
        elif len(parts) == 2 and parts[0].strip() and parts[1].strip():
            clauses.append((parts[0], [parts[1]]))
        else:
            raise ParseError(f"cannot read the rule {chunk!r}")
    mechanisms = [m for cause, effects in clauses for m in _mechanisms(cause, effects)]

    evidence: dict[str, bool] = {}
    observed_text = observed_text.strip().rstrip(".").strip()
    if observed_text:
        for literal in _literal_list(observed_text):
            evidence[literal.name] = not literal.negated
    return SCM(mechanisms), evidence  # GraphError (two mechanisms for one variable) propagates


def parse_counterbench(question: str, given_info: str) -> CounterBenchProblem:
    """The question and the given information of one CounterBench row.

    "We observed X" is a standing condition of the situation asked about, not a clue about the
    factual world: in most conditional rows the observed value contradicts what the factual cause
    would produce (X is a deterministic effect of it), so abduction would find no world at all.
    The observation is therefore held in the hypothetical world, i.e. do(X) there — which equals
    ordinary abduction whenever X is a root cause. docs/causal.md has the measurements.

    The situation is a closed world: a supposition or observation naming a variable no rule
    mentions adds it as an isolated root cause (it affects nothing). An outcome no rule mentions
    is outside the text's language (ParseError).
    """
    scm, observed = parse_counterbench_rules(given_info)
    question = " ".join(question.split())
    for pattern, kind in _CB_QUESTIONS:
        m = pattern.match(question)
        if not m:
            continue
        evidence: dict[str, bool] = {}
        if kind == "basic":
            query, cf_not, cf_name, fact_not, fact_name = m.groups()
            if cf_name != fact_name or bool(cf_not) == bool(fact_not):
                raise ParseError(f"{question!r} must contrast X with not X")
            evidence = {fact_name: not fact_not}
            supposed = {cf_name: not cf_not}
        elif kind == "joint":
            query, supposition = m.groups()
            supposed = {lit.name: not lit.negated for lit in _literal_list(supposition)}
        else:
            first, second, query = m.groups()
            # Deterministic model, fixed background: supposing B inside the world where A was
            # supposed is the joint intervention do(A, B); B's supposition overrides A's effect on B.
            supposed = {lit.name: not lit.negated for lit in (_literal(first), _literal(second))}
        if query not in scm.graph and query not in supposed:
            raise ParseError(f"the question asks about {query}, which the rules never mention")
        isolated = [v for v in [*observed, *supposed, *evidence] if v not in scm.graph]
        if isolated:
            scm = SCM(scm.mechanisms.values(), variables=[*scm.graph, *isolated])
        return CounterBenchProblem(scm, evidence, {**observed, **supposed}, query)
    raise ParseError(f"cannot read the question {question!r}")


def solve_counterbench(question: str, given_info: str) -> Solution:
    try:
        problem = parse_counterbench(question, given_info)
    except ParseError as e:
        return Solution(None, "unparsed", str(e))
    except GraphError as e:
        return Solution(None, "inconsistent", str(e))
    try:
        value = counterfactual(problem.scm, problem.evidence, problem.interventions, problem.query)
    except InconsistentEvidenceError as e:  # also NoSolutionError: cyclic rules no world satisfies
        return Solution(None, "inconsistent", str(e))
    except MultipleSolutionsError as e:
        return Solution(None, "undetermined", str(e))
    except TooLargeError as e:
        return Solution(None, "too_large", str(e))
    setting = ", ".join(f"{v}={'yes' if b else 'no'}" for v, b in problem.interventions.items())
    if value is None:
        return Solution(None, "undetermined", f"{problem.query} under do({setting}) depends on unobserved root causes")
    return Solution(YES if value else NO, "ok", f"{problem.query}={'yes' if value else 'no'} under do({setting})")


# ============================================================================ Axiomatic training

_AX_EDGE = re.compile(r"^(\S+) causes (\S+)$")
_AX_QUESTION = re.compile(r"^Does (\S+) cause (\S+)\?$")


def solve_axiomatic(prompt: str) -> Solution:
    """'A causes B. B causes C. Does A cause C?' -> yes iff a directed path A ~> C (transitivity)."""
    text = " ".join(prompt.split())
    premise, sep, question = text.rpartition(". Does ")
    if not sep:
        return Solution(None, "unparsed", "no 'Does X cause Y?' question at the end")
    q = _AX_QUESTION.match("Does " + question)
    if not q:
        return Solution(None, "unparsed", f"cannot read the question 'Does {question}'")
    edges = []
    for sentence in (premise + ".").split(". "):
        m = _AX_EDGE.match(sentence.strip().rstrip("."))
        if not m:
            return Solution(None, "unparsed", f"cannot read the statement {sentence.strip()!r}")
        edges.append(m.groups())
    try:
        g = dag_from_edges(edges)
    except GraphError as e:
        return Solution(None, "inconsistent", str(e))
    x, y = q.groups()
    if x not in g or y not in g:
        return Solution(None, "unparsed", f"the question names a variable the premise never mentions ({x if x not in g else y})")
    causes = x != y and nx.has_path(g, x, y)
    return Solution(YES if causes else NO, "ok", f"{'a' if causes else 'no'} directed path {x} ~> {y}")
