"""The ablation study's summary: per-run metrics of a validation curve, differences to the reference preset
and the plot."""

import math
import warnings
from pathlib import Path

from rgra_lightning import ablation_summary
from rgra_lightning.ablate import Study


def test_curve_metrics_by_hand():
    curve = [(0, 0.25), (1, 0.5), (3, 1.0), (5, 0.75)]
    assert ablation_summary.curve_metrics(curve) == {
        "initial": 0.25,
        "final": 0.75,
        "best": 1.0,
        "mean": 0.75,
    }


def test_the_initial_point_is_the_one_at_step_0_not_the_first():
    """With ``validate_before_training: false`` the first validation is a trained policy's: it is no
    "initial" and counts in final, best and mean; a run validated only before training has no final."""
    assert ablation_summary.curve_metrics([(2, 0.5), (4, 0.75)]) == {
        "final": 0.75,
        "best": 0.75,
        "mean": 0.625,
    }
    assert ablation_summary.curve_metrics([(0, 0.25)]) == {"initial": 0.25}


def test_non_finite_validations_are_left_out_of_a_runs_metrics():
    """One NaN validation made the run's best and mean NaN (max() keeps a NaN it starts with), and with
    them the preset's cells; an infinite one was its best."""
    curve = [(0, 0.25), (2, math.nan), (4, 0.5), (6, math.inf), (8, 0.75)]
    assert ablation_summary.curve_metrics(curve) == {
        "initial": 0.25,
        "final": 0.75,
        "best": 0.75,
        "mean": 0.625,
    }
    assert ablation_summary.curve_metrics([(0, math.nan), (2, -math.inf)]) == {}


def test_a_nan_value_is_not_marked_and_does_not_crash_the_t_test():
    """A NaN variance makes the Welch df NaN, for which no tabulated df is at or below it: ``max() arg is
    an empty sequence``. Nothing exceeds the infinite critical value it now has."""
    assert ablation_summary.t_critical(math.nan) == math.inf
    assert not ablation_summary.welch_significant(0.3, (math.nan, 3), (0.01 / 3, 3))
    assert ablation_summary.difference([0.8, math.nan, 1.0], [0.5, 0.6, 0.7]) == "+nan (nan)"


def test_the_difference_section_names_the_seed_count_or_why_there_is_nothing_to_compare():
    metrics = {"rgra": {"final": [0.5, 0.7]}, "grpo": {"final": [0.6, 0.8]}}
    lines = ablation_summary.difference_section(metrics, ["rgra", "grpo", "raft"], "rgra", seeds=2)
    assert "`*`: Welch t-test, two-sided 5 %, not corrected for the number of comparisons" in lines[0]
    assert "With 2 seeds per preset only large differences are marked" in lines[0]
    assert lines[4:] == ["| grpo | +0.100 (0.141) | n/a | n/a |", ""]
    only_reference = ablation_summary.difference_section(
        {"rgra": metrics["rgra"]}, ["rgra", "grpo"], "rgra", 2
    )
    assert only_reference == ["No differences: no preset but the reference `rgra` has a finished run.", ""]
    no_reference = ablation_summary.difference_section({"grpo": metrics["grpo"]}, ["rgra", "grpo"], "rgra", 2)
    assert no_reference == ["No differences: the reference preset `rgra` has no finished run.", ""]


def test_difference_marks_what_a_welch_t_test_at_5_percent_rejects():
    """Hand-computed: t = delta / SE against Student's t at the Welch-Satterthwaite df. The earlier rule,
    |delta| > 2 SE, marked every one of these but the n/a."""
    # delta 0.2, SE = sqrt(0.01/3 + 0.01/3) = 0.0816: t = 2.45 < 2.776 (df 4) but > 2
    assert ablation_summary.difference([0.7, 0.8, 0.9], [0.5, 0.6, 0.7]) == "+0.200 (0.082)"
    # delta 0.3, same SE: t = 3.67 > 2.776, marked by both rules
    assert ablation_summary.difference([0.8, 0.9, 1.0], [0.5, 0.6, 0.7]) == "+0.300 (0.082) *"
    # a reference without spread: df = n - 1 = 2 of the other side alone; delta 0.4, SE = sqrt(0.09/3) =
    # 0.173: t = 2.31 < 4.303
    assert ablation_summary.difference([0.6, 0.9, 1.2], [0.5, 0.5, 0.5]) == "+0.400 (0.173)"
    # docs/ablations.md's GRPO-pos final against RGRA's, in problems of 128 per seed: t = -2.9 at df 2.0
    grpo_positive, rgra = [85 / 128, 108 / 128, 111 / 128], [125 / 128, 125 / 128, 126 / 128]
    assert ablation_summary.difference(grpo_positive, rgra) == "-0.188 (0.064)"
    assert ablation_summary.difference([0.9, 0.9, 0.9], [0.5, 0.5, 0.5]) == "+0.400 (0.000)"  # SE 0: no mark
    assert ablation_summary.difference([0.9], [0.5, 0.6]) == "n/a"  # one run has no spread


def test_a_fractional_welch_df_takes_the_next_lower_tabulated_df():
    """Squared standard errors 0.01/3 and 0.00625/5 give df = 0.0045833^2 / (0.0033333^2 / 2 +
    0.00125^2 / 4) = 3.53, and delta 0.2 / SE 0.0677 = t 2.95: above the exact critical value at df 3.53
    (2.927) but not above df 3's 3.182, which is taken: no mark."""
    assert ablation_summary.difference([0.7, 0.8, 0.9], [0.5, 0.55, 0.6, 0.65, 0.7]) == "+0.200 (0.068)"
    assert ablation_summary.t_critical(4) == ablation_summary.t_critical(4.9) == 2.776
    # [0.1, 0.2, 0.3] against [0.4, 0.5, 0.6]: the df, 4, computes as 3.9999999999999996
    assert ablation_summary.t_critical(3.9999999999999996) == 2.776
    assert ablation_summary.t_critical(2.01) == 4.303
    assert ablation_summary.t_critical(35) == 2.042 and ablation_summary.t_critical(1000) == 1.980


def test_a_cell_says_how_many_runs_it_has_where_seeds_are_missing():
    """A single run's value is shown alone (``+- 0.000`` read as identical runs), and a preset with fewer
    runs than the study's seeds says how many."""
    assert ablation_summary.mean_std([0.977], seeds=3) == "0.977 (n=1)"
    assert ablation_summary.mean_std([0.5, 0.7], seeds=3) == "0.600 +- 0.141 (n=2)"
    assert ablation_summary.mean_std([0.5, 0.6, 0.7], seeds=3) == "0.600 +- 0.100"
    assert ablation_summary.mean_std([0.977], seeds=1) == "0.977"
    assert ablation_summary.mean_std([], seeds=3) == "n/a"


def test_a_plot_with_no_curve_yet_is_written_without_a_warning(tmp_path):
    """Every run failed before its first validation: the summary's plot is empty, and matplotlib is not
    asked for a legend of nothing (its UserWarning would be printed after each failed study)."""

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = ablation_summary.plot_curves({"rgra": [], "grpo": [[]]}, tmp_path / "plot.png", "study")
    assert path.stat().st_size > 0


def test_the_benchmark_table_gives_each_correctness_metric_per_preset_and_its_difference():
    study = Study(
        "s",
        [Path("b.yaml")],
        ["rgra", "grpo", "raft"],
        [0, 1],
        reference="rgra",
        benchmarks={"gsm8k": {}, "math": {}},
    )
    tested = {
        "rgra": {
            "gsm8k": [
                {"test/accuracy": 0.5, "test/reward": 0.6, "test/pass@4": 0.75},
                {"test/accuracy": 0.7},
            ],
            "math": [{"test/accuracy": 0.2}, {"test/accuracy": 0.2}],
        },
        "grpo": {"gsm8k": [{"test/accuracy": 0.25}]},
    }
    lines = ablation_summary.benchmark_section(tested, study, ["rgra", "grpo", "raft"])
    assert "| preset | gsm8k | gsm8k pass@4 | math |" in lines  # accuracy first; reward is no correctness
    assert "| rgra | 0.600 +- 0.141 | 0.750 (n=1) | 0.200 +- 0.000 |" in lines
    assert "| grpo | 0.250 (n=1) | n/a | n/a |" in lines and "| raft | n/a | n/a | n/a |" in lines
    assert "| grpo | n/a | n/a | n/a |" in lines  # the difference: a single run has no spread to judge by
    tested["grpo"]["gsm8k"].append({"test/accuracy": 0.35})
    lines = ablation_summary.benchmark_section(tested, study, ["rgra", "grpo", "raft"])
    assert "| grpo | -0.300 (0.112) | n/a | n/a |" in lines  # (0.141^2 / 2 + 0.071^2 / 2) ** 0.5
    untested = ablation_summary.benchmark_section({}, study, ["rgra"])  # every benchmark keeps its column
    assert "| preset | gsm8k | math |" in untested and "| rgra | n/a | n/a |" in untested
    assert (
        ablation_summary.benchmark_section(tested, Study("s", [], ["rgra"], [0], reference="rgra"), ["rgra"])
        == []
    )
