"""Whole searches through search.runner on a tiny real dataset (scikit-learn digits, ResNet-8)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.devices.cost import BlobCostModel, record_bytes
from search.budget import Budget
from search.nn.data import BatchLoader
from search.errors import SearchError
from search.policy import Policy
from search.nn.qat import QATConfig, load_qat, policy_hash
from search.nn.qmodel import policy_of
from search.policy import validate_policy_file
from search.runner import SearchSettings, run_search
from search.nn.train import evaluate
from tests.digits_fp import fp  # noqa: F401  (a pytest fixture)


def _settings(fp: dict, method: str, out: Path, **kw) -> SearchSettings:
    base = dict(method=method, fp=fp["path"], output=str(out), accelerator="cpu", epochs=1, warmup_epochs=0,
                batch_size=64, progress=False, qat=QATConfig(epochs=0, batch_size=64, progress=False),
                shapley={"permutations": 2, "rounds": 2, "steps_per_round": 3}, subset=512, cost_model=BlobCostModel())
    base.update(kw)
    return SearchSettings(**base)


def _check_outputs(outcome, budget: Budget) -> dict:
    record = json.loads(outcome.policy_path.read_text())
    validate_policy_file(outcome.policy_path)
    for key, limit in budget.items().items():
        assert getattr(outcome.omega, key) <= limit
        assert record["budget"][key]["ok"] and record["budget"][key]["value"] <= limit
    assert [(L["w_bits"], L["a_bits"]) for L in record["layers"]] == [tuple(b) for b in outcome.policy.values()]
    assert Policy.load(outcome.policy_path) == outcome.policy  # deploy reads it with search.policy
    # per-layer flash covers every instance of the layer: with the records and the normalise op's data it
    # adds up to the whole blob
    fixed = record_bytes(outcome.omega.schedule) + sum(r.flash_bytes for r in outcome.omega.layers if r.op_type == "normalise")
    assert fixed + sum(L["flash_bytes"] for L in record["layers"]) == outcome.omega.flash_bytes
    return record


def test_uniform_search_writes_valid_policy_and_loadable_qat(fp: dict, tmp_path: Path) -> None:
    budget = Budget(bops=fp["w4a4"].bops)
    s = _settings(fp, "uniform", tmp_path, budget=budget, qat=QATConfig(epochs=1, batch_size=64, progress=False))
    outcome = run_search(s, dataset=fp["dataset"])
    record = _check_outputs(outcome, budget)
    assert record["selection"]["how"] == "fixed" and record["value_evaluations"] == 0
    assert all((L["w_bits"], L["a_bits"]) == ((8, 8) if L["held_8bit"] else (4, 4)) for L in record["layers"])
    model, meta = load_qat(outcome.qat_path)
    test = BatchLoader(fp["dataset"].test, fp["dataset"], 500)
    assert evaluate(model, test).accuracy == pytest.approx(record["accuracy"]["qat_test"], abs=1e-9)
    assert policy_of(model) == outcome.policy and "policy" not in meta  # stored once: in policy.json
    assert meta["policy_file"] == "policy.json" and meta["policy_hash"] == policy_hash(outcome.policy)
    other = json.loads(outcome.policy_path.read_text())  # a policy.json that is not qat.pt's: refused
    other["layers"][1]["w_bits"] = 2
    outcome.policy_path.write_text(json.dumps(other))
    with pytest.raises(SearchError, match="is not the policy") as e:
        load_qat(outcome.qat_path)
    assert "\n" not in str(e.value)
    outcome.policy_path.unlink()
    with pytest.raises(SearchError, match="which is missing"):
        load_qat(outcome.qat_path)


def test_smpq_search_meets_a_binding_budget_and_reloads_identically(fp: dict, tmp_path: Path) -> None:
    budget = Budget(bops=0.8 * fp["w4a4"].bops)  # below W4A4: the knapsack must work for it
    outcome = run_search(_settings(fp, "smpq", tmp_path, budget=budget), dataset=fp["dataset"])
    record = _check_outputs(outcome, budget)
    assert record["value_evaluations"] > 0
    free = [L for L in record["layers"] if not L["held_8bit"]]
    assert all(L["scores"] and L["normalized_scores"] for L in free)
    # default scores: mean ψ in accuracy units, handed to the knapsack as additive values / max |score|
    assert record["selection"]["normalization"] == "summed score / max |score|"
    assert record["method_details"]["game"] == "fallback" and record["method_details"]["update"] == "mean"
    top = max(abs(v) for L in free for k in ("w", "a") for v in L["normalized_scores"][k].values())
    assert top == pytest.approx(1.0)
    assert (tmp_path / "search_state.pt").is_file() and (tmp_path / "qat.pt").is_file()
    again = run_search(_settings(fp, "smpq", tmp_path, budget=budget), dataset=fp["dataset"])
    assert again.policy == outcome.policy
    # the search's compute counts the units of the first process, which the second only reloaded
    units = [json.loads(line)["wall_s"] for line in (tmp_path / "smpq_log.jsonl").read_text().splitlines()
             if "wall_s" in line]
    compute = again.record["timings_s"]["search_compute"]
    assert units and compute == pytest.approx(sum(units)) == record["timings_s"]["search_compute"]


def test_smpq_paper_preset_keeps_softmax_scores(fp: dict, tmp_path: Path) -> None:
    budget = Budget(bops=0.8 * fp["w4a4"].bops)
    s = _settings(fp, "smpq", tmp_path, budget=budget,
                  shapley={"preset": "paper", "permutations": 2, "rounds": 1, "steps_per_round": 0})
    record = _check_outputs(run_search(s, dataset=fp["dataset"]), budget)
    assert record["method_details"]["game"] == "zero" and record["method_details"]["update"] == "paper"
    free = [L for L in record["layers"] if not L["held_8bit"]]
    assert all(sum(L["normalized_scores"]["w"].values()) == pytest.approx(1.0) for L in free)
    with pytest.raises(SearchError, match="unknown preset"):
        run_search(_settings(fp, "smpq", tmp_path / "x", shapley={"preset": "nope"}), dataset=fp["dataset"])


def test_edmips_search_meets_budget_reports_cd_and_resumes_trials(fp: dict, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import search.runner as runner

    budget = Budget(bops=fp["w4a4"].bops)
    first = run_search(_settings(fp, "edmips", tmp_path, budget=budget, edmips_trials=1), dataset=fp["dataset"])
    trial0 = first.record["method_details"]["trials"][0]
    calls = []
    real = runner._edmips_trial
    monkeypatch.setattr(runner, "_edmips_trial", lambda *a, **k: calls.append(a[5]) or real(*a, **k))
    outcome = run_search(_settings(fp, "edmips", tmp_path, budget=budget, edmips_trials=2), dataset=fp["dataset"])
    record = _check_outputs(outcome, budget)
    details = record["method_details"]
    assert details["trials"][0] == trial0  # the finished trial was kept, not searched again
    assert len(calls) == len(details["trials"]) - 1 and len(details["trials"]) in (1, 2)
    if len(details["trials"]) == 2:  # bracketing: ×10 after a miss, ÷10 after a hit
        assert details["trials"][1]["cd"] == pytest.approx(trial0["cd"] * (0.1 if trial0["fits"] else 10.0))
    assert details["cd"] in [t["cd"] for t in details["trials"]]
    assert details["reached_budget"] == any(t["fits"] for t in details["trials"])
    # every trial's compute counts, the one finished by the first process included
    total, t0 = record["timings_s"]["search_compute"], first.record["timings_s"]["search_compute"]
    assert t0 > 0 and (total > t0 if len(details["trials"]) == 2 else total == pytest.approx(t0))


def test_edmips_under_a_flash_budget_uses_model_size_and_bisects_on_flash(fp: dict, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import search.edmips as edmips

    seen = []
    real = edmips.run_edmips
    monkeypatch.setattr(edmips, "run_edmips", lambda sn, ds, cfg, out, dev, cost, **k:
                        seen.append((cfg.complexity, cost.keys)) or real(sn, ds, cfg, out, dev, cost, **k))
    budget = Budget(flash_bytes=int(fp["w4a4"].flash_bytes))
    outcome = run_search(_settings(fp, "edmips", tmp_path, budget=budget, edmips_trials=2, edmips_cd=0.01),
                         dataset=fp["dataset"])
    details = _check_outputs(outcome, budget)["method_details"]
    assert details["complexity"] == "flash" and len(details["trials"]) == 2
    first, second = details["trials"]
    assert first["fits"] == (first["flash_bytes"] <= budget.flash_bytes)  # judged on flash, not on BOPs
    assert second["cd"] == pytest.approx(first["cd"] * (0.1 if first["fits"] else 10.0))
    # both trials trained against the expected flash of the deployment's cost model
    assert [c for c, _ in seen] == ["flash", "flash"] and all("flash_bytes" in keys for _, keys in seen)
    # a budget the widest policy already meets does not bind: one search at the given cd, no bisection
    loose = run_search(_settings(fp, "edmips", tmp_path / "loose", budget=Budget(flash_bytes=10**9), edmips_trials=3),
                       dataset=fp["dataset"])
    assert len(loose.record["method_details"]["trials"]) == 1


def test_impossible_budget_names_smallest_achievable(fp: dict, tmp_path: Path) -> None:
    s = _settings(fp, "smpq", tmp_path, budget=Budget(flash_bytes=1000))
    s.shapley = {"permutations": 1, "rounds": 1, "steps_per_round": 0}
    with pytest.raises(SearchError, match=r"flash budget .* is impossible for resnet8 .* smallest achievable is \d"):
        run_search(s, dataset=fp["dataset"])
    assert not (tmp_path / "search_state.pt").exists()  # reported before any search work
    with pytest.raises(SearchError, match="uniform W4A4 violates the budget"):
        run_search(_settings(fp, "uniform", tmp_path, budget=Budget(bops=0.5 * fp["w4a4"].bops)), dataset=fp["dataset"])


def test_policy_schema_rejects_bad_files(fp: dict, tmp_path: Path) -> None:
    outcome = run_search(_settings(fp, "uniform", tmp_path), dataset=fp["dataset"])
    good = json.loads(outcome.policy_path.read_text())
    validate_policy_file(good)
    bad_bits = json.loads(json.dumps(good))
    bad_bits["layers"][1]["w_bits"] = 9
    with pytest.raises(SearchError, match=r"layers\.1\.w_bits"):
        validate_policy_file(bad_bits)
    missing = {k: v for k, v in good.items() if k != "omega"}
    with pytest.raises(SearchError, match="omega"):
        validate_policy_file(missing)


def test_cli_search_uniform(fp: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from deploy.cli.main import main

    rc = main(["search", "--method", "uniform", "--uniform", "w8a4", "--model", "resnet8", "--dataset", "digits",
               "--fp", fp["path"], "--output", str(tmp_path), "--budget-bops", "1G", "--qat-epochs", "0",
               "--accelerator", "cpu", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    record = validate_policy_file(tmp_path / "policy.json")
    assert record.budget["bops"].limit == 1e9
    assert {(L.w_bits, L.a_bits) for L in record.layers if not L.held_8bit} == {(8, 4)}
    assert "policy" in capsys.readouterr().out
    rc = main(["search", "--method", "uniform", "--model", "resnet20", "--dataset", "digits", "--fp", fp["path"],
               "--output", str(tmp_path / "x"), "--qat-epochs", "0", "--no-progress"])
    assert rc == 2 and "holds resnet8" in capsys.readouterr().err


def test_cli_search_smpq_takes_the_last_of_group_score_from_the_pipeline_config(fp: dict, tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture) -> None:
    from deploy.cli.main import main

    rc = main(["search", "--method", "smpq", "--model", "resnet8", "--dataset", "digits", "--fp", fp["path"],
               "--output", str(tmp_path), "--epochs", "1", "--warmup-epochs", "0", "--subset", "256", "--qat-epochs", "0",
               "--accelerator", "cpu", "--no-progress", "--set", "search.shapley.permutations=3",
               "--set", "search.shapley.score=last"])
    assert rc == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "policy.json").read_text())
    assert record["method_details"]["score"] == "last" and record["method_details"]["game"] == "fallback"


def test_cli_search_smpq_plays_on_the_calibrated_supernet_without_training(fp: dict, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    from deploy.cli.main import main

    rc = main(["search", "--method", "smpq", "--model", "resnet8", "--dataset", "digits", "--fp", fp["path"],
               "--output", str(tmp_path), "--epochs", "1", "--warmup-epochs", "0", "--subset", "256", "--qat-epochs", "0",
               "--accelerator", "cpu", "--no-progress", "--set", "search.shapley.permutations=2",
               "--set", "search.shapley.rounds=2", "--set", "search.shapley.steps_per_round=0",
               "--set", "search.shapley.bn=batch"])
    assert rc == 0, capsys.readouterr().err
    log = [json.loads(line) for line in (tmp_path / "smpq_log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in log[1:]] == ["round", "train", "round"]
    assert [r["steps"] for r in log if r["kind"] == "train"] == [0]  # the supernet is never trained
    record = json.loads((tmp_path / "policy.json").read_text())
    assert record["method_details"]["rounds"] == 2 and record["settings"]["shapley"]["bn"] == "batch"
    rc = main(["search", "--method", "smpq", "--model", "resnet8", "--dataset", "digits", "--fp", fp["path"],
               "--output", str(tmp_path / "x"), "--no-progress", "--set", "search.shapley.steps_per_round=-1"])
    assert rc == 2 and "steps_per_round" in capsys.readouterr().err


def test_smpq_verified_budget_step_keeps_the_best_valued_policy(fp: dict, tmp_path: Path) -> None:
    import torch

    from search.nn.data import mixed_batches
    from search.nn.train import load_checkpoint
    from search.runner import build_supernet
    from search.supernet import masked_accuracy

    budget = Budget(bops=0.8 * fp["w4a4"].bops)
    s = _settings(fp, "smpq", tmp_path, budget=budget, verify_top=2, w_bits=(2, 4, 8), a_bits=(2, 4, 8),
                  shapley={"permutations": 2, "rounds": 1, "steps_per_round": 0, "bn": "batch"}, warmup_epochs=0)
    outcome = run_search(s, dataset=fp["dataset"])
    record = _check_outputs(outcome, budget)
    rows = record["selection"]["verified"]
    assert [r["source"] for r in rows[:3]] == ["knapsack", "knapsack #2", "knapsack #3"]
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
    assert [r["source"] for r in rows[3:]] == ["uniform w2a4", "uniform w4a2"]  # w·a ≤ 12.8: the widest uniform ones
    assert all(r["bops"] <= budget.bops for r in rows) and len({json.dumps(r["policy"]) for r in rows}) == len(rows)
    chosen = [r for r in rows if r.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["value"] == max(r["value"] for r in rows)
    assert {n: [b.w_bits, b.a_bits] for n, b in outcome.policy.items()} == chosen[0]["policy"]
    assert record["selection"]["how"].endswith(", verified")
    # a value is the searched supernet's top-1 with exactly that policy (BatchNorm as the game: batch statistics)
    model, _ = load_checkpoint(fp["path"])
    sn = build_supernet(model, fp["dataset"], s)
    sn.load_state_dict(torch.load(tmp_path / "supernet.pt", weights_only=True)["state_dict"])
    val = mixed_batches(fp["dataset"].val.subset(s.subset), fp["dataset"], 500)
    for r in (rows[0], rows[-1]):
        mask = sn.policy_mask(Policy(r["policy"].items()))
        assert masked_accuracy(sn, val, mask, "batch") == pytest.approx(r["value"], abs=1e-12)


def test_uniform_guard_keeps_uniform_unless_the_chosen_policy_is_measurably_better(fp: dict, tmp_path: Path) -> None:
    """guard_uniform's decision rule, with per-image hits given (the game itself is tested below)."""
    from dataclasses import replace

    import torch

    from search.nn.graph import extract_graph
    from search.nn.train import load_checkpoint
    from search.runner import guard_uniform, widest_uniform

    graph = extract_graph(load_checkpoint(fp["path"])[0])
    s = _settings(fp, "smpq", tmp_path, budget=Budget(bops=fp["w4a4"].bops), w_bits=(2, 4, 8), a_bits=(2, 4, 8),
                  uniform_guard=2.0)
    uniform = widest_uniform(graph, s)[(4, 4)]
    mixed = Policy({**uniform, next(n for n, b in uniform.items() if b.w_bits == 4): uniform["conv1"]}.items())
    base = torch.tensor([True] * 600 + [False] * 400)

    def game(extra: int):  # the mixed policy gets `extra` more images right than W4A4 (W2A8, W8A2: none)
        better = torch.cat([base[:600], torch.arange(400) < extra])
        return lambda p: base if p == uniform else better if p == mixed else torch.zeros(1000, dtype=torch.bool)

    kept, g = guard_uniform(graph, mixed, s, game(3))  # +0.3 pp, standard error ≈ 0.17 pp: not 2 SE
    assert kept == uniform and g["kept"] == "uniform" and g["uniform"] == "w4a4"
    assert g["difference"] == pytest.approx(0.003) and g["difference"] < 2 * g["standard_error"]
    assert g["value_uniform"] == pytest.approx(0.6) and g["images"] == 1000
    kept, g = guard_uniform(graph, mixed, s, game(40))  # +4 pp: far beyond 2 SE
    assert kept == mixed and g["kept"] == "search" and g["value_chosen"] == pytest.approx(0.64)
    kept, g = guard_uniform(graph, mixed, replace(s, uniform_guard=0.0), game(0))  # equal values, z 0: uniform (not better)
    assert kept == uniform
    kept, g = guard_uniform(graph, uniform, s, game(0))  # the chosen policy is the uniform one
    assert kept == uniform and g["kept"] == "search"
    with pytest.raises(SearchError, match="uniform_guard"):
        _settings(fp, "smpq", tmp_path, uniform_guard=-1.0)


def test_smpq_uniform_guard_records_the_game_values_of_both_policies(fp: dict, tmp_path: Path) -> None:
    import torch

    from search.nn.data import mixed_batches
    from search.nn.train import load_checkpoint
    from search.runner import build_supernet
    from search.supernet import masked_accuracy

    budget = Budget(bops=fp["w4a4"].bops)
    s = _settings(fp, "smpq", tmp_path, budget=budget, uniform_guard=1e9, w_bits=(2, 4, 8), a_bits=(2, 4, 8),
                  shapley={"permutations": 2, "rounds": 1, "steps_per_round": 0, "bn": "batch", "score": "singleton"},
                  warmup_epochs=0)
    outcome = run_search(s, dataset=fp["dataset"])
    record = _check_outputs(outcome, budget)
    g = record["selection"]["guard"]
    assert g["uniform"] == "w4a4" and g["z"] == 1e9 and "uniform guard (z 1e+09" in record["selection"]["how"]
    uniform = Policy.uniform(list(outcome.policy), 4, 4, first_last_8bit=True)
    assert outcome.policy == uniform  # no policy is a billion standard errors better
    model, _ = load_checkpoint(fp["path"])
    sn = build_supernet(model, fp["dataset"], s)
    sn.load_state_dict(torch.load(tmp_path / "supernet.pt", weights_only=True)["state_dict"])
    val = mixed_batches(fp["dataset"].val.subset(s.subset), fp["dataset"], 500)
    assert masked_accuracy(sn, val, sn.policy_mask(uniform), "batch") == pytest.approx(g["value_uniform"], abs=1e-12)
    searched = Policy((n, tuple(b)) for n, b in g["searched_policy"].items())
    assert masked_accuracy(sn, val, sn.policy_mask(searched), "batch") == pytest.approx(g["value_chosen"], abs=1e-12)
    assert g["images"] == len(fp["dataset"].val.subset(s.subset))
