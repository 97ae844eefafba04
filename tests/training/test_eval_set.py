"""The hand-written evaluation set (tests/data/eval_questions.jsonl): its size, that every reference answer scores
itself and a wrong answer does not, and that no question is a generator's row."""

from __future__ import annotations

from training.demo.answers import check_answer
from training.demo.eval_set import read_questions, stderr


def test_the_set_has_the_promised_size_and_scores_its_own_answers():
    rows = read_questions()
    counts = {d: sum(r["domain"] == d for r in rows) for d in ("math", "medical", "reasoning")}
    assert counts["math"] >= 40 and counts["medical"] >= 30 and counts["reasoning"] >= 20, counts
    assert len({r["prompt"] for r in rows}) == len(rows)  # no question twice
    for r in rows:
        assert check_answer(r["domain"], f"Steps...\nAnswer: {r['answer']}", r["answer"]), r
        wrong = "Answer: 99991" if r["answer"][0].isdigit() else "Answer: nobody"
        assert not check_answer(r["domain"], wrong, r["answer"]), r


def test_no_question_is_a_generated_row():
    from training.demo.sampling import generate

    rows = {r["prompt"] for r in read_questions()}
    for d in ("math", "medical", "reasoning"):
        for split in ("train", "valid", "test"):
            generated = {g["question"] if "question" in g else g["messages"][-2]["content"]
                         for g in generate(d, split, 300, 0)}
            assert not rows & generated, (d, split)


def test_standard_error():
    assert stderr(0.5, 100) == 0.05 and stderr(0.0, 10) == 0.0 and stderr(0.3, 0) == 0.0
