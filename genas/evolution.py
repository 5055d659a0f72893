"""Architecture search over a :class:`~genas.spaces.base.SearchSpace` with any score function.

Three algorithms share one engine, because they differ only in how each generation's candidates are
proposed: SPOS evolution (top-k parents, mutation over every gene, uniform crossover, random fill), random
search (one generation of ``random_num`` uniform samples) and exhaustive scoring (one generation holding every
architecture of an enumerable space: NAS-Bench-201's 15,625, or its 6,466 isomorphism classes with
``dedupe="isomorphic"``).

Shared by all three:

* a memo keyed by the candidate's key (``search.dedupe``): ``exact`` (default, the reference: RLNAS and GeNAS
  dedupe by the gene tuple) keys by the genes themselves, so every gene tuple is scored once; ``isomorphic``
  keys by :meth:`SearchSpace.key` (NB201: the benchmark's isomorphism class), so one member of a class is
  scored and the others inherit its score -- faster, but isomorphic NB201 cells use different supernet edges
  and their supernet scores (and benchmark accuracies) differ. In the DARTS space both keys are the genes;
* an optional constraint (e.g. max params / FLOPs) that every proposed candidate must satisfy;
* top-k over everything scored so far, ties broken by the key so the ranking is deterministic;
* a resumable JSON state written atomically after every generation (and every ``save_every`` new scores):
  generation index, the numpy ``Generator`` state, the memo, the pending generation and the history. All
  randomness comes from that one generator and the score function is deterministic per architecture, so a run
  killed at any point and resumed ends with exactly the result of an uninterrupted run. A score function whose
  scores depend on evaluation order (``score.fresh_draws``: the reference's running noise and BN-batch streams)
  offers ``stream_state()`` / ``load_stream_state(state)``; its state (one per rank) is saved with the search
  state and restored on resume, so the resumed run's scores equal the uninterrupted run's, score for score.

Distributed (``torchrun``, a ``torch.distributed`` process group initialised by the caller): every rank runs
the same engine with the same generator, so every rank proposes the same candidates. The unscored candidates
of a generation are split by :func:`genas.core.distributed.shard` (round robin over the candidate list: fixed,
balanced by count), each rank scores its share with its own ``score_fn`` (on its own device), and the results
are gathered with ``all_gather_object`` so every rank holds the same memo, inserted in candidate order as a
single process would. Rank 0 alone writes the state file (after the gather) and shows the progress bar; a
resumed run's state is read by rank 0 and broadcast. The state does not depend on the world size, so a run can
be resumed with another number of processes; since a score depends only on the architecture, the result is the
same for every world size. Under running streams each rank's stream runs over its own share, so the scores
depend on the number of processes (one process is the reference's single stream) and a resume needs the same
number. Each memo entry records the rank that scored it (``evaluations_per_rank``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from tqdm.auto import tqdm

from genas.core.config import DEFAULTS
from genas.core.distributed import (all_gather_objects, broadcast_object, get_rank, get_world_size, shard,
                                    shard_owner)
from genas.core.errors import UsageError
from genas.core.io import atomic_write_json
from genas.spaces.base import Arch, SearchSpace
from genas.spaces.registry import SPACE_OPTIONS

__all__ = [
    "ALGORITHMS", "SearchSettings", "SearchOutcome", "Search", "ScoreFn", "Constraint", "rank_value",
    "expand_to_all", "StateError", "check_algorithm", "DEDUPE", "search_key",
]

log = logging.getLogger(__name__)

ALGORITHMS = ("evolution", "random", "exhaustive")
DEDUPE = ("exact", "isomorphic")
STATE_VERSION = 1
#: Proposal attempts allowed per wanted candidate before giving up (SPOS uses 10): a nearly exhausted space
#: or a tight constraint makes a generation smaller instead of looping forever.
TRIES_PER_CANDIDATE = 10

ScoreFn = Callable[[Arch], Mapping[str, Any]]
Constraint = Callable[[Arch], bool]


class StateError(UsageError):
    """A search state file that cannot be resumed (unreadable, or written by a different search)."""


# Defaults are the config's (genas.core.config.DEFAULTS): one place for every default of the suite.
_SEARCH_DEFAULTS = DEFAULTS["search"]


@dataclass(frozen=True)
class SearchSettings:
    """The ``search`` section of a run config minus the constraint limits (see :mod:`genas.cost`)."""

    algorithm: str = _SEARCH_DEFAULTS["algorithm"]
    population: int = _SEARCH_DEFAULTS["population"]
    topk: int = _SEARCH_DEFAULTS["topk"]
    mutation_num: int = _SEARCH_DEFAULTS["mutation_num"]
    mutation_prob: float = _SEARCH_DEFAULTS["mutation_prob"]
    crossover_num: int = _SEARCH_DEFAULTS["crossover_num"]
    iterations: int = _SEARCH_DEFAULTS["iterations"]
    random_num: int = _SEARCH_DEFAULTS["random_num"]
    seed: int = _SEARCH_DEFAULTS["seed"]
    dedupe: str = _SEARCH_DEFAULTS["dedupe"]

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"search.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.dedupe not in DEDUPE:
            raise ValueError(f"search.dedupe must be one of {DEDUPE}, got {self.dedupe!r}")
        for name in ("population", "topk", "iterations", "random_num"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"search.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("mutation_num", "crossover_num"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"search.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= float(self.mutation_prob) <= 1.0:
            raise ValueError(f"search.mutation_prob must be in [0, 1], got {self.mutation_prob!r}")

    @classmethod
    def from_config(cls, search_cfg: Mapping[str, Any]) -> "SearchSettings":
        """Settings from a config's ``search`` section (``max_params``/``max_flops`` are the constraint's)."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = names | {"max_params", "max_flops"} | set(SPACE_OPTIONS)  # constraint and space options
        unknown = sorted(set(search_cfg) - known)
        if unknown:
            raise ValueError(f"unknown search option(s) {unknown}; valid: {sorted(known)}")
        return cls(**{k: v for k, v in search_cfg.items() if k in names})

    @property
    def num_generations(self) -> int:
        return self.iterations if self.algorithm == "evolution" else 1


def check_algorithm(space: SearchSpace, settings: SearchSettings) -> None:
    """``ValueError`` unless ``settings.algorithm`` can run on ``space`` (exhaustive needs an enumerable space)."""
    needed = "enumerate_archs" if settings.dedupe == "exact" else "unique_archs"
    if settings.algorithm == "exhaustive" and not hasattr(space, needed):
        raise ValueError(f"search.algorithm=exhaustive needs a space that enumerates its architectures "
                         f"({needed}()); {space.name!r} cannot: use evolution or random")


def search_key(space: SearchSpace, arch: Arch, dedupe: str) -> str:
    """The memo key of ``arch``: its genes (``exact``) or ``space.key`` (``isomorphic``, NB201's class)."""
    if dedupe == "isomorphic":
        return space.key(arch)
    if dedupe != "exact":
        raise ValueError(f"search.dedupe must be one of {DEDUPE}, got {dedupe!r}")
    return ",".join(str(int(g)) for g in space.validate(arch))


def rank_value(score: float) -> float:
    """The value candidates are ranked by: the score, with NaN counted as the worst possible (-inf)."""
    return -math.inf if score != score else float(score)


def _jsonable(value: Any) -> Any:
    """Scorer outputs as plain JSON types (floats, lists, None) so the memo round-trips through the state."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars/arrays, torch tensors
        return _jsonable(value.tolist())
    if isinstance(value, int):
        return value
    return float(value)


@dataclass
class SearchOutcome:
    """What a finished (or resumed-and-finished) search found."""

    settings: SearchSettings
    memo: dict[str, dict[str, Any]]  # key -> {"arch": [...], "result": {...scorer dict...}, "rank": int}
    topk: list[str]  # keys, best first
    history: list[dict[str, float]]  # one row per generation
    seconds: float  # search time over all sessions of a resumed run
    num_rejected: int = 0  # proposals turned down by the constraint (this session)
    world_size: int = 1  # processes of this session

    def key_of(self, space: SearchSpace, arch: Arch) -> str:
        """The memo key of ``arch`` under this search's ``dedupe``."""
        return search_key(space, arch, self.settings.dedupe)

    @property
    def evaluations_per_rank(self) -> list[int]:
        """Candidates scored by each rank (over all sessions of a resumed run; sums to ``num_evaluations``);
        as long as the larger of this session's world size and the highest rank recorded."""
        ranks = [int(e.get("rank", 0)) for e in self.memo.values()]
        counts = [0] * max(self.world_size, max(ranks, default=-1) + 1)
        for r in ranks:
            counts[r] += 1
        return counts

    def arch(self, key: str) -> Arch:
        return tuple(self.memo[key]["arch"])

    def result(self, key: str) -> dict[str, Any]:
        return self.memo[key]["result"]

    @property
    def best_key(self) -> str:
        return self.topk[0]

    @property
    def best_arch(self) -> Arch:
        return self.arch(self.best_key)

    @property
    def best_score(self) -> float:
        return float(self.result(self.best_key)["score"])

    @property
    def num_evaluations(self) -> int:
        return len(self.memo)

    @property
    def num_nonfinite(self) -> int:
        return sum(not math.isfinite(float(e["result"]["score"])) for e in self.memo.values())

    def ranked_keys(self) -> list[str]:
        """Every scored key, best first (ties by key)."""
        return _ranked(self.memo)


def _ranked(memo: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return sorted(memo, key=lambda k: (-rank_value(float(memo[k]["result"]["score"])), k))


class Search:
    """One search run; ``run()`` starts it or, with ``resume=True`` and a state file, continues it.

    Args:
        space: the search space (sampling, mutation, crossover, canonical keys).
        score_fn: ``arch -> {"score": float, ...}``; higher is better; must be deterministic per architecture.
        settings: algorithm and its sizes.
        constraint: ``arch -> bool``; proposals failing it are never scored (cached per key).
        state_path: where the resumable JSON state lives (``None``: not resumable).
        save_every: also save the state after this many new scores inside a generation (0: per generation).
        fingerprint: JSON-able description of what the scores depend on (metric, sigmas, checkpoint); a resume
            whose fingerprint differs is refused, so scores from two settings never mix.
        progress: show a tqdm bar over scored candidates (rank 0 only).
        on_generation: called as ``on_generation(generation_index, outcome)`` after each saved generation
            (on every rank).
        rank, world_size: this process's place in a distributed search; default: the initialised
            ``torch.distributed`` group's (a single process without one).
    """

    def __init__(self, space: SearchSpace, score_fn: ScoreFn, settings: SearchSettings, *,
                 constraint: Constraint | None = None, state_path: str | Path | None = None, save_every: int = 0,
                 fingerprint: Mapping[str, Any] | None = None, progress: bool = True,
                 on_generation: Callable[[int, SearchOutcome], None] | None = None,
                 rank: int | None = None, world_size: int | None = None):
        check_algorithm(space, settings)
        self.space = space
        self.score_fn = score_fn
        self.settings = settings
        self.constraint = constraint
        self.state_path = Path(state_path) if state_path is not None else None
        self.save_every = int(save_every)
        self.fingerprint = _jsonable(dict(fingerprint or {}))
        self.progress = progress
        self.on_generation = on_generation
        self.rank = get_rank() if rank is None else int(rank)
        self.world_size = get_world_size() if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")
        self._allowed: dict[str, bool] = {}
        self.num_rejected = 0

    # ------------------------------------------------------------------------------------------ state
    def _header(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "space": self.space.name, "settings": dataclasses.asdict(self.settings),
                "fingerprint": self.fingerprint}

    def _load_state(self) -> dict[str, Any]:
        assert self.state_path is not None
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise StateError(f"search state {self.state_path} is not valid JSON ({e}); delete it to start over") from None
        if isinstance(state.get("settings"), dict):
            state["settings"].setdefault("dedupe", "isomorphic")  # states written before search.dedupe existed
        header = self._header()
        different = [k for k in header if state.get(k) != header[k]]
        if different:
            details = "; ".join(f"{k}: state has {state.get(k)!r}, this run has {header[k]!r}" for k in different)
            raise StateError(f"cannot resume {self.state_path}: it was written by a different search ({details}). "
                             f"Use the same config, or another output folder to start a new search")
        return state

    def _fresh_state(self, rng: np.random.Generator) -> dict[str, Any]:
        state = {**self._header(), "generation": 0, "memo": {}, "history": [], "elapsed": 0.0}
        state["population"] = [list(a) for a in self._initial_population(rng, state["memo"])]
        state["rng"] = rng.bit_generator.state
        return state

    def _start_state(self, rng: np.random.Generator, resume: bool) -> dict[str, Any]:
        """The state to run from (resumed or fresh), built on rank 0 and broadcast to every rank."""
        state, error = None, None
        if self.rank == 0:
            try:
                if resume and self.state_path is not None and self.state_path.is_file():
                    state = self._load_state()
                    log.info("resuming search from %s at generation %d/%d (%d scored)", self.state_path,
                             state["generation"], self.settings.num_generations, len(state["memo"]))
                else:
                    state = self._fresh_state(rng)
            except StateError as e:
                if self.world_size == 1:
                    raise
                error = str(e)
        if self.world_size > 1:
            state, error = broadcast_object((state, error))
        if error is not None:
            raise StateError(error)
        rng.bit_generator.state = state["rng"]
        self._restore_streams(state.get("streams"))
        return state

    def _restore_streams(self, streams: list[Any] | None) -> None:
        """Continue the score function's running streams where the saved run left them (one state per rank)."""
        load = getattr(self.score_fn, "load_stream_state", None)
        if streams is None or load is None:
            return
        if len(streams) != self.world_size:
            raise StateError(f"cannot resume {self.state_path}: its scores come from running noise / batch streams "
                             f"(score.fresh_draws) of {len(streams)} process(es); resume with the same number "
                             f"(this run has {self.world_size})")
        load(streams[self.rank])

    def _stream_states(self) -> list[Any] | None:
        """Every rank's ``score_fn.stream_state()`` (a collective under torchrun), or None without streams."""
        get = getattr(self.score_fn, "stream_state", None)
        mine = get() if get is not None else None
        states = [mine] if self.world_size == 1 else all_gather_objects(mine)
        return None if all(s is None for s in states) else states

    def _key(self, arch: Arch) -> str:
        return search_key(self.space, arch, self.settings.dedupe)

    def _save(self, state: dict[str, Any], t0: float, elapsed0: float) -> None:
        state["elapsed"] = elapsed0 + (time.perf_counter() - t0)
        streams = self._stream_states()
        if streams is not None:
            state["streams"] = streams
        if self.state_path is not None and self.rank == 0:
            atomic_write_json(self.state_path, state, indent=None)

    # ------------------------------------------------------------------------------------------ proposals
    def _allowed_by_constraint(self, arch: Arch, key: str) -> bool:
        if self.constraint is None:
            return True
        if key not in self._allowed:
            self._allowed[key] = bool(self.constraint(arch))
            self.num_rejected += not self._allowed[key]
        return self._allowed[key]

    def _collect(self, propose: Callable[[], Arch], wanted: int, taken: set[str], out: list[Arch]) -> None:
        """Append up to ``wanted`` new (key not in ``taken``), constraint-satisfying proposals to ``out``."""
        added, tries = 0, 0
        while added < wanted and tries < wanted * TRIES_PER_CANDIDATE:
            tries += 1
            arch = self.space.validate(propose())
            key = self._key(arch)
            if key in taken or not self._allowed_by_constraint(arch, key):
                continue
            taken.add(key)
            out.append(arch)
            added += 1

    def _random_fill(self, rng: np.random.Generator, size: int, taken: set[str], out: list[Arch]) -> None:
        self._collect(lambda: self.space.sample(rng), size - len(out), taken, out)
        if len(out) < size:
            log.warning("only %d of %d candidates could be proposed (space nearly exhausted or constraint too "
                        "tight); the generation is smaller", len(out), size)

    def _initial_population(self, rng: np.random.Generator, memo: Mapping[str, Any]) -> list[Arch]:
        s = self.settings
        out: list[Arch] = []
        if s.algorithm == "exhaustive":
            archs = self.space.enumerate_archs() if s.dedupe == "exact" else self.space.unique_archs()
            for arch in archs:
                arch = self.space.validate(arch)
                if self._allowed_by_constraint(arch, self._key(arch)):
                    out.append(arch)
            return out
        size = s.population if s.algorithm == "evolution" else s.random_num
        self._random_fill(rng, size, set(memo), out)
        return out

    def _next_population(self, rng: np.random.Generator, memo: Mapping[str, Any], topk: list[str]) -> list[Arch]:
        """SPOS: ``mutation_num`` mutants of uniform top-k parents, ``crossover_num`` children of two distinct
        top-k parents, then random samples up to ``population``; all unseen and within the constraint."""
        s = self.settings
        parents = [tuple(memo[k]["arch"]) for k in topk]
        taken, out = set(memo), []

        def mutant() -> Arch:
            return self.space.mutate(parents[int(rng.integers(len(parents)))], s.mutation_prob, rng)

        def child() -> Arch:
            i, j = rng.choice(len(parents), size=2, replace=False) if len(parents) > 1 else (0, 0)
            return self.space.crossover(parents[int(i)], parents[int(j)], rng)

        self._collect(mutant, s.mutation_num, taken, out)
        self._collect(child, s.crossover_num, taken, out)
        self._random_fill(rng, s.population, taken, out)
        return out

    # ------------------------------------------------------------------------------------------ the run
    def _outcome(self, state: Mapping[str, Any]) -> SearchOutcome:
        memo = state["memo"]
        return SearchOutcome(settings=self.settings, memo=memo, topk=_ranked(memo)[: self.settings.topk],
                             history=list(state["history"]), seconds=float(state["elapsed"]),
                             num_rejected=self.num_rejected, world_size=self.world_size)

    def _score_chunk(self, chunk: list[tuple[str, Arch]], memo: dict[str, dict[str, Any]], bar: tqdm) -> None:
        """Score this rank's share of ``chunk`` (:func:`shard`), gather every rank's results and add them all
        to ``memo`` in ``chunk`` order, so every rank ends with the memo a single process would have."""
        mine = shard(chunk, self.rank, self.world_size)
        results: list[dict[str, Any]] = []
        error = None
        try:
            for _, arch in mine:
                result = _jsonable(dict(self.score_fn(arch)))
                result["score"] = float(result["score"])
                results.append(result)
                bar.update(1)
        except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            if self.world_size == 1:
                raise
            error = e
        gathered = all_gather_objects((results, None if error is None else f"{type(error).__name__}: {error}"))
        failed = [(r, msg) for r, (_, msg) in enumerate(gathered) if msg is not None]
        if error is not None:
            raise error
        if failed:
            r, msg = failed[0]
            raise RuntimeError(f"rank {r} failed while scoring its candidates ({msg}); every rank stops")
        for i, (key, arch) in enumerate(chunk):
            owner, position = shard_owner(i, self.world_size)
            memo[key] = {"arch": list(arch), "result": gathered[owner][0][position], "rank": owner}
        bar.update(len(chunk) - len(mine))  # the other ranks' share (this rank's was counted as it went)

    def _expected_evaluations(self, state: Mapping[str, Any]) -> int:
        s = self.settings
        if s.algorithm == "evolution":
            return s.population * s.iterations
        return len(state["memo"]) + sum(1 for a in state["population"] if self._key(a) not in state["memo"])

    def run(self, resume: bool = False) -> SearchOutcome:
        """Run to the end (or continue a saved run when ``resume`` and the state file exists)."""
        s = self.settings
        rng = np.random.default_rng(s.seed)
        state = self._start_state(rng, resume)
        t0, elapsed0 = time.perf_counter(), float(state["elapsed"])
        memo: dict[str, dict[str, Any]] = state["memo"]
        bar = tqdm(total=self._expected_evaluations(state), initial=len(memo), desc=f"{s.algorithm} search",
                   unit="arch", disable=not (self.progress and self.rank == 0), dynamic_ncols=True)
        try:
            while state["generation"] < s.num_generations:
                # unscored candidates (a resumed run skips those scored before it was killed), in list order
                pending, seen = [], set()
                for arch in state["population"]:
                    key = self._key(tuple(arch))
                    if key not in memo and key not in seen:
                        seen.add(key)
                        pending.append((key, tuple(arch)))
                # chunks of save_every scores per rank, gathered (and saved) after each; 0: the whole generation
                chunk = self.save_every * self.world_size if self.save_every else max(len(pending), 1)
                for start in range(0, len(pending), chunk):
                    self._score_chunk(pending[start:start + chunk], memo, bar)
                    if self.save_every:
                        self._save(state, t0, elapsed0)
                topk = _ranked(memo)[: s.topk]
                scores = [rank_value(memo[k]["result"]["score"]) for k in topk]
                state["generation"] += 1
                state["history"].append({
                    "iteration": state["generation"],
                    "best_score": scores[0] if scores else -math.inf,
                    "mean_topk_score": float(np.mean(scores)) if scores else -math.inf,
                    "evaluated": len(memo),
                    "elapsed_s": elapsed0 + (time.perf_counter() - t0),
                })
                if scores:
                    bar.set_postfix(best=f"{scores[0]:.4g}", refresh=False)
                state["population"] = ([list(a) for a in self._next_population(rng, memo, topk)]
                                       if state["generation"] < s.num_generations and topk else [])
                state["rng"] = rng.bit_generator.state
                self._save(state, t0, elapsed0)
                if self.on_generation is not None:
                    self.on_generation(state["generation"], self._outcome(state))
        finally:
            bar.close()
        if not memo:
            raise RuntimeError("the search scored no architecture: the constraint rejects every proposal "
                               "(raise search.max_params / search.max_flops)")
        return self._outcome(state)


def expand_to_all(space: SearchSpace, outcome: SearchOutcome, archs: Iterable[Arch]) -> list[tuple[Arch, str]]:
    """``(arch, key)`` for every arch of ``archs`` whose key was scored. With ``dedupe="isomorphic"`` the
    exhaustive search scores one architecture per isomorphism class and this lists all members, each inheriting
    its class's score; with ``exact`` each architecture is its own key."""
    return [(tuple(a), k) for a in archs if (k := outcome.key_of(space, tuple(a))) in outcome.memo]
