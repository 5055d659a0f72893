"""The search engine (genas/evolution.py) on the real NB201 and DARTS spaces with cheap deterministic scores.

The optimiser is what is tested, so the score is a fixed function of the architecture's canonical key (the
number of 3x3 convs in its NB201 cell expression, etc.): its optimum is found here by brute force over the
6,466 unique cells, independently of the search. ``search.dedupe`` (exact gene tuples by default, NB201
isomorphism classes as the speed option) is tested with scores that do and do not depend on the exact genes.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from torch import nn

from genas.core.config import load_config
from genas.evolution import Search, SearchSettings, expand_to_all, search_key
from genas.cost import CostConstraint, NetworkCost, count_macs, count_params
from genas.spaces.darts import EDGES_PER_CELL, DartsSpace
from genas.spaces.nb201 import NB201Space, build_network, enumerate_archs, unique_archs

NB201 = NB201Space()
SMALL = dict(population=20, topk=5, mutation_num=10, crossover_num=10, iterations=10, seed=0)


def conv_count_score(arch) -> dict:
    """Isomorphism-invariant (a function of the key): 3x3 convs, then 1x1 convs, minus pools, in the cell."""
    key = NB201.key(arch)
    return {"score": key.count("nor_conv_3x3") + 0.1 * key.count("nor_conv_1x1") - 0.01 * key.count("avg_pool_3x3")}


class CountingScore:
    """A score function that records every call (to check the memo)."""

    def __init__(self, space, fn=conv_count_score, fail_after: int | None = None, dedupe: str = "exact"):
        self.space, self.fn, self.fail_after, self.dedupe = space, fn, fail_after, dedupe
        self.keys: list[str] = []

    def __call__(self, arch):
        if self.fail_after is not None and len(self.keys) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.keys.append(search_key(self.space, arch, self.dedupe))
        return self.fn(arch)


def gene_score(arch) -> dict:
    """Depends on the exact genes (as a supernet score does: isomorphic cells use different edges)."""
    return {"score": conv_count_score(arch)["score"] + 1e-3 * sum(i * g for i, g in enumerate(arch))}


def test_evolution_finds_brute_force_optimum_where_random_search_does_not():
    scores = {NB201.key(a): conv_count_score(a)["score"] for a in unique_archs()}
    optimum = max(scores.values())
    best_keys = [k for k, v in scores.items() if v == optimum]
    assert optimum == pytest.approx(7.0) and len(best_keys) == 1  # all-3x3 cell: 7 convs in its expression

    outcome = Search(NB201, conv_count_score, SearchSettings(**SMALL), progress=False).run()
    assert NB201.key(outcome.best_arch) == best_keys[0]
    assert outcome.best_score == pytest.approx(7.0)
    assert outcome.num_evaluations <= 20 * 10
    assert [h["iteration"] for h in outcome.history] == list(range(1, 11))
    best_curve = [h["best_score"] for h in outcome.history]
    assert best_curve == sorted(best_curve) and best_curve[-1] == pytest.approx(7.0)
    # the same budget of uniform samples stays far below it (so the evolution operators do the work)
    rand = Search(NB201, conv_count_score, SearchSettings(algorithm="random", random_num=200, seed=0),
                  progress=False).run()
    assert rand.num_evaluations == 200 and rand.best_score < 6.0


@pytest.mark.parametrize("dedupe", ["exact", "isomorphic"])
def test_memo_scores_each_key_once(dedupe):
    counter = CountingScore(NB201, dedupe=dedupe)
    outcome = Search(NB201, counter, SearchSettings(**SMALL, dedupe=dedupe), progress=False).run()
    assert len(counter.keys) == len(set(counter.keys)) == outcome.num_evaluations
    assert sorted(outcome.memo) == sorted(counter.keys)
    classes = [NB201.key(outcome.arch(k)) for k in outcome.memo]
    if dedupe == "isomorphic":  # one member per class
        assert len(set(classes)) == len(classes)
    else:  # gene tuples: two members of one class may both be scored
        assert all(k == ",".join(map(str, outcome.arch(k))) for k in outcome.memo)
    assert outcome.history[-1]["evaluated"] == len(counter.keys)
    # top-k: the 5 best scored, ties broken by key
    expected = sorted(outcome.memo, key=lambda k: (-outcome.result(k)["score"], k))[:5]
    assert outcome.topk == expected
    assert outcome.history[-1]["mean_topk_score"] == pytest.approx(np.mean([outcome.result(k)["score"] for k in expected]))


class RecordingDartsSpace(DartsSpace):
    """The real DARTS space, recording each (parent, child) of mutation and crossover."""

    def __init__(self):
        self.mutations, self.crossovers = [], []

    def mutate(self, arch, prob, rng):
        child = super().mutate(arch, prob, rng)
        self.mutations.append((tuple(arch), child))
        return child

    def crossover(self, a, b, rng):
        child = super().crossover(a, b, rng)
        self.crossovers.append((tuple(a), tuple(b), child))
        return child


def test_darts_evolution_mutates_and_crosses_reduce_genes():
    space = RecordingDartsSpace()
    # score only the reduce cell: count of sep_conv_3x3 (op 4) there
    outcome = Search(space, lambda a: {"score": float(sum(g == 4 for g in a[EDGES_PER_CELL:]))},
                     SearchSettings(population=12, topk=4, mutation_num=6, crossover_num=6, iterations=4,
                                    mutation_prob=0.1, seed=1), progress=False).run()
    assert len(space.mutations) >= 18 and len(space.crossovers) >= 18
    reduce_mutated = [c for p, c in space.mutations if p[EDGES_PER_CELL:] != c[EDGES_PER_CELL:]]
    normal_mutated = [c for p, c in space.mutations if p[:EDGES_PER_CELL] != c[:EDGES_PER_CELL]]
    assert reduce_mutated and normal_mutated
    # a crossover child's reduce cell mixes both parents' reduce cells somewhere
    assert any(c[EDGES_PER_CELL:] not in (a[EDGES_PER_CELL:], b[EDGES_PER_CELL:]) for a, b, c in space.crossovers)
    for key in outcome.memo:  # every scored candidate is a valid DARTS arch (2 edges per node)
        space.validate(outcome.arch(key))


def test_params_constraint_is_respected():
    cost = NetworkCost(NB201, num_classes=10)
    limit = 0.6e6
    constraint = CostConstraint(cost, max_params=limit)
    outcome = Search(NB201, conv_count_score, SearchSettings(population=8, topk=3, mutation_num=4,
                                                             crossover_num=4, iterations=3, seed=0),
                     constraint=constraint, progress=False).run()
    assert outcome.num_rejected > 0  # the limit binds (the all-3x3 cell has 1,531,546 params)
    for key in outcome.memo:  # recount independently of fvcore
        net = build_network(outcome.arch(key), num_classes=10)
        assert sum(p.numel() for p in net.parameters()) <= limit
    assert count_params(build_network((3,) * 6, num_classes=10)) == 1_531_546


def test_flops_are_multiply_adds_and_limits_are_checked():
    # conv 3->8, 3x3, on 8x8 (padding 1): 8*3*9 MACs per output pixel * 64 pixels; linear 512->10: 5,120;
    # the BatchNorm is not a multiply-add layer and is not counted (papers' convention)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Flatten(),
                          nn.Linear(8 * 64, 10))
    assert count_macs(model, (3, 8, 8)) == 8 * 3 * 9 * 64 + 512 * 10
    assert count_params(model) == 8 * 3 * 9 + 2 * 8 + 512 * 10 + 10
    with pytest.raises(ValueError, match="max_flops must be a positive number"):
        CostConstraint(NetworkCost(NB201, 10), max_flops=-1)


def _final(outcome):
    return ([(k, outcome.result(k)["score"]) for k in outcome.topk],
            [{k: v for k, v in h.items() if k != "elapsed_s"} for h in outcome.history], sorted(outcome.memo))


def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    settings = SearchSettings(**SMALL)
    reference = _final(Search(NB201, conv_count_score, settings, state_path=tmp_path / "a.json",
                              progress=False).run())

    # killed after generation 3 (the state of generation 3 is on disk), then resumed
    def kill_after_3(generation, _):
        if generation == 3:
            raise KeyboardInterrupt("simulated kill")

    state = tmp_path / "b.json"
    with pytest.raises(KeyboardInterrupt):
        Search(NB201, conv_count_score, settings, state_path=state, progress=False, on_generation=kill_after_3).run()
    assert _final(Search(NB201, conv_count_score, settings, state_path=state, progress=False).run(resume=True)) == reference

    # killed inside a generation (state saved every 3 scores), then resumed: only unsaved scores are redone
    state = tmp_path / "c.json"
    first = CountingScore(NB201, fail_after=47)
    with pytest.raises(KeyboardInterrupt):
        Search(NB201, first, settings, state_path=state, save_every=3, progress=False).run()
    second = CountingScore(NB201)
    resumed = Search(NB201, second, settings, state_path=state, save_every=3, progress=False).run(resume=True)
    assert _final(resumed) == reference
    # generation 3 starts after 40 scores; saves at 43 and 46, so only the 47th score is redone
    assert len(first.keys) + len(second.keys) - resumed.num_evaluations == 1
    assert resumed.seconds > 0


def test_resume_refuses_a_state_of_another_search(tmp_path):
    state = tmp_path / "s.json"
    Search(NB201, conv_count_score, SearchSettings(**SMALL), state_path=state, fingerprint={"metric": "flatness"},
           progress=False).run()
    with pytest.raises(ValueError, match="different search.*population"):
        Search(NB201, conv_count_score, SearchSettings(**{**SMALL, "population": 21}), state_path=state,
               fingerprint={"metric": "flatness"}, progress=False).run(resume=True)
    with pytest.raises(ValueError, match="fingerprint"):
        Search(NB201, conv_count_score, SearchSettings(**SMALL), state_path=state, fingerprint={"metric": "angle"},
               progress=False).run(resume=True)


def test_dedupe_default_is_exact_and_is_a_config_choice():
    assert SearchSettings().dedupe == "exact" == load_config(None)["search"]["dedupe"]
    assert load_config(None, ["search.dedupe=isomorphic"])["search"]["dedupe"] == "isomorphic"
    with pytest.raises(ValueError, match="search.dedupe must be one of"):
        load_config(None, ["search.dedupe=fuzzy"])
    with pytest.raises(ValueError, match="search.dedupe must be one of"):
        SearchSettings(dedupe="fuzzy")


def test_a_state_from_before_dedupe_resumes_as_isomorphic(tmp_path):
    """State files written before ``search.dedupe`` existed deduped by isomorphism class: they resume as that."""
    import json
    state = tmp_path / "s.json"
    iso = SearchSettings(**SMALL, dedupe="isomorphic")
    reference = _final(Search(NB201, conv_count_score, iso, state_path=state, progress=False).run())
    saved = json.loads(state.read_text())
    del saved["settings"]["dedupe"]
    state.write_text(json.dumps(saved))
    assert _final(Search(NB201, conv_count_score, iso, state_path=state, progress=False).run(resume=True)) == reference
    with pytest.raises(ValueError, match="different search.*dedupe"):
        Search(NB201, conv_count_score, SearchSettings(**SMALL), state_path=state, progress=False).run(resume=True)


def test_exhaustive_nb201_scores_all_15625_by_default():
    """The reference (RLNAS) scores every one of the 15,625 cells: isomorphic ones get their own scores."""
    counter = CountingScore(NB201, fn=gene_score)
    outcome = Search(NB201, counter, SearchSettings(algorithm="exhaustive", topk=3), progress=False).run()
    assert len(counter.keys) == len(set(counter.keys)) == outcome.num_evaluations == 15625
    assert sorted(outcome.arch(k) for k in outcome.memo) == sorted(enumerate_archs())
    for key, entry in outcome.memo.items():  # each arch's own score, nothing copied
        assert entry["result"]["score"] == gene_score(tuple(entry["arch"]))["score"]
    # two isomorphic cells (conv1x1(x0) reaches node 3 directly or through node 1) keep their own scores
    a, b = (1, 0, 0, 2, 2, 2), (2, 0, 0, 2, 1, 2)
    assert NB201.key(a) == NB201.key(b)
    assert outcome.result(search_key(NB201, a, "exact")) != outcome.result(search_key(NB201, b, "exact"))
    rows = expand_to_all(NB201, outcome, enumerate_archs())
    assert len(rows) == 15625 and len({k for _, k in rows}) == 15625


def test_exhaustive_nb201_isomorphic_scores_6466_classes_and_expands_to_15625():
    counter = CountingScore(NB201, dedupe="isomorphic")
    outcome = Search(NB201, counter, SearchSettings(algorithm="exhaustive", topk=3, dedupe="isomorphic"),
                     progress=False).run()
    assert len(counter.keys) == len(set(counter.keys)) == 6466
    rows = expand_to_all(NB201, outcome, enumerate_archs())
    assert len(rows) == 15625
    assert Counter(k for _, k in rows)[outcome.best_key] == Counter(NB201.key(a) for a in enumerate_archs())[outcome.best_key]
    assert outcome.best_score == pytest.approx(7.0)


def test_nonfinite_scores_rank_last_and_are_counted():
    def score(arch):
        return {"score": math.nan if arch[0] == 0 else (-math.inf if arch[0] == 1 else float(arch[0]))}
    outcome = Search(NB201, score, SearchSettings(algorithm="random", random_num=60, topk=60, seed=0),
                     progress=False).run()
    ranked = [outcome.result(k)["score"] for k in outcome.topk]
    finite = [s for s in ranked if math.isfinite(s)]
    assert ranked[: len(finite)] == sorted(finite, reverse=True)
    assert outcome.num_nonfinite == len(ranked) - len(finite) > 0


@pytest.mark.parametrize("bad, match", [({"algorithm": "bayes"}, "algorithm"), ({"topk": 0}, "topk"),
                                        ({"mutation_prob": 1.5}, "mutation_prob")])
def test_bad_settings_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        SearchSettings(**bad)
    with pytest.raises(ValueError, match="unknown search option.*popsize"):
        SearchSettings.from_config({"popsize": 3})
