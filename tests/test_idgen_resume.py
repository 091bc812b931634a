"""Algorithm 1 with its candidates on disk: a run killed (SIGKILL) in the middle of a round resumes to exactly
the uninterrupted table, which is exactly the one-item reference walk's; a store of another run is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fusionrec.trainer.idgen.candidate_store import CandidateStore, texts_hash
from fusionrec.trainer.idgen.generator import IDGenConfig, assign_ids_sequential, generate_ids
from fusionrec.trainer.models import ModelConfig, build_seq2seq, load_tokenizer, train_tokenizer

pytestmark = pytest.mark.unit

BRANDS = ["acme", "lumina", "verde", "nordic", "sol", "aurora"]
KINDS = ["shampoo", "conditioner", "lotion", "serum", "cream", "gel"]
CFG = dict(batch_size=4, window=4, lambda_max=4.0, max_windows=2)

# The child: the same model and texts, every job slowed down so that the parent can kill it mid-round.
CHILD = """
import sys, time, json
from transformers import T5ForConditionalGeneration
from fusionrec.trainer.idgen.candidate_store import CandidateStore, texts_hash
from fusionrec.trainer.idgen.candidates import LocalGenerator
from fusionrec.trainer.idgen.generator import IDGenConfig, generate_ids
from fusionrec.trainer.models import load_tokenizer
folder, store_dir, cfg = sys.argv[1], sys.argv[2], IDGenConfig(**json.loads(sys.argv[3]))
texts = json.loads(open(folder + "/texts.json").read())
model, tok = T5ForConditionalGeneration.from_pretrained(folder + "/model").eval(), load_tokenizer(folder + "/tok")
source = LocalGenerator(model, tok, cfg, texts)
def slow(jobs):
    for j, (a, keys) in enumerate(jobs):
        time.sleep(0.3)
        yield j, source.run(a, keys)
store = CandidateStore(store_dir, {"texts": texts_hash(texts)})
generate_ids(model, tok, texts, cfg, runner=slow, store=store)
"""


def _texts(n: int) -> dict[str, str]:
    # 9 distinct titles for n items: collisions force second attempts and several rounds.
    return {f"i{k:03d}": f"title: {BRANDS[k % 3]} {KINDS[k % 3 + 3 * (k % 2)]} {8 * (k % 3 + 1)} oz" for k in range(n)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    import json

    folder = tmp_path_factory.mktemp("gen")
    corpus = [f"{b} {k} {s} oz for dry skin" for b in BRANDS for k in KINDS for s in (8, 16, 24)] * 5
    tok = train_tokenizer(corpus, folder / "tok", vocab_size=200)
    model = build_seq2seq(ModelConfig("tiny-t5", d_model=32, d_ff=64, num_heads=2, seed=3), tokenizer=tok)
    model.save_pretrained(folder / "model")
    (folder / "texts.json").write_text(json.dumps(_texts(36)))
    return folder


def _load(folder: Path):
    from transformers import T5ForConditionalGeneration

    return T5ForConditionalGeneration.from_pretrained(folder / "model").eval(), load_tokenizer(folder / "tok")


def test_killed_mid_round_resumes_to_the_uninterrupted_and_reference_table(saved, tmp_path):
    import json

    model, tok = _load(saved)
    texts, cfg = _texts(36), IDGenConfig(**CFG)
    store_dir = tmp_path / "store"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(saved), str(store_dir), json.dumps(CFG)],
                             env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(store_dir.glob("round-00000.job-*.json"))) < 4:  # round 0 has 9 jobs
        assert child.poll() is None, "the child finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = len(list(store_dir.glob("round-*.job-*.json")))
    assert 4 <= done < 9 and not list(store_dir.glob(".*"))  # mid-round, and no half-written file left

    resumed = generate_ids(model, tok, texts, cfg, store=CandidateStore(store_dir, {"texts": texts_hash(texts)}))
    uninterrupted = generate_ids(model, tok, texts, cfg)
    reference = assign_ids_sequential(model, tok, texts, cfg)
    assert resumed.as_dict() == uninterrupted.as_dict() == reference.as_dict()
    assert uninterrupted.stats["walks"] > 1 and uninterrupted.stats["second_attempt_share"] > 0
    # Every stored job was reused, not recomputed, and the finished store replays without any model work.
    again = generate_ids(None, tok, texts, cfg, runner=_no_work, store=CandidateStore(store_dir, {"texts": texts_hash(texts)}))
    assert again.as_dict() == reference.as_dict()


def _no_work(jobs):
    raise AssertionError(f"a complete store must not run jobs, got {len(jobs)}")
    yield  # pragma: no cover


def test_store_of_another_run_is_refused(saved, tmp_path):
    model, tok = _load(saved)
    texts = _texts(8)
    generate_ids(model, tok, texts, IDGenConfig(**CFG), store=CandidateStore(tmp_path, {"texts": texts_hash(texts)}))
    other = dict(texts, i000="title: sol gel 8 oz")
    with pytest.raises(ValueError, match=r"store.json: the stored ID-generation run differs in \['texts'\]"):
        CandidateStore(tmp_path, {"texts": texts_hash(other)})


def _sharded_table(folder: str) -> tuple[dict[str, str], int, int]:
    """One rank of a gloo group: Algorithm 1 with the jobs spread over the ranks (ShardedRunner)."""
    import torch.distributed as dist
    from fusionrec.trainer.idgen.candidates import LocalGenerator, ShardedRunner

    dist.init_process_group("gloo")
    model, tok = _load(Path(folder))
    texts, cfg = _texts(36), IDGenConfig(**CFG)
    local, ran = LocalGenerator(model, tok, cfg, texts), []

    def counted(jobs):
        for j, result in local(jobs):
            ran.append(len(result))
            yield j, result

    def gather(obj):
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    runner = ShardedRunner(counted, dist.get_rank(), dist.get_world_size(), gather)
    table = generate_ids(None, tok, texts, cfg, runner=runner)
    return table.as_dict(), sum(ran), table.stats["item_attempts_generated"]


def test_jobs_sharded_over_two_ranks_give_the_single_process_table(saved):
    from fusionrec.trainer.testing import run_distributed_test

    model, tok = _load(saved)
    single = generate_ids(model, tok, _texts(36), IDGenConfig(**CFG))
    assert single.stats["walks"] > 1  # collisions: several rounds of jobs, each one sharded
    ranks = run_distributed_test(_sharded_table, world_size=2, folder=str(saved))
    assert ranks[0][0] == ranks[1][0] == single.as_dict()
    total = single.stats["item_attempts_generated"]
    assert ranks[0][2] == ranks[1][2] == total  # every rank absorbed every result
    assert ranks[0][1] + ranks[1][1] == total and ranks[0][1] > 0 and ranks[1][1] > 0  # each job ran once


def test_sharded_runner_refuses_a_rank_outside_the_world():
    from fusionrec.trainer.idgen.candidates import ShardedRunner

    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, world_size=2\)"):
        ShardedRunner(lambda jobs: iter(()), 2, 2, lambda obj: [obj])
