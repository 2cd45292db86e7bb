"""Metrics of generated summaries against hand-computed values (and rouge-score's own
bootstrap aggregator for the intervals)."""

import numpy as np
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
    assert ex == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeLsum": 0.0, "words": 0,
                  "empty": True, "repetition": None, "distinct1": None, "distinct2": None}
    assert M.rouge("a reference", "   \n")["rouge1"] == 0.0


def test_repetition_and_distinct_hand_computed():
    # Per output. pairs: (the,the) (the,cat) (cat,cat) (cat,cat) -> 3 of 4 repeated
    assert M.repetition_rate("the the cat cat cat") == pytest.approx(3 / 4)
    assert M.repetition_rate("The the") == 0.0  # words keep their case
    assert M.repetition_rate("no repeats in here") == 0.0
    assert M.repetition_rate("one") is None
    assert M.distinct_n("a b a b", 1) == pytest.approx(2 / 4)
    assert M.distinct_n("a b a b", 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert M.distinct_n("A a", 1) == 1.0
    assert M.distinct_n("x", 2) is None
    ex = M.example_metrics("x y", "x x y")
    assert ex["words"] == 3 and not ex["empty"]
    assert ex["repetition"] == pytest.approx(1 / 2)
    assert ex["distinct1"] == pytest.approx(2 / 3) and ex["distinct2"] == 1.0


def test_pooled_repetition_and_distinct_are_the_authors():
    """Pooled over the outputs: counts added up across texts, pairs and n-grams never
    crossing a text boundary, case kept, whitespace words."""
    texts = ["a b a", "a b", "The the\nthe", "x"]
    # pairs: (a,b) (b,a) | (a,b) | (The,the) (the,the) | - -> 1 repeated of 5
    assert M.pooled_repetition(texts) == pytest.approx(1 / 5)
    # words: a b a a b The the the x -> distinct {a, b, The, the, x} = 5 of 9
    assert M.pooled_distinct(texts, 1) == pytest.approx(5 / 9)
    # bigrams: ab ba | ab | (The,the) (the,the) -> distinct 4 of 5 ("a a" across texts is not one)
    assert M.pooled_distinct(texts, 2) == pytest.approx(4 / 5)
    assert M.pooled_distinct(texts, 3) == pytest.approx(2 / 2)  # (a,b,a), (The,the,the)
    # nothing to count: 0, as the authors' functions return
    assert M.pooled_repetition(["x", "y"]) == 0.0 and M.pooled_distinct(["x"], 2) == 0.0
    assert M.pooled_repetition([]) == 0.0


def test_cell_metrics_hand_computed():
    refs = ["the cat sat on the mat", "the cat sat on the mat", "police found two cars",
            "a b"]
    outs = ["the cat lay on the mat", "", "police police found", "Police"]
    rows = [M.example_metrics(r, o) for r, o in zip(refs, outs)]
    s = M.cell_metrics(rows, outs)
    r1_third = M.rouge("police found two cars", "police police found")["rouge1"]
    assert s["n"] == 4
    assert s["rouge1"] == pytest.approx(100 * (5 / 6 + 0 + r1_third + 0) / 4)
    assert s["words"] == pytest.approx((6 + 0 + 3 + 1) / 4)
    assert s["empty_rate"] == pytest.approx(1 / 4)
    # Pooled over the 3 non-empty outputs (10 words): pairs 5 + 2 + 0 = 7, one repeated
    # (police, police); a per-output mean would be (0 + 1/2) / 2 = 1/4.
    assert s["repetition"] == pytest.approx(1 / 7)
    # words: the cat lay on the mat police police found Police -> distinct
    # {the, cat, lay, on, mat, police, found, Police} = 8 of 10 (case kept)
    assert s["distinct1"] == pytest.approx(8 / 10)
    # bigrams: 5 + 2 = 7, all distinct
    assert s["distinct2"] == 1.0
    # A cell of empty outputs has no repetition or distinct-n.
    empty = M.cell_metrics([M.example_metrics("a b", " ")], [" "])
    assert empty["repetition"] is None and empty["distinct1"] is None
    with pytest.raises(ValueError):
        M.cell_metrics(rows, outs[:2])


def test_sentence_split_rule():
    """The documented rule: line breaks; . ! ? (with closing quotes/brackets) before
    whitespace and an upper-case letter, digit or opening quote/bracket; not after an
    initial, a word with an inner full stop, or a listed abbreviation."""
    text = ('Mr. Smith met Dr. Jones in the U.S. Senate today. "Why?" he asked! '
            "J. K. Rowling agreed (twice.) 2 days later it ended.\n"
            "A headline without a stop\n\n  It rained, e.g. here. it was cold.  ")
    assert M.split_sentences(text) == [
        "Mr. Smith met Dr. Jones in the U.S. Senate today.",
        '"Why?" he asked!',
        "J. K. Rowling agreed (twice.)",
        "2 days later it ended.",
        "A headline without a stop",
        "It rained, e.g. here. it was cold.",  # lower case after the stop: one sentence
    ]
    # only whitespace is dropped: the words are the text's
    assert " ".join(M.split_sentences(text)).split() == text.split()
    assert M.split_sentences("   \n ") == [] and M.split_sentences("one") == ["one"]
    assert M.split_sentences("Wait... Then what?") == ["Wait...", "Then what?"]


def test_rouge_lsum_hand_computed():
    # ref: [the cat sat] [the dog ran]; out: [the dog ran] [the cat sat]
    # ROUGE-L on the whole texts: LCS "the cat sat" = 3 of 6 -> F = 1/2.
    # ROUGE-Lsum: each reference sentence's union LCS over the output's sentences is the
    # whole sentence (3 + 3 = 6 of 6) -> F = 1.
    r = M.rouge("The cat sat. The dog ran.", "The dog ran. The cat sat.")
    assert r["rougeL"] == pytest.approx(1 / 2)
    assert r["rougeLsum"] == pytest.approx(1.0)
    # One sentence each: Lsum is L.
    r = M.rouge("police found two cars", "police found")
    assert r["rougeLsum"] == pytest.approx(r["rougeL"]) == pytest.approx(2 / 3)
    # ref: [a b c] [d e]; out: [a c d] [b e] ->
    # r1 = a b c: LCS with (a c d) = a c, with (b e) = b -> union {a, b, c} = 3;
    # r2 = d e: LCS with (a c d) = d, with (b e) = e -> union {d, e} = 2; 5 of 5 and 5 of 5.
    # ROUGE-L of the texts: LCS(a b c d e, a c d b e) = a c d e = 4 -> F = 4/5.
    r = M.rouge("Alpha bravo charlie. Delta echo.", "Alpha charlie delta. Bravo echo.")
    assert r["rougeL"] == pytest.approx(4 / 5)
    assert r["rougeLsum"] == pytest.approx(1.0)
    # ref: [a b c] [d e]; out: [a e] [c]: r1: LCS(a e)=a, LCS(c)=c -> 2; r2: LCS(a e)=e -> 1;
    # hits 3: R = 3/5, P = 3/3 -> F = 2 * 3/5 / (1 + 3/5) = 3/4.
    r = M.rouge("Alpha bravo charlie. Delta echo.", "Alpha echo. Charlie.")
    assert r["rougeLsum"] == pytest.approx(3 / 4)


def test_lead_k_hand_computed():
    source = ("Mr. Brown said the U.S. plan works. Critics disagreed! Some asked: why now?\n"
              "The vote is on 3 May. Nothing else happened.")
    assert M.lead(source, 1) == "Mr. Brown said the U.S. plan works."
    assert M.lead(source, 3) == ("Mr. Brown said the U.S. plan works.\nCritics disagreed!\n"
                                 "Some asked: why now?")
    assert M.lead("Just one sentence here", 3) == "Just one sentence here"
    # its ROUGE against a reference, by hand: lead-1 "the cat sat on the mat." vs "the cat sat"
    out = M.lead("The cat sat on the mat. It slept.", 1)
    r = M.rouge("the cat sat", out)  # P = 3/6, R = 1 -> F = 2/3
    assert r["rouge1"] == pytest.approx(2 / 3) and r["rougeLsum"] == pytest.approx(2 / 3)


def test_bootstrap_intervals_hand_computed_and_rouge_score_equal():
    # Equal values: every resample mean is the value.
    lo, hi = M.bootstrap_intervals(np.full((7, 1), 0.25))
    assert lo[0] == hi[0] == 0.25
    # Two values 0 and 1: resample means are 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4;
    # of 1,000 resamples about 250 are 0 and 250 are 1, so the 2.5th and 97.5th percentiles
    # are 0 and 1.
    lo, hi = M.bootstrap_intervals(np.array([[0.0], [1.0]]))
    assert (lo[0], hi[0]) == (0.0, 1.0)
    # One example: the interval is the point.
    s = M.cell_metrics([M.example_metrics("a b c", "a b")], ["a b"])
    assert s["rouge1_lo"] == s["rouge1"] == s["rouge1_hi"] == pytest.approx(100 * 0.8)

    # Against rouge-score's BootstrapAggregator seeded the same way, column by column.
    from rouge_score import scoring
    rng = np.random.default_rng(3)
    values = rng.random((40, 2))
    lo, hi = M.bootstrap_intervals(values, seed=11)
    for j in range(2):
        agg = scoring.BootstrapAggregator(confidence_interval=0.95, n_samples=1000)
        for v in values[:, j]:
            agg.add_scores({"x": scoring.Score(precision=v, recall=v, fmeasure=v)})
        np.random.seed(11)
        want = agg.aggregate()["x"]
        assert lo[j] == pytest.approx(want.low.fmeasure, abs=1e-12)
        assert hi[j] == pytest.approx(want.high.fmeasure, abs=1e-12)
    assert lo[0] < values[:, 0].mean() < hi[0]
    # A wider confidence gives a wider interval; the seed is fixed by default.
    lo90, hi90 = M.bootstrap_intervals(values, confidence=0.9, seed=11)
    assert lo[0] <= lo90[0] and hi90[0] <= hi[0]
    assert np.array_equal(M.bootstrap_intervals(values), M.bootstrap_intervals(values))


def test_cell_metrics_has_an_interval_for_every_rouge_column():
    refs = ["the cat sat on the mat", "police found two cars", "a b c", "red green blue"]
    outs = ["the cat lay on the mat", "", "a b", "blue green red"]
    rows = [M.example_metrics(r, o) for r, o in zip(refs, outs)]
    s = M.cell_metrics(rows, outs)
    for k in M.ROUGE_KEYS:
        want_lo, want_hi = M.bootstrap_intervals(np.array([[r[k]] for r in rows]))
        assert s[f"{k}_lo"] == pytest.approx(100 * want_lo[0])
        assert s[f"{k}_hi"] == pytest.approx(100 * want_hi[0])
        assert s[f"{k}_lo"] <= s[k] <= s[f"{k}_hi"]
    assert s["rouge1_lo"] < s["rouge1_hi"]
