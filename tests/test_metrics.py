"""Metrics of generated summaries against hand-computed values."""

import pytest

from dsl_jax.evaluation import metrics as M


def test_rouge_hand_computed():
    # ref: the cat sat on the mat / out: the cat lay on the mat
    # unigrams: the x2, cat, on, mat match -> 5/6; bigrams: the-cat, on-the, the-mat -> 3/5;
    # LCS: the cat on the mat -> 5/6.
    r = M.rouge("The cat sat on the mat.", "the cat lay on the mat")
    assert r["rouge1"] == pytest.approx(5 / 6)
    assert r["rouge2"] == pytest.approx(3 / 5)
    assert r["rougeL"] == pytest.approx(5 / 6)
    # Asymmetric lengths: P = 1, R = 2/4 -> F = 2/3; bigrams P = 1, R = 1/3 -> F = 1/2.
    r = M.rouge("police found two cars", "police found")
    assert r["rouge1"] == pytest.approx(2 / 3)
    assert r["rouge2"] == pytest.approx(1 / 2)
    assert r["rougeL"] == pytest.approx(2 / 3)
    # ROUGE-L is not ROUGE-1: reversed order keeps unigrams, LCS = 1 of 3.
    r = M.rouge("red green blue", "blue green red")
    assert r["rouge1"] == pytest.approx(1.0)
    assert r["rouge2"] == 0.0
    assert r["rougeL"] == pytest.approx(1 / 3)
    # Porter stemming: running dogs ~ run dog.
    assert M.rouge("running dogs", "run dog")["rouge1"] == pytest.approx(1.0)


def test_empty_output_scores_zero():
    ex = M.example_metrics("a real reference summary", "")
    assert ex == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "words": 0, "empty": True,
                  "repetition": None, "distinct1": None, "distinct2": None}
    assert M.rouge("a reference", "   \n")["rouge1"] == 0.0


def test_repetition_and_distinct_hand_computed():
    # pairs: (the,the) (the,cat) (cat,cat) (cat,cat) -> 3 of 4 repeated
    assert M.repetition_rate("the the cat cat cat") == pytest.approx(3 / 4)
    assert M.repetition_rate("The the") == 1.0
    assert M.repetition_rate("no repeats in here") == 0.0
    assert M.repetition_rate("one") is None
    assert M.distinct_n("a b a b", 1) == pytest.approx(2 / 4)
    assert M.distinct_n("a b a b", 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert M.distinct_n("x", 2) is None
    ex = M.example_metrics("x y", "x x y")
    assert ex["words"] == 3 and not ex["empty"]
    assert ex["repetition"] == pytest.approx(1 / 2)
    assert ex["distinct1"] == pytest.approx(2 / 3) and ex["distinct2"] == 1.0


def test_cell_metrics_hand_computed():
    rows = [M.example_metrics("the cat sat on the mat", "the cat lay on the mat"),
            M.example_metrics("the cat sat on the mat", ""),
            M.example_metrics("police found two cars", "police police found")]
    s = M.cell_metrics(rows)
    r1_third = M.rouge("police found two cars", "police police found")["rouge1"]
    assert s["n"] == 3
    assert s["rouge1"] == pytest.approx(100 * (5 / 6 + 0 + r1_third) / 3)
    assert s["words"] == pytest.approx((6 + 0 + 3) / 3)
    assert s["empty_rate"] == pytest.approx(1 / 3)
    # repetition and distinct-n average over outputs where they are defined (2 of 3)
    assert s["repetition"] == pytest.approx((0 + 1 / 2) / 2)
    assert s["distinct1"] == pytest.approx((5 / 6 + 2 / 3) / 2)
