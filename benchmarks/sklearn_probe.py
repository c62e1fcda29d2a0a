"""The scikit-learn reference on frozen features: StandardScaler + LogisticRegression (default C) and
StandardScaler + LogisticRegressionCV (default Cs, stratified 5-fold, grouped when groups exist)."""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

MODELS = ("LogisticRegression()", "LogisticRegressionCV")


def folds(labels: np.ndarray, groups: np.ndarray | None, n_splits: int = 5, seed: int = 0) -> list:
    """Stratified folds, grouped (no group in two folds) when `groups` has more than one value."""
    zeros = np.zeros(len(labels))
    if groups is not None and len(np.unique(groups)) >= n_splits:
        return list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(zeros, labels, groups))
    return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(zeros, labels))


def make_model(name: str, labels: np.ndarray, groups: np.ndarray | None) -> Pipeline:
    """A fresh pipeline for `name` at scikit-learn's defaults; LogisticRegressionCV's folds come from `folds`."""
    if name == "LogisticRegression()":
        return make_pipeline(StandardScaler(), LogisticRegression())
    return make_pipeline(StandardScaler(), LogisticRegressionCV(cv=folds(labels, groups)))


def fit_score(name: str, X_train: np.ndarray, y_train: np.ndarray, g_train: np.ndarray | None,
              X_test: np.ndarray, y_test: np.ndarray) -> tuple[float, float, float | None]:
    """(test accuracy, fit seconds, chosen C or None) of one model fitted on the training rows."""
    model = make_model(name, y_train, g_train)
    start = time.perf_counter()
    # one BLAS thread: on a shared 2-core machine a multi-threaded BLAS runs these small solves ~50x slower
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)  # the defaults' 100 iterations, as a user gets them
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.9's notices of LogisticRegressionCV defaults
        model.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    clf = model[-1]
    chosen = float(np.ravel(clf.C_)[0]) if hasattr(clf, "C_") else None
    with threadpool_limits(1, user_api="blas"):
        predicted = model.predict(X_test)
    return float((predicted == y_test).mean()), seconds, chosen


def fixed_split(name: str, feats: dict) -> dict:
    """Fit on train + validation rows, score on the test rows of the set's fixed split."""
    fit = np.isin(feats["split"], ["train", "validation"])
    test = feats["split"] == "test"
    groups = feats["group"][fit] if np.any(feats["group"] != "") else None
    acc, seconds, chosen = fit_score(name, feats["X"][fit], feats["label"][fit], groups,
                                     feats["X"][test], feats["label"][test])
    return {"test_acc": acc, "fit_s": seconds, "C": chosen}


def cross_validated(name: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> dict:
    """Mean and std of held-out accuracy over 5 stratified (grouped) folds of all rows."""
    accs, seconds, cs = [], 0.0, []
    for train, test in folds(y, groups):
        acc, s, chosen = fit_score(name, X[train], y[train], None if groups is None else groups[train],
                                   X[test], y[test])
        accs.append(acc)
        seconds += s
        if chosen is not None:
            cs.append(chosen)
    return {"cv_mean": float(np.mean(accs)), "cv_std": float(np.std(accs)), "folds": accs, "fit_s": seconds,
            "C": ",".join(f"{c:g}" for c in cs) if cs else None}
