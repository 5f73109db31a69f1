"""The ablation study's summary: per-run metrics of a validation curve, differences to the reference preset
and the plot."""

import warnings

from rgra_lightning import ablation_summary


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


def test_the_difference_section_names_the_seed_count_or_why_there_is_nothing_to_compare():
    metrics = {"rgra": {"final": [0.5, 0.7]}, "grpo": {"final": [0.6, 0.8]}}
    lines = ablation_summary.difference_section(metrics, ["rgra", "grpo", "raft"], "rgra", seeds=2)
    assert "(with 2 seeds a rough guide, not a significance test)" in lines[0]
    assert lines[4:] == ["| grpo | +0.100 (0.141) | n/a | n/a |", ""]
    only_reference = ablation_summary.difference_section(
        {"rgra": metrics["rgra"]}, ["rgra", "grpo"], "rgra", 2
    )
    assert only_reference == ["No differences: no preset but the reference `rgra` has a finished run.", ""]
    no_reference = ablation_summary.difference_section({"grpo": metrics["grpo"]}, ["rgra", "grpo"], "rgra", 2)
    assert no_reference == ["No differences: the reference preset `rgra` has no finished run.", ""]


def test_difference_flags_only_gaps_beyond_two_standard_errors():
    # delta 0.3; Welch SE = sqrt(0.01/3 + 0.01/3) = 0.082 -> flagged; sqrt(0.09/3 + 0.01/3) = 0.183 -> not.
    assert ablation_summary.difference([0.8, 0.9, 1.0], [0.5, 0.6, 0.7]) == "+0.300 (0.082) *"
    assert ablation_summary.difference([0.6, 0.9, 1.2], [0.5, 0.6, 0.7]) == "+0.300 (0.183)"
    assert ablation_summary.difference([0.9], [0.5, 0.6]) == "n/a"  # one seed has no spread


def test_a_plot_with_no_curve_yet_is_written_without_a_warning(tmp_path):
    """Every run failed before its first validation: the summary's plot is empty, and matplotlib is not
    asked for a legend of nothing (its UserWarning would be printed after each failed study)."""

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = ablation_summary.plot_curves({"rgra": [], "grpo": [[]]}, tmp_path / "plot.png", "study")
    assert path.stat().st_size > 0
