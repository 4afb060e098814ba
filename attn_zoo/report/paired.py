"""Paired comparisons between mechanisms: differences to a baseline with intervals, ranking groups, the
smallest difference the seeds can detect, test-set tests from stored predictions, and seed sizing.

Runs are paired by seed: at seed ``s`` every mechanism saw the same batches and started its shared modules
from the same weights (:mod:`attn_zoo.train.pairing`), so the difference ``d_s = acc(m, s) - acc(base, s)``
cancels what the seed does to both. Over the seeds common to both mechanisms:

- **paired t**: mean of ``d``, 95% Student-t interval ``mean ± t(0.975, n-1) · sd(d) / sqrt(n)``, two-sided p;
- **bootstrap**: 95% percentile interval of the mean of ``d`` resampled over seeds (SciPy's ``bootstrap``);
- **ranking groups**: paired t-tests between every pair of mechanisms, p-values Holm-corrected over all
  pairs; mechanisms in ranked order share a letter when no corrected test separates any two of them
  (compact letter display: ``a`` best; two mechanisms without a common letter are resolved);
- **minimum detectable difference** (MDD): the true difference a two-sided paired t-test at 5% finds with
  80% power, given ``n`` seeds and the spread ``sd(d)`` (noncentral t); the table's MDD uses the pooled
  spread of the differences to the baseline;
- **test set** (from the per-example predictions a cell stores): a bootstrap over test examples of the
  seed-mean difference (the same resampled examples for both mechanisms and every seed: the noise of the
  finite test set alone, not of training), and exact McNemar tests per seed on the examples only one of the
  two mechanisms gets right;
- **sizing**: the seeds a target difference needs at that spread (:func:`seeds_needed`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, stats

from attn_zoo.errors import ConfigError

ALPHA, POWER = 0.05, 0.8
SEED_RESAMPLES, TEST_RESAMPLES = 10_000, 2_000
PREDICTIONS_COLUMN = "artifact.test_predictions"

# ---------------------------------------------------------------------------------------------------------
# statistics on arrays


@dataclasses.dataclass(frozen=True)
class PairedT:
    mean: float
    low: float
    high: float
    p: float
    sd: float
    n: int


def paired_t(diffs: Sequence[float], alpha: float = ALPHA) -> PairedT:
    """Mean paired difference, its ``1 - alpha`` Student-t interval and the two-sided p of a zero mean."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n == 0:
        return PairedT(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(d.mean())
    if n == 1:
        return PairedT(mean, math.nan, math.nan, math.nan, math.nan, 1)
    sd = float(d.std(ddof=1))
    if sd == 0:  # identical differences: no spread to test against
        return PairedT(mean, mean, mean, 1.0 if mean == 0 else 0.0, 0.0, n)
    half = stats.t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
    p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return PairedT(mean, mean - half, mean + half, p, sd, n)


def bootstrap_interval(
    diffs: Sequence[float], resamples: int = SEED_RESAMPLES, seed: int = 0, alpha: float = ALPHA
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (resampled with replacement, seeded)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return math.nan, math.nan
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    res = stats.bootstrap(
        (d,),
        np.mean,
        n_resamples=resamples,
        confidence_level=1 - alpha,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def power_paired_t(diff: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at ``alpha`` for a true mean difference ``diff``."""
    if n < 2 or not sd > 0:
        return math.nan
    df, nc = n - 1, abs(diff) / sd * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    upper, lower = float(stats.nct.sf(crit, df, nc)), float(stats.nct.cdf(-crit, df, nc))
    # SciPy's nct can give NaN far in a tail, where the probability is ~0 (lower) or ~1 (upper)
    lower = 0.0 if math.isnan(lower) else lower
    upper = (1.0 if nc > crit else 0.0) if math.isnan(upper) else upper
    return upper + lower


def min_detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The true difference a two-sided paired t-test at ``alpha`` detects with ``power``, for ``n`` seeds
    whose differences spread with standard deviation ``sd``."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    upper = sd
    while power_paired_t(upper, sd, n, alpha) < power:
        upper *= 2
    gap = lambda x: power_paired_t(x, sd, n, alpha) - power  # noqa: E731
    return float(optimize.brentq(gap, 1e-12 * sd, upper, xtol=1e-9 * sd))


def seeds_needed(target: float, sd: float, alpha: float = ALPHA, power: float = POWER, most: int = 10_000) -> int:
    """The fewest seeds (at least 2) whose paired t-test detects a true difference ``target`` with ``power``."""
    if not target > 0:
        raise ConfigError(f"a target difference must be > 0, got {target!r}")
    if not math.isfinite(sd) or sd < 0:
        raise ConfigError(f"the spread of the differences must be a finite number >= 0, got {sd!r}")
    n = 2
    while power_paired_t(target, sd, n, alpha) < power if sd > 0 else False:
        n += 1
        if n > most:
            return most
    return n


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test on one test set: ``(a right and b wrong, b right and a wrong, two-sided p)``."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    if only_a + only_b == 0:
        return 0, 0, 1.0
    return only_a, only_b, float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def bootstrap_test_set(
    correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = TEST_RESAMPLES, seed: int = 0, alpha: float = ALPHA
) -> tuple[float, float, float]:
    """Mean over seeds of the accuracy difference a - b (percentage points) and its percentile interval from
    resampling test examples; ``correct_*``: booleans ``(seeds, examples)``, seeds paired by row."""
    a, b = np.atleast_2d(correct_a).astype(float), np.atleast_2d(correct_b).astype(float)
    per_example = 100.0 * (a - b).mean(axis=0)
    rng = np.random.default_rng(seed)
    n = len(per_example)
    means = []
    for start in range(0, resamples, 250):
        idx = rng.integers(0, n, size=(min(250, resamples - start), n))
        means.append(per_example[idx].mean(axis=1))
    draws = np.concatenate(means)
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(per_example.mean()), float(low), float(high)


def letter_groups(order: Sequence[str], separated: Callable[[str, str], bool]) -> dict[str, str]:
    """Compact letter display for ``order`` (best first): each maximal run of consecutive mechanisms with no
    two ``separated`` gets a letter; mechanisms sharing a letter cannot be told apart."""
    runs: list[tuple[int, int]] = []
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and not any(separated(order[k], order[j + 1]) for k in range(i, j + 1)):
            j += 1
        if not runs or j > runs[-1][1]:
            runs.append((i, j))
    letters = {name: "" for name in order}
    for r, (i, j) in enumerate(runs):
        for k in range(i, j + 1):
            letters[order[k]] += _letter(r)
    return letters


def _letter(index: int) -> str:
    return chr(ord("a") + index) if index < 26 else f"[{index}]"


# ---------------------------------------------------------------------------------------------------------
# from a store's frame


@dataclasses.dataclass
class Row:
    label: str
    n: int
    mean: float
    ci: float  # half-width of the 95% t-interval of the accuracy over seeds
    diff: PairedT | None  # to the baseline (None for the baseline itself)
    boot: tuple[float, float] | None
    p_holm: float
    mdd: float
    group: str
    testset: tuple[float, float, float] | None = None  # seed-mean difference and its test-set interval
    mcnemar: tuple[int, int] | None = None  # seeds with McNemar p < 0.05 (either way), seeds tested


@dataclasses.dataclass
class PairedTable:
    """The paired comparison of one group of configurations (one variant of the grid)."""

    variant: str
    metric: str
    baseline: str
    rows: list[Row]
    seeds: int  # seeds every mechanism has
    pooled_sd: float  # pooled spread of the per-seed differences to the baseline
    mdd: float  # minimum detectable difference at 80% power for ``seeds`` and ``pooled_sd``
    pairwise: dict[tuple[str, str], float]  # Holm-adjusted p of every pair
    budget: str  # e.g. "MACs within ±2% of 20.0M (achieved 19.71-20.26M)"
    equal_budget: bool

    def resolved(self) -> list[tuple[str, str]]:
        """Pairs whose corrected paired test separates them (first: the higher mean)."""
        means = {r.label: r.mean for r in self.rows}
        out = []
        for (a, b), p in self.pairwise.items():
            if p < ALPHA:
                out.append((a, b) if means[a] >= means[b] else (b, a))
        return sorted(out)

    def seeds_for(self, target: float) -> int:
        return seeds_needed(target, self.pooled_sd)


def _accuracy(frame: pd.DataFrame) -> str:
    from attn_zoo.report.style import accuracy_metric

    return accuracy_metric(frame)


def _variants(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    key = frame["variant"].fillna("").astype(str) if "variant" in frame else pd.Series("", index=frame.index)
    return [(str(v), g) for v, g in frame.groupby(key, sort=False)]


def _by_seed(group: pd.DataFrame, metric: str) -> dict[str, pd.Series]:
    out = {}
    for label, rows in group.groupby("label", sort=False):
        values = rows.dropna(subset=[metric]).drop_duplicates("seed", keep="last").set_index("seed")[metric]
        out[str(label)] = values.astype(float)
    return out


def _diffs(values: Mapping[str, pd.Series], a: str, b: str) -> np.ndarray:
    common = values[a].index.intersection(values[b].index)
    return (values[a].loc[common] - values[b].loc[common]).to_numpy()


def budget_statement(group: pd.DataFrame) -> tuple[str, bool]:
    """How close the configurations' budgets are: ``(sentence, equal)``. Equal: one target, and the achieved
    values spread no wider than the tolerance (so differences in cost between the rows are noise)."""
    if "budget_target" not in group or not (group["budget_target"].fillna(0) > 0).any():  # 0: a suite without a budget
        return "no budget matching", False
    targets = sorted(t for t in group["budget_target"].dropna().unique() if t > 0)
    achieved = group["budget_achieved"].dropna() if "budget_achieved" in group else pd.Series(dtype=float)
    tol = float(group["budget_tolerance"].dropna().max()) if "budget_tolerance" in group else 0.0
    name = next(
        (n for col, n in (("macs", "MACs"), ("params", "params")) if _close(achieved, group.get(col))), "budget"
    )
    if len(targets) != 1 or not len(achieved):
        return f"{len(targets)} {name} targets", False
    target = float(targets[0])
    spread = float(achieved.max() - achieved.min()) / target
    equal = spread <= 2 * tol + 1e-9 and bool(achieved.sub(target).abs().div(target).le(tol + 1e-9).all())
    text = (
        f"{name} within ±{100 * tol:g}% of {target / 1e6:g}M "
        f"(achieved {achieved.min() / 1e6:.2f}-{achieved.max() / 1e6:.2f}M)"
    )
    return text, equal


def _close(a: pd.Series, b: pd.Series | None) -> bool:
    if b is None or not len(a):
        return False
    joined = pd.concat([a, b], axis=1).dropna()
    return bool(len(joined)) and bool(np.allclose(joined.iloc[:, 0], joined.iloc[:, 1], rtol=1e-6))


def _correctness(group: pd.DataFrame, store_dir: str | Path | None) -> dict[str, dict[int, np.ndarray]]:
    """``{label: {seed: correct (bool per test example)}}`` from the stored predictions, where present."""
    from attn_zoo.train.pairing import load_predictions

    if store_dir is None or PREDICTIONS_COLUMN not in group:
        return {}
    out: dict[str, dict[int, np.ndarray]] = {}
    for _, row in group.dropna(subset=[PREDICTIONS_COLUMN]).iterrows():
        path = Path(store_dir) / str(row[PREDICTIONS_COLUMN])
        if not path.exists():
            continue
        pred, target = load_predictions(path)
        out.setdefault(str(row["label"]), {})[int(row["seed"])] = pred == target
    return out


def paired_tables(
    frame: pd.DataFrame,
    baseline: str | None = None,
    metric: str | None = None,
    store_dir: str | Path | None = None,
) -> list[PairedTable]:
    """One :class:`PairedTable` per variant of the grid (``frame``: a store's ``ok`` rows), over the seeds
    that every mechanism of the variant has finished. ``baseline``: a mechanism label (default: the first
    label in the store's order)."""
    if not len(frame):
        return []
    metric = metric or _accuracy(frame)
    if metric not in frame or frame[metric].isna().all():
        return []
    labels_all = list(dict.fromkeys(frame["label"].astype(str)))
    if baseline is not None and baseline not in labels_all:
        raise ConfigError(f"baseline {baseline!r} is not a mechanism of this store; allowed: {', '.join(labels_all)}")
    tables = []
    for variant, group in _variants(frame):
        values = _by_seed(group, metric)
        labels = [label for label in labels_all if label in values]
        if len(labels) < 2:
            continue
        # only seeds every mechanism has finished: means, differences and ranks then rest on the same runs
        common = sorted(set.intersection(*(set(values[label].index) for label in labels)))
        if common:
            values = {label: values[label].loc[common] for label in labels}
            group = group[group["seed"].isin(common)]
        base = baseline if baseline in values else labels[0]
        tables.append(_table(variant, metric, base, labels, values, group, store_dir))
    return tables


def _table(variant, metric, base, labels, values, group, store_dir) -> PairedTable:
    from attn_zoo.report.stats import mean_ci

    pairs = list(itertools.combinations(labels, 2))
    raw = [paired_t(_diffs(values, a, b)).p for a, b in pairs]
    pairwise = dict(zip(pairs, holm(raw)))

    def separated(a: str, b: str) -> bool:
        p = pairwise.get((a, b), pairwise.get((b, a), math.nan))
        return bool(p < ALPHA)

    means = {label: float(values[label].mean()) for label in labels}
    order = sorted(labels, key=lambda label: -means[label])
    groups = letter_groups(order, separated)
    others = [label for label in labels if label != base]
    tests = {label: paired_t(_diffs(values, label, base)) for label in others}
    adjusted = dict(zip(others, holm([tests[label].p for label in others])))
    correct = _correctness(group, store_dir)
    rows = []
    for label in order:
        mean, _, ci, n = mean_ci(values[label])
        row = Row(label, n, mean, ci, None, None, math.nan, math.nan, groups[label])
        if label != base:
            d = _diffs(values, label, base)
            test = tests[label]
            row.diff, row.boot, row.p_holm = test, bootstrap_interval(d), float(adjusted[label])
            row.mdd = min_detectable_difference(test.sd, test.n)
            seeds = sorted(set(correct.get(label, {})) & set(correct.get(base, {})))
            if seeds:
                a = np.stack([correct[label][s] for s in seeds])
                b = np.stack([correct[base][s] for s in seeds])
                row.testset = bootstrap_test_set(a, b)
                row.mcnemar = (sum(mcnemar(a[i], b[i])[2] < ALPHA for i in range(len(seeds))), len(seeds))
        rows.append(row)
    tested = [tests[label] for label in others if tests[label].n >= 2 and math.isfinite(tests[label].sd)]
    seeds = min((values[label].size for label in labels), default=0)
    if tested:
        dof = sum(t.n - 1 for t in tested)
        pooled = math.sqrt(sum((t.n - 1) * t.sd**2 for t in tested) / dof)
    else:
        pooled = math.nan
    budget, equal = budget_statement(group)
    mdd = min_detectable_difference(pooled, seeds)
    return PairedTable(variant, metric, base, rows, seeds, pooled, mdd, pairwise, budget, equal)


# ---------------------------------------------------------------------------------------------------------
# text


def _pm(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:+.2f}"


def _p(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def table_rows(table: PairedTable) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted rows of a paired table (ranked by mean, best first)."""
    headers = [
        "mechanism",
        "group",
        "seeds",
        "top-1 (%)",
        f"Δ vs {table.baseline}",
        "95% CI (paired t)",
        "95% CI (bootstrap)",
        "p (Holm)",
        "MDD (80%)",
    ]
    with_test = any(r.testset for r in table.rows)
    if with_test:
        headers += ["95% CI (test set)", "McNemar p<0.05"]
    rows = []
    for r in table.rows:
        acc = f"{r.mean:.2f} ± {r.ci:.2f}" if r.n > 1 and math.isfinite(r.ci) else f"{r.mean:.2f}"
        if r.diff is None:
            row = [r.label, r.group, str(r.n), acc, "baseline", "", "", "", ""]
            if with_test:
                row += ["", ""]
        else:
            d, (blo, bhi) = r.diff, r.boot
            row = [
                r.label,
                r.group,
                str(d.n),
                acc,
                _pm(d.mean),
                f"[{_pm(d.low)}, {_pm(d.high)}]",
                f"[{_pm(blo)}, {_pm(bhi)}]",
                _p(r.p_holm),
                "-" if not math.isfinite(r.mdd) else f"{r.mdd:.2f}",
            ]
            if with_test:
                row += (
                    [f"[{_pm(r.testset[1])}, {_pm(r.testset[2])}]", f"{r.mcnemar[0]}/{r.mcnemar[1]} seeds"]
                    if r.testset
                    else ["-", "-"]
                )
        rows.append(row)
    return headers, rows


def summary_text(table: PairedTable) -> str:
    """What the table resolves, in a few plain sentences."""
    resolved = table.resolved()
    seeds = f"{table.seeds} seed" + ("" if table.seeds == 1 else "s")
    lines = [
        f"Paired by seed ({seeds} per mechanism), differences in percentage points to {table.baseline}; "
        f"{table.budget}.",
    ]
    if table.seeds < 2:
        lines.append("With one seed nothing can be tested yet.")
        return " ".join(lines)
    if resolved:
        lines.append(
            "Resolved (Holm-corrected paired t, p < 0.05): " + ", ".join(f"{a} > {b}" for a, b in resolved) + "."
        )
    else:
        lines.append("No pair of mechanisms is resolved (every Holm-corrected paired t-test has p >= 0.05).")
    groups = sorted({letter for r in table.rows for letter in r.group})
    if len(groups) > 1:
        lines.append(f"Ranking groups: {len(groups)} (mechanisms sharing a letter cannot be told apart).")
    else:
        lines.append(f"Ranking groups: one, shared by all {len(table.rows)} mechanisms.")
    if math.isfinite(table.mdd):
        lines.append(
            f"Smallest difference these seeds detect (80% power, 5% two-sided, pooled spread of the "
            f"differences sd = {table.pooled_sd:.2f} points): {table.mdd:.2f} points; a 1-point difference "
            f"needs {table.seeds_for(1.0)} seeds at this spread."
        )
    return " ".join(lines)
