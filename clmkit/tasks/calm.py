"""CaLM-Lite (Chen et al., *Causal Evaluation of Language Models*, 2024): 46 English tasks, 100 items each.

Files are JSON Lines under `calm/calm_lite_dataset/<ladder level>/<scenario>/<TASK>_EN.json`, each
row with a `gt_answer`. The rows hold raw fields, not prompts; `format_prompt` builds a plain
question per task family in the style of CaLM's "basic" prompts (the question, then the answer
format). Answer kinds:

    yes/no   "yes" / "no"                      (CLadder-style, ECI, PCD-B, AR, CA, CEI, AC, *-B natural)
    choice   0-based option index              (PCD-C, CR-C CRASS, BAS-C, FAS-C, IV-C)
    number   a probability / effect, as text    (*-P tasks; CaLM scores round(x, 4) equality)
    text     free text                          (CEG-O; CaLM scores ROUGE-L recall)

meta: task, level (causal_discovery / association / intervention / counterfactual), rung (0..3
on CaLM's causal ladder), scenario, mode (B/C/P/O: binary / choice / probability / open).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from clmkit.data import data_path
from clmkit.tasks.base import TaskItem

ROOT = ("calm", "calm_lite_dataset")
LEVELS = {"causal_discovery": 0, "association": 1, "intervention": 2, "counterfactual": 3}
YES_NO = "Answer (Yes or No ?):"


def _yes_no(value: Any) -> str:
    text = str(value).strip().lower()
    if text in ("1", "yes", "true"):
        return "yes"
    if text in ("0", "no", "false"):
        return "no"
    raise ValueError(f"not a yes/no answer: {value!r}")


def _options(texts: list[str]) -> str:
    return "\n".join(f"Option {i}: {t}" for i, t in enumerate(texts, 1) if t)


def _graph(edges: str) -> str:
    return f"You will be presented with a causal graph in the following form: {edges}."


# Each builder returns (prompt, answer, choices, answer_format).
Built = tuple[str, Any, list[str] | None, str]


def _cladder_style(row: dict) -> Built:
    return f"{row['given_info']}\n{row['question']}\n{YES_NO}", _yes_no(row["gt_answer"]), ["yes", "no"], "yes/no"


def _abstract_reasoning(row: dict) -> Built:
    q = f"Question: Does {row['former']} serve as an ancestor node of {row['latter']} (a direct or indirect cause)?"
    return f"{_graph(row['ar_edges'])}\n{q}\n{YES_NO}", _yes_no(row["gt_answer"]), ["yes", "no"], "yes/no"


def _attribution_ancestor(row: dict) -> Built:
    q = f"Question: Does {row['sampled_ancestor']} serve as an ancestor node of {row['attribution']}?"
    return f"{_graph(row['edges'])}\n{q}\n{YES_NO}", _yes_no(row["gt_answer"]), ["yes", "no"], "yes/no"


def _attribution_parent(row: dict) -> Built:
    q = f"Question: Does {row['sampled_parent']} serve as a parent node (direct cause) of {row['attribution']}?"
    return f"{_graph(row['edges'])}\n{q}\n{YES_NO}", _yes_no(row["gt_answer"]), ["yes", "no"], "yes/no"


def _event_causality(row: dict) -> Built:
    words = row["words"]
    e1, e2 = (" ".join(words[i] for i in span) for span in row["events"])
    prompt = (f"Input: {' '.join(words)}\nQuestion: is there a causal relationship between \"{e1}\" and \"{e2}\" ?\n"
              f"{YES_NO}")
    return prompt, _yes_no(row["gt_answer"]), ["yes", "no"], "yes/no"


def _pairwise_binary(row: dict) -> Built:
    prompt = (f"Input Event: Event A: {row['premise']} Event B: {row['hypothesis']}\n"
              f"Question: is there a causal relationship between Event A and Event B ?\n{YES_NO}")
    return prompt, _yes_no(row["gt_answer"]), ["yes", "no"], "yes/no"


def _pairwise_choice(row: dict) -> Built:
    choices = [row["hypothesis1"], row["hypothesis2"]]
    prompt = (f"Input Event: {row['premise']}\nQuestion: Please select the {row['ask-for']} of the input event "
              f"from the following options.\n{_options(choices)}\nAnswer (Option 1 or Option 2 ?):")
    return prompt, int(row["gt_answer"]), choices, "choice"


def _actual_causality(row: dict) -> Built:
    return f"{row['input']}\n{YES_NO}", _yes_no(row["gt_answer"]), ["yes", "no"], "yes/no"


def _explanation(row: dict) -> Built:
    prompt = (f"Cause: {row['cause']}\nEffect: {row['effect']}\nQuestion: why does the cause lead to the effect? "
              f"Answer with one short sentence.\nAnswer:")
    return prompt, row["gt_answer"], None, "text"


def _crass(row: dict) -> Built:
    choices = [row[f"Answer{i}"] for i in range(1, 5)]
    prompt = (f"Input Event: {row['premise']}\nCounterfactual Question: {row['QCC']}\n{_options(choices)}\n"
              f"Answer (Option 1 or 2 or 3 or 4 ?):")
    return prompt, int(row["gt_answer"]) - 1, choices, "choice"


def _natural(row: dict) -> Built:
    """The *-B / *-P tasks: a story graph, numbers and a question about one causal quantity."""
    bg = row["Background"]
    data = bg.get("data_info", "").strip()
    numeric = not isinstance(row["gt_answer"], str)
    tail = ("Provide the calculation result to four decimal places.\nAnswer:" if numeric else YES_NO)
    prompt = "\n".join(p for p in (row["given_info"], data, row["Instruction"], row["Question"], tail) if p)
    if numeric:
        return prompt, f"{float(row['gt_answer']):.4f}", None, "number"
    return prompt, _yes_no(row["gt_answer"]), ["yes", "no"], "yes/no"


_SET_QUESTIONS = {
    "BAS-C_max-BAS": "Which of the following sets of variables satisfies the back-door criterion relative to "
                     "the ordered pair ({t}, {o}) and is the maximal such set?",
    "BAS-C_min-BAS": "Which of the following sets of variables satisfies the back-door criterion relative to "
                     "the ordered pair ({t}, {o}) and is the minimal such set?",
    "BAS-C_mix-BAS": "Which of the following sets of variables satisfies the back-door criterion relative to "
                     "the ordered pair ({t}, {o})?",
    "FAS-C_FAS": "Which of the following sets of variables satisfies the front-door criterion relative to "
                 "the ordered pair ({t}, {o})?",
    "IV-C_CaLM-IV": "Which of the following variables is an instrumental variable for the effect of {t} on {o}?",
}


def _variable_sets(task: str) -> Callable[[dict], Built]:
    def build(row: dict) -> Built:
        choices = [row[f"option{i}"] for i in range(1, 4)]
        q = _SET_QUESTIONS[task].format(t=row["treatment"], o=row["outcome"])
        prompt = f"{_graph(row['edges'])}\nQuestion: {q}\n{_options(choices)}\nAnswer (Option 1 or 2 or 3 ?):"
        return prompt, int(row["gt_answer"]) - 1, choices, "choice"
    return build


def _identification(row: dict) -> Built:
    prompt = (f"{_graph(row['di_edges'])} There exist unobserved confounders between: {row['bi_edges']}.\n"
              f"Question: Is the causal effect of {row['treatment']} on {row['outcome']} identified or not?\n{YES_NO}")
    return prompt, _yes_no(row["gt_answer"]), ["yes", "no"], "yes/no"


def builder(task: str, row: dict) -> Callable[[dict], Built]:
    """The prompt builder for a task name (file stem without `_EN`) and one of its rows."""
    if "Background" in row:
        return _natural
    if "question" in row and "given_info" in row:
        return _cladder_style
    family = task.split("_", 1)[0]
    table: dict[str, Callable[[dict], Built]] = {
        "AR-B": _abstract_reasoning, "CA-B": _attribution_ancestor if task == "CA-B_FA" else _attribution_parent,
        "ECI-B": _event_causality, "PCD-B": _pairwise_binary, "PCD-C": _pairwise_choice,
        "AC-B": _actual_causality, "CEG-O": _explanation, "CR-C": _crass, "CEI-B": _identification,
    }
    if task in _SET_QUESTIONS:
        return _variable_sets(task)
    if family in table:
        return table[family]
    raise ValueError(f"no prompt format for CaLM task {task!r}")


def task_files(root: Path | None = None) -> dict[str, Path]:
    """Task name -> file, for every English CaLM-Lite task."""
    base = root or data_path(*ROOT)
    return {p.name.removesuffix("_EN.json"): p for p in sorted(base.glob("*/*/*_EN.json"))}


def load_task(task: str, path: Path | None = None) -> list[TaskItem]:
    path = path or task_files()[task]
    level, scenario = path.parent.parent.name, path.parent.name
    items = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            prompt, answer, choices, answer_format = builder(task, row)(row)
            items.append(TaskItem(
                id=f"calm-{task}-{row['index']}",
                prompt=prompt,
                answer=answer,
                choices=choices,
                meta={"task": task, "level": level, "rung": LEVELS.get(level), "scenario": scenario,
                      "mode": task.split("_", 1)[0].rsplit("-", 1)[-1], "answer_format": answer_format,
                      **({"choice_labels": [str(i) for i in range(1, len(choices) + 1)]}
                         if answer_format == "choice" else {})},
            ))
    return items


def load(tasks: list[str] | None = None) -> list[TaskItem]:
    """All 46 English CaLM-Lite tasks (or the named ones)."""
    files = task_files()
    unknown = [t for t in tasks or [] if t not in files]
    if unknown:
        raise ValueError(f"unknown CaLM task(s) {unknown}; known: {', '.join(files)}")
    return [item for task in (tasks or list(files)) for item in load_task(task, files[task])]
