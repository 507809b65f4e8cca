"""bench/paper: the oracle's scores from a cached ground truth, and the interaction summary."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench.paper.interaction import summary
from bench.paper.main_table import oracle_scores


def test_oracle_scores_read_the_cached_ground_truth_per_layer_kind_and_bits(tmp_path: Path) -> None:
    gt = {"__w3a3__": 0.58, "cell_wall_s": 12.0, "layers.0.conv1/w2": -0.35, "layers.0.conv1/w3": 0.0,
          "layers.0.conv1/a2": -0.05, "layers.1.shortcut.0/a8": 0.01}
    (tmp_path / "oracle_ground_truth_w3a3.json").write_text(json.dumps(gt))
    scores = oracle_scores(SimpleNamespace(), tmp_path, None, base=(3, 3))  # cached: nothing is measured
    assert scores == {"layers.0.conv1": {"w": {2: -0.35, 3: 0.0}, "a": {2: -0.05}},
                      "layers.1.shortcut.0": {"w": {}, "a": {8: 0.01}}}


def test_interaction_summary_compares_pairs_with_their_singles() -> None:
    inter = np.array([[0.0, 0.02, -0.25], [0.02, 0.0, 0.0], [-0.25, 0.0, 0.0]])
    r = {"interaction": inter.tolist(), "delta": [-0.1, -0.01, -0.3], "all_of_kind": {}}
    s = summary(r)
    assert abs(s["mean_abs_interaction"] - (0.02 + 0.25 + 0.0) / 3) < 1e-12
    assert s["min_interaction"] == -0.25 and s["max_interaction"] == 0.02
    # pair (0,1): 0.02 > 0.055 no; (0,2): 0.25 > 0.2 yes; (1,2): 0 > 0.155 no
    assert abs(s["pairs_interaction_over_half_of_their_deltas"] - 1 / 3) < 1e-12


def test_budget_names_give_the_uniform_policys_bops_or_flash() -> None:
    import pytest

    from bench.paper.main_table import budget_for, uniform_bits
    from deploy.devices.cost import BlobCostModel
    from search.nn.graph import extract_graph
    from search.nn.models import build_model
    from search.policy import Policy

    graph = extract_graph(build_model("resnet8", (3, 32, 32), 10))
    w3a8 = BlobCostModel().omega(graph, Policy.uniform(graph.layer_names(), 3, 8, first_last_8bit=True))
    assert budget_for(graph, "w3a8").items() == {"bops": w3a8.bops}
    assert budget_for(graph, "flash-w3a8").items() == {"flash_bytes": w3a8.flash_bytes}
    # activations cost no flash: the same flash budget from W3A3 and W3A8, not the same BOPs
    assert budget_for(graph, "flash-w3a3") == budget_for(graph, "flash-w3a8")
    assert budget_for(graph, "w3a3").bops < w3a8.bops
    assert budget_for(graph, "w8a8").items() == {}
    assert uniform_bits("flash-w2a8") == (2, 8)
    with pytest.raises(SystemExit, match="must name a uniform policy"):
        uniform_bits("flash=36KB")


def test_smpq_game_options_reach_the_search_settings_only_when_not_the_default(tmp_path: Path) -> None:
    from bench.paper.main_table import budget_for, parse_args, settings_for
    from search.nn.graph import extract_graph
    from search.nn.models import build_model

    graph = extract_graph(build_model("resnet8", (3, 32, 32), 10))
    budget = budget_for(graph, "w2a4")

    def shapley(*flags: str) -> dict:
        args = parse_args(["--fp", "fp.pt", *flags])
        return settings_for(args, "smpq-singleton", "w2a4", budget, 0, tmp_path).shapley

    plain = shapley()
    assert "layout" not in plain and "value" not in plain  # older folders' settings stay as they ran
    assert shapley("--layout", "channels_last", "--value", "probability") == {
        **plain, "layout": "channels_last", "value": "probability"}
    with pytest.raises(SystemExit):
        shapley("--layout", "nhwc")


def test_ablation_variants_parse_to_smpq_options() -> None:
    import pytest

    from bench.paper.ablation import folder_name, parse_variant

    assert parse_variant("base") == {}
    assert parse_variant("update=paper,xi=0.3") == {"update": "paper", "xi": 0.3}
    assert parse_variant("permutations=10") == {"permutations": 10}
    assert parse_variant("threshold=0") == {"threshold": 0}
    assert folder_name("update=paper,xi=0.3") == "update-paper_xi-0.3"
    with pytest.raises(SystemExit, match="is not key=value"):
        parse_variant("permutations")


def test_ablation_report_orders_variants_and_reports_search_compute(tmp_path: Path) -> None:
    from bench.paper.ablation import report

    policy = {"conv1": [8, 8], "layers.0.conv1": [4, 2], "fc": [8, 8]}
    for variant, seed, top1, units in (("permutations=10", 0, 0.75, [100.0, 20.0]), ("base", 0, 0.74, [50.0]),
                                       ("permutations=3", 0, 0.73, [70.0]), ("base", 1, 0.76, [60.0])):
        folder = tmp_path / "runs" / f"{variant}-s{seed}"
        # a search killed after its first unit and resumed: its compute counts every unit, its wall time only
        # the resumed process's
        row = {"search_compute_s": sum(units), "budget": "w2a4", "variant": variant, "method": "smpq", "seed": seed, "top1": top1, "bops": 1.0,
               "flash_bytes": 1.0, "search_s": 3.0, "value_evaluations": 10, "policy": policy, "folder": str(folder),
               "budget_bops": 1.0, "tau": {"tau_all": 0.1 * seed}}
        (tmp_path / "cells").mkdir(exist_ok=True)
        (tmp_path / "cells" / f"{variant}-s{seed}.json").write_text(json.dumps(row))
    agg = report(tmp_path, {"test_accuracy": 0.8})
    assert [a["variant"] for a in agg] == ["base", "permutations=3", "permutations=10"]  # numeric, not text order
    assert agg[0]["top1"]["n"] == 2 and abs(agg[0]["top1"]["mean"] - 0.75) < 1e-12
    assert agg[2]["search_compute_s"]["mean"] == 120.0  # both units, not the resumed process's 3 s
    assert agg[0]["two_bit_inputs"]["mean"] == 1.0 and agg[0]["seed_agreement"]["both"] == 1.0
    assert (tmp_path / "ablation.json").is_file() and (tmp_path / "ablation.png").is_file()


def test_proxy_summary_ranks_by_tau_and_selects_the_best_valued_policy_per_seed() -> None:
    from bench.paper.proxy import summarize

    rows = [{"budget": "w2a4", "method": m, "seed": s, "top1": t, "game": g}
            for m, s, t, g in (("uniform", 0, 0.70, 0.1), ("smpq", 0, 0.75, 0.6), ("hawq", 0, 0.72, 0.5),
                               ("uniform", 1, 0.71, 0.2), ("smpq", 1, 0.69, 0.7), ("hawq", 1, 0.74, 0.4))]
    (s,) = summarize(rows, ["game"])
    assert s["selected_methods"] == ["smpq", "smpq"]  # highest proxy per seed, whatever its top-1
    assert s["selected_top1"] == pytest.approx(0.72) and s["best_top1"] == pytest.approx(0.745)
    assert s["uniform_top1"] == pytest.approx(0.705) and s["cells"] == 6 and -1 <= s["tau"] <= 1


def test_estimator_efficiency_is_plains_variance_per_evaluation_over_the_estimators() -> None:
    from bench.paper.estimator import efficiency

    rng = np.random.default_rng(0)
    plain = rng.normal(size=(4000, 3))
    # half the evaluations per walk at the same variance: twice as efficient
    cheap = rng.normal(size=(4000, 3))
    # stratified blocks of 2 walks whose big terms cancel: the block mean keeps only a small noise
    big = rng.normal(size=(2000, 1, 3))
    paired = (np.concatenate([big, -big], axis=1) + 0.1 * rng.normal(size=(2000, 2, 3))).reshape(4000, 3)
    # half the variance per walk, but a screen that costs as much as all the walks: no better than plain
    screened = rng.normal(scale=np.sqrt(0.5), size=(4000, 3))
    runs = {"plain": {"contributions": plain.tolist(), "n_evaluations": 40000},
            "truncated": {"contributions": cheap.tolist(), "n_evaluations": 20000},
            "stratified": {"contributions": paired.tolist(), "n_evaluations": 40000},
            "images": {"contributions": screened.tolist(), "n_evaluations": 80000}}
    ones = np.ones(3, dtype=int)
    eff = efficiency(runs, {"plain": ones, "truncated": ones, "stratified": 2 * ones, "images": ones})
    assert eff["plain"] == pytest.approx(1.0)
    assert eff["truncated"] == pytest.approx(2.0, rel=0.1)
    # one walk's worth of a block: 2 × Var(mean of two) = 2 × 0.01 / 2 = 0.01 against plain's 1
    assert eff["stratified"] == pytest.approx(100.0, rel=0.15)
    assert eff["images"] == pytest.approx(1.0, rel=0.1)


def test_noise_to_signal_does_not_depend_on_the_games_scale() -> None:
    from bench.paper.estimator import noise_to_signal

    rng = np.random.default_rng(1)
    signal = np.linspace(-1.0, 1.0, 5)
    walks = signal + rng.normal(scale=2.0, size=(3000, 5))
    ones = np.ones(5, dtype=int)
    run = {"contributions": walks.tolist(), "n_evaluations": 3000 * 6}
    base = noise_to_signal(run, ones, signal)
    # variance 4 per walk × 6 evaluations per walk over the signal's variance 0.625
    assert base == pytest.approx(4.0 * 6 / np.var(signal, ddof=1), rel=0.1)
    # a game whose values are 100× smaller, noise and signal alike: the same figure
    scaled = {"contributions": (walks / 100).tolist(), "n_evaluations": 3000 * 6}
    assert noise_to_signal(scaled, ones, signal / 100) == pytest.approx(base, rel=1e-9)


def test_estimator_refuses_walk_estimators_for_singleton_scores(tmp_path) -> None:
    from bench.paper.estimator import main

    with pytest.raises(SystemExit, match="estimator.s. stratified do not apply to --score singleton: choose from plain, images"):
        main(["--fp", "missing.pt", "--output", str(tmp_path), "--score", "singleton", "--estimators", "plain,stratified"])


def test_settings_added_later_take_their_old_value_in_older_folders(tmp_path: Path) -> None:
    from bench.paper.common import check_settings

    check_settings(tmp_path, {"fp": "a.pt", "bn": "batch"})  # a folder recorded before "images" existed
    check_settings(tmp_path, {"fp": "a.pt", "bn": "batch", "images": "uniform"}, added={"images": "uniform"})
    with pytest.raises(SystemExit, match="holds results of other settings .images differ"):
        check_settings(tmp_path, {"fp": "a.pt", "bn": "batch", "images": "stratified"}, added={"images": "uniform"})
    with pytest.raises(SystemExit, match="holds results of other settings .images differ"):
        check_settings(tmp_path, {"fp": "a.pt", "bn": "batch", "images": "uniform"})


def test_headroom_random_policies_fill_the_budget_deterministically(tmp_path: Path) -> None:
    from bench.paper.headroom import parse_args, random_policy
    from bench.paper.main_table import budget_for
    from deploy.devices.cost import BlobCostModel
    from search.nn.graph import extract_graph
    from search.nn.models import build_model
    from search.policy import Policy

    graph = extract_graph(build_model("resnet8", (3, 32, 32), 10))
    args = parse_args(["--fp", "unused.pt", "--output", str(tmp_path)])
    limit = budget_for(graph, "w2a4").bops
    policies = [random_policy(graph, args, "w2a4", k) for k in range(4)]
    assert random_policy(graph, args, "w2a4", 0) == policies[0]  # the same k, the same policy
    assert len({json.dumps(p) for p in policies}) == 4
    for p in policies:
        bops = BlobCostModel().omega(graph, Policy(p)).bops
        assert 0.8 * limit <= bops <= limit  # fits and fills: wider candidates score higher
        assert p["conv1"] == [8, 8] and p["fc"] == [8, 8]  # first and last layer held at 8 bits
        assert {b for layer in p.values() for b in layer} <= {2, 3, 4, 8}


def test_headroom_lists_a_compared_policy_once_per_seed_with_its_aliases(tmp_path: Path) -> None:
    from bench.paper.headroom import compared_policies, method_of

    pol = {"conv1": [8, 8], "l": [2, 4], "fc": [8, 8]}
    cells = [{"budget": "w2a4", "method": "smpq", "seed": 0, "policy": pol, "top1": 0.7},
             {"budget": "w2a4", "method": "smpq-guarded", "seed": 0, "policy": pol, "top1": 0.7},
             {"budget": "w2a4", "method": "smpq", "seed": 1, "policy": pol, "top1": 0.71},
             {"budget": "w4a4", "method": "smpq", "seed": 0, "policy": {**pol, "l": [4, 4]}, "top1": 0.8}]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "main_table.json").write_text(json.dumps({"cells": cells}))
    got = compared_policies(str(tmp_path / "m" / "main_table.json"), "w2a4")
    assert sorted(got) == ["m.smpq.s0", "m.smpq.s1"]
    assert got["m.smpq.s0"]["aliases"] == ["m.smpq-guarded.s0"] and got["m.smpq.s1"]["seeds"] == [1]
    assert method_of("m.smpq-guarded.s0") == "m.smpq-guarded"
    with pytest.raises(SystemExit, match="does not exist"):
        compared_policies(str(tmp_path / "missing.json"), "w2a4")


def test_headroom_merges_methods_whose_rows_are_the_same_policies() -> None:
    from bench.paper.headroom import method_rows

    def row(policy: str, aliases: list[str], n: int = 1) -> dict:
        return {"policy": policy, "kind": "method", "aliases": aliases, "top1": {"n": n, "mean": 0.7}}

    rows = [row("f.smpq.s0", ["f.smpq-guarded.s0"]), row("f.smpq.s1", ["f.smpq-guarded.s1"]),
            row("f.uniform.s0", []), row("f.uniform.s1", ["f.guarded-w4.s1"]), row("f.edmips.s0", [], n=0),
            {"policy": "random00", "kind": "random", "aliases": [], "top1": {"n": 1, "mean": 0.7}}]
    got = {m: [r["policy"] for r in mine] for m, mine in method_rows(rows).items()}
    assert got == {"f.smpq = f.smpq-guarded": ["f.smpq.s0", "f.smpq.s1"],  # the guard kept every searched policy
                   "f.uniform": ["f.uniform.s0", "f.uniform.s1"], "f.guarded-w4": ["f.uniform.s1"]}
