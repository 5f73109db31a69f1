"""The embedded task: a fixed, disjoint split, and worked answers whose arithmetic is right."""

import random
from fractions import Fraction

from rgra_lightning.arithmetic.problems import enumerate_problems, split_problems, worked_answer


def boxed(text: str) -> str:
    return text[text.rindex("\\boxed{") + len("\\boxed{") : -1]


def test_split_is_fixed_disjoint_and_complete():
    splits = split_problems(val_size=128, seed=0)
    assert len(splits["val"]) == 128 and len(splits["val"]) + len(splits["train"]) == 1287
    assert not {p.question for p in splits["val"]} & {p.question for p in splits["train"]}
    assert split_problems(val_size=128, seed=0) == splits
    assert split_problems(val_size=128, seed=1)["val"] != splits["val"]


def test_answers_steps_and_slips_are_consistent():
    for problem in enumerate_problems():
        answer = Fraction(problem.answer)
        assert Fraction(problem.equivalent_answer) == answer
        assert Fraction(problem.steps.rsplit("=", 1)[1]) == answer  # the worked step ends in the result
        if "/" in problem.question:
            assert Fraction(problem.slip) == answer / 2  # denominators added too
        else:
            assert Fraction(problem.slip) == -answer  # the sign flipped


def test_examples_include_unreduced_fractions_and_negative_answers():
    problems = enumerate_problems()
    assert any(p.equivalent_answer != p.answer for p in problems)  # e.g. 6/8 for 3/4
    assert any(p.answer.startswith("-") for p in problems)


def test_worked_answer_styles_follow_their_probabilities():
    problem = next(p for p in enumerate_problems() if p.question == "6*(-2)")
    rng = random.Random(0)
    answers = [worked_answer(problem, rng, steps_probability=0.3, slip_probability=0.7) for _ in range(4000)]
    careful = [a for a in answers if not a.startswith("\\boxed")]
    hasty = [a for a in answers if a.startswith("\\boxed")]
    assert abs(len(careful) / 4000 - 0.3) < 0.03
    assert all(a == "-(6*2)=-12 \\boxed{-12}" for a in careful)
    slipped = sum(boxed(a) == "12" for a in hasty) / len(hasty)
    assert abs(slipped - 0.7) < 0.03
