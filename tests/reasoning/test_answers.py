"""Answer extraction: many phrasings, property tests, and grading."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clmkit.reasoning.answers import extract, extract_choice, extract_number, extract_yes_no, grade, rouge_l_recall
from clmkit.tasks.base import TaskItem


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"), ("no.", "no"), ("  YES, because the effect is positive.", "yes"),
    ("The answer is yes.", "yes"), ("Answer: **No**", "no"), ("\\boxed{yes}", "yes"),
    ("Therefore, the answer (yes or no) is: no", "no"), ("Final answer - No", "no"),
    ("Let me think. The effect is negative, so the answer is no.", "no"),
    ("I computed 0.3. Yes.", "yes"),
    ("maybe", None), ("", None), ("yes and no", None), ("It depends.", None),
])
def test_yes_no_phrasings(text, expected):
    assert extract_yes_no(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("B", 1), ("(B)", 1), ("A. purchase the ingredients.", 0), ("The answer is (A)", 0), ("answer: B.", 1),
    ("Option B", 1), ("I pick option b", 1), ("A cake is baked", None), ("x", None),
    ("getting ingredients ready.", 1),  # the text of exactly one choice
])
def test_letter_choices(text, expected):
    assert extract_choice(text, ["A", "B"], ["purchase the ingredients.", "getting ingredients ready."]) == expected


@pytest.mark.parametrize("text, expected", [
    ("Option 2", 1), ("2", 1), ("The answer is Option 3.", 2), ("Answer (Option 1 or Option 2 ?): Option 1", 0),
    ("we have 3 apples and 2 pears", None), ("Option 5", None),
])
def test_numbered_choices(text, expected):
    assert extract_choice(text, ["1", "2", "3", "4"], ["w", "x", "y", "z"]) == expected


@pytest.mark.parametrize("text, expected", [
    ("0.2390", 0.239), ("The answer is -0.05.", -0.05), ('{"ANSWER": "0.12"}', 0.12),
    ("ATE = 0.3 - 0.1 = 0.2", 0.2), ("none", None),
])
def test_numbers(text, expected):
    assert extract_number(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("1,000", 1000.0), ("The answer is 1,000.", 1000.0), ("She pays $12,345.50 in total", 12345.5),
    ("-1,500", -1500.0), ("1,234,567 grains", 1234567.0), ('{"ANSWER": "2,500"}', 2500.0),
    ("3 + 1,000 = 1,003", 1003.0), ("The answer is 1,000 and not 999.", 1000.0),
    # commas that are not thousands separators keep numbers apart: lists, odd groupings
    ("1, 2", 2.0), ("The answer is 1, then 2", 1.0), ("1,2,3", 3.0), ("10,20", 20.0),
    ("a list: 5, 10, 15", 15.0), ("1,000,00", 0.0), ("12345,678", 678.0),
])
def test_thousands_separators(text, expected):
    assert extract_number(text) == expected


@given(st.integers(min_value=1000, max_value=10**9))
def test_grouped_integer_round_trip(x):
    assert extract_number(f"So she has {x:,} dollars.") == x


filler = st.text(alphabet="abcdfghijklmpqrtuvwxz ,", max_size=40)  # no 'yes'/'no' can be spelled


@given(before=filler, answer=st.sampled_from(["yes", "no", "Yes", "NO"]), cue=st.sampled_from(
    ["The answer is {}.", "Answer: {}", "answer is **{}**", "So the final answer is {}", "\\boxed{{{}}}"]))
def test_cued_yes_no_is_found_after_any_reasoning(before, answer, cue):
    assert extract_yes_no(before + " " + cue.format(answer)) == answer.lower()


@given(before=filler, label=st.sampled_from(["A", "B", "C", "D"]), cue=st.sampled_from(
    ["The answer is ({}).", "Answer: {}", "the answer is Option {}", "Answer: ({})"]))
def test_cued_choice_is_found(before, label, cue):
    assert extract_choice(before + "\n" + cue.format(label), ["A", "B", "C", "D"]) == "ABCD".index(label)


@given(st.floats(min_value=-1, max_value=1, allow_nan=False).map(lambda x: round(x, 4)))
def test_number_round_trip(x):
    assert extract_number(f"The answer is {x:.4f}.") == pytest.approx(x)


@given(filler)
def test_unanswered_text_is_unparsed(text):
    assert extract_yes_no(text) is None


def test_extract_and_grade_by_item_format():
    yn = TaskItem("a", "q", "yes", ["yes", "no"], {"answer_format": "yes/no"})
    assert grade(yn, extract(yn, "Yes!")) == 1.0 and grade(yn, extract(yn, "hmm")) == 0.0
    mc = TaskItem("b", "q", 2, ["x", "y", "z"], {"answer_format": "choice", "choice_labels": ["1", "2", "3"]})
    assert extract(mc, "Option 3") == 2 and grade(mc, 2) == 1.0
    num = TaskItem("c", "q", "0.2390", None, {"answer_format": "number"})
    assert grade(num, extract(num, "about 0.23904")) == 1.0 and grade(num, 0.24) == 0.0
    text = TaskItem("d", "q", "Birth is the arising of the phenomena.", None, {"answer_format": "text"})
    assert 0.0 < grade(text, "birth is arising") < 1.0
    assert rouge_l_recall("a b c", "a b c") == 1.0 and rouge_l_recall("", "a") == 0.0
