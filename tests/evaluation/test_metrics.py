"""Metrics against values worked out by hand (and, where it has them, scikit-learn as a second opinion)."""

import pytest

from vlmforge.evaluation.metrics import (
    accuracy, binary_auc, binary_metrics, confusion_matrix, grouped_accuracy, macro_accuracy, mean_absolute_error,
    one_vs_rest_auc, quadratic_weighted_kappa, roc_auc,
)


def test_accuracy_and_macro():
    correct = [True, True, False, True, False]
    classes = ["a", "a", "a", "b", "c"]
    assert accuracy(correct) == pytest.approx(3 / 5)
    # per class: a 2/3, b 1/1, c 0/1 -> mean 5/9
    assert macro_accuracy(correct, classes) == pytest.approx(5 / 9)
    assert grouped_accuracy(correct, classes) == {"a": {"accuracy": pytest.approx(2 / 3), "n": 3},
                                                  "b": {"accuracy": 1.0, "n": 1}, "c": {"accuracy": 0.0, "n": 1}}
    assert accuracy([]) is None and macro_accuracy([], []) is None


def test_binary_metrics():
    pred = [True, True, False, False, True, False]
    gold = [True, False, False, True, True, False]
    m = binary_metrics(pred, gold)
    # tp: items 0,4; fp: 1; tn: 2,5; fn: 3
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 6)
    none_yes = binary_metrics([False, False], [True, False])
    assert none_yes["precision"] is None and none_yes["recall"] == 0.0 and none_yes["f1"] is None


def test_confusion_mae_qwk():
    gold, pred = [0, 1, 2, 2], [0, 2, 2, 1]
    assert confusion_matrix(gold, pred, [0, 1, 2]) == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    assert mean_absolute_error(gold, pred) == pytest.approx(2 / 4)
    # O off-diagonal: (1,2),(2,1) with w=1/4 each -> 0.5. Marginals r=c=[1,1,2], n=4:
    # sum w*r_i*c_j/n = (0.25*1 + 1*2 + 0.25*1 + 0.25*2 + 1*2 + 0.25*2) / 4 = 5.5/4 = 1.375 -> 1 - 0.5/1.375 = 7/11
    assert quadratic_weighted_kappa(gold, pred, 3) == pytest.approx(7 / 11)
    # The weights are scaled by (K-1)^2, so unused grades 3 and 4 do not change kappa.
    assert quadratic_weighted_kappa(gold, pred, 5) == pytest.approx(7 / 11)
    assert quadratic_weighted_kappa([1, 2], [1, 2], 3) == pytest.approx(1.0)
    from sklearn.metrics import cohen_kappa_score

    assert quadratic_weighted_kappa(gold, pred, 3) == pytest.approx(cohen_kappa_score(gold, pred, weights="quadratic"))


def test_auc():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered right
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    # a tie counts half: pos 0.5 vs neg 0.5 (0.5) and 0.2 (1); pos 0.9 beats both (2) -> 3.5/4
    assert roc_auc([0.5, 0.5, 0.2, 0.9], [True, False, False, True]) == pytest.approx(0.875)
    assert roc_auc([0.3, 0.4], [True, True]) is None
    from sklearn.metrics import roc_auc_score

    assert roc_auc([0.5, 0.5, 0.2, 0.9], [True, False, False, True]) == pytest.approx(
        roc_auc_score([1, 0, 0, 1], [0.5, 0.5, 0.2, 0.9]))


def test_grade_aucs():
    probs = [[0.7, 0.1, 0.1, 0.05, 0.05], [0.2, 0.5, 0.2, 0.05, 0.05],
             [0.1, 0.2, 0.3, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2, 0.1]]
    gold = [0, 1, 2, 3]
    # p(grade>=2): .2, .3, .7, .4 -> positives (.7, .4) beat both negatives (.2, .3)
    assert binary_auc(probs, gold, 2) == pytest.approx(1.0)
    per = one_vs_rest_auc(probs, gold)
    assert per["0"] == pytest.approx(1.0)
    # p3: .05 .05 .2 | positive .2 -> beats .05, .05, ties .2 -> 2.5/3
    assert per["3"] == pytest.approx(2.5 / 3)
    assert per["4"] is None  # no item of grade 4
