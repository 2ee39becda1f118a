import pytest

from phiexport.evaluate.data import gsm8k_test
from phiexport.evaluate.gsm8k import Answers, final_answer, gold_answer, normalize_number, select_problems


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),
        ("#### 1,450,000", "1450000"),
        ("The answer is 42.", "42"),  # no marker: the last number
        ("First 3 apples, then 5 more, so 8 apples in all.", "8"),
        ("It costs $12.50 per hour, so $25.00 for two hours.", "25"),
        ("#### 7\nThat was easy: 1 + 2 = 3", "7"),  # the marked number wins over later ones
        ("The temperature drops to -4 degrees.", "-4"),
        ("Half of 1 is 0.50", "0.5"),
        ("I do not know.", None),
        ("<think>16 - 3 - 4 = 9, 9 * 2 = 18</think>\nShe makes $18.", "18"),
        ("<think>first 3, then</think> wait <think>again 4</think> The answer is 12", "12"),  # after the last close
        ("<think>16 - 3 - 4 = 9, then 9 * 2", None),  # ran out of tokens while thinking
    ],
)
def test_final_answer(reply, expected):
    assert final_answer(reply) == expected


def test_every_bundled_test_problem_has_a_gold_answer():
    problems = gsm8k_test(2000)
    assert len(problems) == 1319
    answers = [gold_answer(problem) for problem in problems]
    assert answers[0] == "18" and "1450000" in answers
    assert all(normalize_number(answer) == answer for answer in answers)


def test_a_problem_without_a_final_number_is_refused():
    with pytest.raises(ValueError, match="without a final number"):
        gold_answer({"question": "?", "answer": "no number here"})


def test_selection_is_the_file_order_or_a_seeded_draw():
    assert select_problems(3, None) == gsm8k_test(3)
    drawn = select_problems(5, seed=7)
    assert drawn == select_problems(5, seed=7) and drawn != select_problems(5, seed=8)
    assert drawn != gsm8k_test(5)


def test_accuracy_and_agreement_count_the_final_answers():
    package = Answers(["", "", "", ""], ["18", "3", None, "70"], seconds=1.0)
    reference = Answers(["", "", "", ""], ["18", "4", None, "7"], seconds=1.0)
    gold = ["18", "3", "5", "7"]
    assert package.accuracy(gold) == 0.5 and reference.accuracy(gold) == 0.5
    assert package.agreement(reference) == 0.5  # 18 = 18 and none = none
