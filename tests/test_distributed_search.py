"""The search under ``torchrun`` (2 processes, gloo, CPU): candidates sharded over the ranks, results gathered,
rank 0 alone writing; the result equal to the single-process one, and resumable across a change of world size.

Two levels:

* the engine (``genas.evolution.Search``) with a cheap deterministic score in one ``torchrun`` launch: an
  evolution stopped after 3 generations (state by rank 0) and finished by 1 process; a 1-process state finished
  by 2 processes; exhaustive NB201 (all 15,625) and random search sharded; each equal to the 1-process run;
* the CLI (``genas/search.py``) on the default digits config shrunk by ``--opts``: the supernet is trained once
  (1 process, inside the first search) and the same ``final.pt`` is given to a 2-process search, so what is
  compared is the scoring and search phase: every column of ``scores.csv`` but the timing (``seconds``) equal
  to the last bit, the same ``best_genotype.json``. (Supernet training under DDP with 2 processes sees each
  step's batch split over the ranks, so its weights differ from 1 process; that is training, not search.)

torchrun sets ``OMP_NUM_THREADS=1`` per process and conftest runs this process with 1 thread, so every float
sum is reduced in the same order.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from genas.core.distributed import shard, shard_owner
from genas.core.results import read_result
from genas.evolution import Search, SearchSettings
from genas.search import main
from genas.spaces.nb201 import NB201Space

REPO = Path(__file__).resolve().parents[1]
NB201 = NB201Space()
SMALL = dict(population=20, topk=5, mutation_num=10, crossover_num=10, iterations=6, seed=0)

WORKER = textwrap.dedent('''
    """Runs under torchrun: the scenarios of test_engine_under_torchrun, one JSON file per scenario and rank."""
    import json, sys
    from pathlib import Path
    from genas.core.distributed import cleanup_distributed, init_distributed
    from genas.evolution import Search, SearchSettings
    from genas.spaces.nb201 import NB201Space

    out = Path(sys.argv[1])
    info = init_distributed("cpu")
    space = NB201Space()
    SMALL = json.loads(sys.argv[2])
    mine = []

    def score(arch):  # depends on the exact genes; records which candidates this rank scored
        mine.append(list(arch))
        return {"score": sum((i + 1) * g for i, g in enumerate(arch)) % 7 + 0.01 * arch[0]}

    class Stop(Exception):
        pass

    def stop_after(k):
        def hook(generation, _):
            if generation == k:
                raise Stop
        return hook

    def record(name, outcome):
        mine_now = list(mine)
        mine.clear()
        rec = {"world_size": info.world_size, "mine": mine_now, "topk": outcome.topk,
               "memo": {k: [e["arch"], e["result"]["score"], e["rank"]] for k, e in outcome.memo.items()},
               "history": [{k: v for k, v in h.items() if k != "elapsed_s"} for h in outcome.history],
               "per_rank": outcome.evaluations_per_rank}
        (out / f"{name}.rank{info.rank}.json").write_text(json.dumps(rec))

    # 1. fresh evolution, state saved every 3 scores per rank, stopped after generation 3
    try:
        Search(space, score, SearchSettings(**SMALL), state_path=out / "stopped.json", save_every=3,
               progress=False, on_generation=stop_after(3)).run()
    except Stop:
        pass
    (out / f"stopped.rank{info.rank}.mine.json").write_text(json.dumps(mine))
    mine.clear()
    # 2. a state written by 1 process (stopped after generation 2), finished here
    record("resumed", Search(space, score, SearchSettings(**SMALL), state_path=out / "single.json", save_every=3,
                             progress=False).run(resume=True))
    # 3. exhaustive NB201 (all 15,625) and random search, sharded
    record("exhaustive", Search(space, score, SearchSettings(algorithm="exhaustive", topk=5),
                                state_path=out / "exhaustive.json", progress=False).run())
    record("random", Search(space, score, SearchSettings(algorithm="random", random_num=50, topk=5),
                            progress=False).run())
    cleanup_distributed()
''')


def _score(arch):
    """The worker's score, for the 1-process references."""
    return {"score": sum((i + 1) * g for i, g in enumerate(arch)) % 7 + 0.01 * arch[0]}


def _torchrun(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _summary(outcome) -> dict:
    return {"topk": outcome.topk, "memo": {k: [e["arch"], e["result"]["score"]] for k, e in outcome.memo.items()},
            "history": [{k: v for k, v in h.items() if k != "elapsed_s"} for h in outcome.history]}


def _loaded(path: Path) -> dict:
    rec = json.loads(path.read_text())
    rec["memo"] = {k: v[:2] for k, v in rec["memo"].items()}
    return rec


def test_shard_is_a_fixed_balanced_partition():
    items = list(range(11))
    shares = [shard(items, r, 3) for r in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(shares, [])) == items
    assert all(shares[shard_owner(i, 3)[0]][shard_owner(i, 3)[1]] == i for i in items)
    with pytest.raises(ValueError, match="rank 3"):
        shard(items, 3, 3)


def test_engine_under_torchrun_equals_one_process_and_resumes_across_world_sizes(tmp_path):
    reference = Search(NB201, _score, SearchSettings(**SMALL), progress=False).run()

    class Stop(Exception):
        pass

    def stop_after_2(generation, _):
        if generation == 2:
            raise Stop

    with pytest.raises(Stop):  # the 1-process state that the 2 processes finish
        Search(NB201, _score, SearchSettings(**SMALL), state_path=tmp_path / "single.json", save_every=3,
               progress=False, on_generation=stop_after_2).run()
    (tmp_path / "worker.py").write_text(WORKER)
    _torchrun(str(tmp_path / "worker.py"), str(tmp_path), json.dumps(SMALL))

    # 1 -> 2 processes: both ranks hold the 1-process result; the new generations' work was shared
    ref = _summary(reference)
    for rank in (0, 1):
        rec = _loaded(tmp_path / f"resumed.rank{rank}.json")
        assert {k: rec[k] for k in ref} == ref
    per_rank = json.loads((tmp_path / "resumed.rank0.json").read_text())["per_rank"]
    assert sum(per_rank) == reference.num_evaluations and per_rank[1] > 0

    # 2 -> 1 process: the state written by rank 0 after generation 3, finished here
    state = json.loads((tmp_path / "stopped.json").read_text())
    assert state["generation"] == 3 and len(state["memo"]) == 60
    assert {e["rank"] for e in state["memo"].values()} == {0, 1}
    shares = [json.loads((tmp_path / f"stopped.rank{r}.mine.json").read_text()) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 30  # 20 per generation, 10 each: balanced, disjoint
    assert not {tuple(a) for a in shares[0]} & {tuple(a) for a in shares[1]}
    resumed = Search(NB201, _score, SearchSettings(**SMALL), state_path=tmp_path / "stopped.json", save_every=3,
                     progress=False).run(resume=True)
    assert _summary(resumed) == ref
    assert sum(resumed.evaluations_per_rank) == resumed.num_evaluations and len(resumed.evaluations_per_rank) == 2

    # exhaustive (every one of the 15,625, split 7,813 / 7,812) and random search
    exhaustive = _summary(Search(NB201, _score, SearchSettings(algorithm="exhaustive", topk=5), progress=False).run())
    random = _summary(Search(NB201, _score, SearchSettings(algorithm="random", random_num=50, topk=5),
                             progress=False).run())
    for name, ref in (("exhaustive", exhaustive), ("random", random)):
        recs = [_loaded(tmp_path / f"{name}.rank{r}.json") for r in (0, 1)]
        for rec in recs:
            assert {k: rec[k] for k in ref} == ref and rec["world_size"] == 2
        assert sorted(len(rec["mine"]) for rec in recs) == ([7812, 7813] if name == "exhaustive" else [25, 25])
        assert recs[0]["per_rank"] == [len(recs[0]["mine"]), len(recs[1]["mine"])]
    assert len(exhaustive["memo"]) == 15625


# ------------------------------------------------------------------------------------------------------ CLI
OPTS = ["train.epochs=1", "train.device=cpu", "supernet.C=4", "score.recalib_batches=1",
        "score.batch_size_recalib=64", "score.eval_batches=1", "score.eval_batch_size=64",
        "search.population=6", "search.topk=3", "search.mutation_num=3", "search.crossover_num=3",
        "search.iterations=2"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_cli_two_processes_give_the_one_process_scores_to_the_last_bit(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["--out", str(one), "--no-progress", "--opts", *OPTS]) == 0  # trains the supernet once
    final = one / "supernet" / "final.pt"
    proc = _torchrun("genas/search.py", "--out", str(two), "--no-progress", "--supernet", str(final),
                     "--opts", *OPTS)
    assert proc.stdout.count("best architecture") == 1  # rank 0 alone prints

    rows_one, rows_two = _rows(one / "scores.csv"), _rows(two / "scores.csv")
    assert len(rows_one) > 6 and rows_two == rows_one  # every score and loss as the same decimal string
    assert json.loads((two / "best_genotype.json").read_text()) == json.loads((one / "best_genotype.json").read_text())
    meta_one, meta_two = read_result(one / "summary.json")["meta"], read_result(two / "summary.json")["meta"]
    assert meta_one["world_size"] == 1 and meta_one["evaluations_per_rank"] == [len(rows_one)]
    assert meta_two["world_size"] == 2 and sum(meta_two["evaluations_per_rank"]) == len(rows_two)
    assert min(meta_two["evaluations_per_rank"]) >= len(rows_two) // 2 - 2  # balanced per generation
    assert not (two / "supernet").exists()
    state = json.loads((two / "search_state.json").read_text())
    assert {e["rank"] for e in state["memo"].values()} == {0, 1}
