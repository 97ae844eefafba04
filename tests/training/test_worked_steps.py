"""The worked-answer diagnosis (training.demo.worked_steps): each `=` of a worked line is checked by value, and a
wrong answer is told apart as an arithmetic slip or a wrong setup."""

from __future__ import annotations

import json

from training.demo.worked_steps import classify, diagnose, equations, evaluate, fact_operator, main


def test_sides_are_evaluated_only_when_plain_arithmetic():
    assert evaluate(" 95 - 40 - 5 ") == 50
    assert evaluate("$1,200") == 1200 and evaluate("12500 grams") == 12500 and evaluate("35.8 F") == 35.8
    assert evaluate("3 * (2 + 4)") == 18 and evaluate("7 / 2") == 3.5
    for words in ("25% of 40", "x + 2", "", "Nina", "2 ** 10"):
        assert evaluate(words) is None, words


def test_chains_are_checked_link_by_link_and_labels_dropped():
    text = ("Given away: 27 + 18 = 27 + 10 + 8 = 37 + 8 = 45\n"
            "Left: 95 - 45 = 95 - 40 - 5 = 55 - 5 = 52\n"
            "Speed: 135 / 3 = 45 (check: 45 * 3 = 134)\n"
            "Answer: 52 = 50")
    got = equations(text)
    assert [ok for _, _, ok in got] == [True, True, True, True, True, False, True]
    assert got[5][:2] == ("55 - 5", "52")  # the answer line and the "(check: ...)" aside are not claims


def test_facts_are_single_operations_with_a_plain_result():
    assert fact_operator("55 - 5", "52") == "-" and fact_operator("$12 * 3", "$36") == "*"
    assert fact_operator("60 * 2", "120 minutes") == "*"
    assert fact_operator("95 - 40 - 5", "55 - 5") is None and fact_operator("27 + 18", "27 + 10 + 8") is None


def test_wrong_answers_split_into_slips_and_setups():
    assert classify("math", "Left: 95 - 45 = 50\nAnswer: 50", "50") == "right"
    assert classify("math", "Left: 95 - 45 = 52\nAnswer: 52", "50") == "slip"
    assert classify("math", "Left: 95 - 27 = 68\nAnswer: 68", "50") == "setup"  # true sum, wrong numbers
    assert classify("math", "She has some left.", "50") == "none"


def test_diagnosis_counts_and_the_command_reads_an_eval_set_result(tmp_path, capsys):
    examples = [{"prompt": "q1", "answer": "50", "own": "95 - 45 = 50\nAnswer: 50", "base": "fifty"},
                {"prompt": "q2", "answer": "8", "own": "2 + 2 = 5\n5 + 3 = 8\nAnswer: 9", "base": "Answer: 8"}]
    result = {"framing": "chat", "domains": {"math": {"n": 2, "examples": examples}}}
    d = diagnose(result)
    own = d["own"]
    assert (own["right"], own["slip"], own["steps_checked"], own["step_accuracy"]) == (1, 1, 3, 0.6667)
    assert d["own"]["facts"]["+"] == {"held": 1, "checked": 2} and d["own"]["false_steps"] == ["2 + 2 = 5"]
    assert (d["base"]["right"], d["base"]["none"], d["base"]["step_accuracy"]) == (1, 1, None)
    path, out = tmp_path / "r.json", tmp_path / "d.json"
    path.write_text(json.dumps(result))
    assert main([str(path), "--json", str(out)]) == 0
    assert "66.7%" in capsys.readouterr().out
    assert json.loads(out.read_text())[str(path)]["own"]["slip"] == 1


def test_probe_questions_cover_every_cell_with_their_true_values():
    from training.demo.worked_steps import PROBE_CELLS, probe_questions

    rows = probe_questions(per_cell=15, seed=3)
    assert len(rows) == 15 * len(PROBE_CELLS) and rows == probe_questions(per_cell=15, seed=3)
    for r in rows:
        a, op, b = r["prompt"].removeprefix("What is ").rstrip("?").split()
        assert evaluate(f"{a} {op} {b}") == int(r["answer"]) > 0, r
        assert r["cell"] == f"{len(a)}d {op} {len(b)}d", r
