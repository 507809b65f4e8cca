"""Checks `smpq-deploy run` makes before any stage starts, so that bad settings stop in seconds, not hours.

The config itself (method names, bit lists, budget syntax) is validated when it loads; here: the
resolved budget against the device, the candidate bits against the device's ``allowed_bits``, the
dataset (it loads and is checked), and the budget's feasibility under the device's cost model — the
knapsack's lower bound: with flat scores the budget step either finds a policy or names the smallest
achievable flash / BOPs / latency of the candidate bits. The architecture alone prices a policy, so an
untrained model is enough. Ethos-U devices (Vela prices the layers from the FP weights) skip that last
check: the search does it before its first epoch.
"""
from __future__ import annotations

from typing import Any

from search.errors import SearchError


def check_run(cfg: Any, subset: int | None) -> None:
    """Raise the user error a stage would raise later for these settings, now."""
    from deploy.pipeline.config import candidate_bits
    from deploy.ethosu.stage import is_ethos_u
    from search.nn.data import load_dataset

    profile = cfg.profile()
    budget = cfg.budget()
    w_bits, a_bits, _ = candidate_bits(cfg, profile)
    dataset = load_dataset(cfg.dataset.name, cfg.dataset.data_dir and str(cfg.dataset.data_dir), seed=cfg.seed)
    if subset is not None and subset > len(dataset.train):
        raise SearchError(f"--subset {subset} is more than the {len(dataset.train)} training images of {cfg.dataset.name}")
    if is_ethos_u(profile) or not budget.items():
        return
    _check_feasible(cfg, profile, budget, w_bits, a_bits, dataset)


def _check_feasible(cfg: Any, profile: Any, budget: Any, w_bits: list[int], a_bits: list[int], dataset: Any) -> None:
    from deploy.devices.cost import BlobCostModel
    from deploy.devices.profiles import latency_model
    from search import runner
    from search.cost import check
    from search.nn.graph import extract_graph
    from search.nn.models import build_model

    model = build_model(cfg.model.name, dataset.input_shape, dataset.num_classes, **cfg.model.model_kwargs)
    graph = extract_graph(model)
    names = graph.layer_names()
    sc = cfg.search
    settings = runner.SearchSettings(
        method=sc.method, fp="", output=str(cfg.output), budget=budget, cost_model=BlobCostModel(latency_model(profile)),
        w_bits=tuple(w_bits), a_bits=tuple(a_bits), first_last_8bit=sc.first_last_8bit,
        uniform_bits=(sc.uniform.w_bits, sc.uniform.a_bits), progress=False)
    what = f"{cfg.model.name} on {profile.name} with bits w{list(settings.w_bits)} a{list(settings.a_bits)}"
    if sc.method == "uniform":
        policy = runner._uniform(names, settings).fixed_policy
        bad = check(runner.evaluate_omega(graph, policy, settings), budget)
        if bad:
            raise SearchError(f"uniform W{settings.uniform_bits[0]}A{settings.uniform_bits[1]} violates the budget of "
                              f"{profile.name} ({'; '.join(str(v) for v in bad)}): use fewer uniform bits or "
                              f"--set search.method=smpq")
        return
    flat = {n: {"w": {b: 0.0 for b in settings.w_bits}, "a": {b: 0.0 for b in settings.a_bits}} for n in names}
    runner.select(graph, flat, settings, what)
