"""Evaluation on every worker: two gloo workers, each encoding its own batches of every set and
scoring its own blocks, give the metrics of one worker, also when a set's size is not a multiple of
the workers or the batch size; re-mining at each evaluation is split over the word list the same
way."""

from __future__ import annotations

import gc
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raymmft.config import EvalConfig
from raymmft.data import open_dataset
from raymmft.evaluation import Evaluator
from raymmft.model import build_model
from raymmft.ood.corpus import corpus_from_words

CLASSES = ["red circle", "blue square", "green star", "pink triangle"]
SETTINGS = {
    "scores": ["neglabel", "mcm", "energy"],
    "batch_size": 4,  # 23 ID images: 6 batches, 3 + 3; 9 far images: 3 batches, 1 + 2
    "neglabel": {"keep_fraction": 0.5, "ngroups": 2},
}
WORDS = [f"word{i}" for i in range(37)]
# two gloo processes each: ~10 s apiece on two cores
pytestmark = pytest.mark.slow


def _evaluate(rank: int, world_size: int, remine: bool) -> dict:
    torch.manual_seed(0)
    bundle = build_model("raymmft-tiny")
    spec = {"uri": "builtin:shapes", "split": "test"}
    id_set = open_dataset({**spec, "classes": CLASSES, "num_samples": 23}, bundle.preprocess_eval)
    ood = {
        "far": open_dataset(
            {**spec, "classes": "far_ood", "num_samples": 9}, bundle.preprocess_eval
        ),
        "near": open_dataset(
            {**spec, "classes": ["black star", "blue circle"], "num_samples": 5},
            bundle.preprocess_eval,
        ),
    }
    neglabel = {**SETTINGS["neglabel"], "remine_each_eval": remine}
    evaluator = Evaluator(
        EvalConfig(**{**SETTINGS, "neglabel": neglabel}),
        bundle,
        CLASSES,
        id_set,
        ood,
        rank=rank,
        world_size=world_size,
        corpus=corpus_from_words(WORDS),
        out=None,
    )
    encoded = []
    original = bundle.model.encode_image
    bundle.model.encode_image = lambda x, *a, **k: encoded.append(len(x)) or original(x, *a, **k)
    result = evaluator.evaluate(bundle.model)
    return {
        "images_encoded": sum(encoded),
        "per_set": result.per_set,
        "id_accuracy": result.id_accuracy,
        "modality_gap": result.modality_gap,
        "num_id": result.num_id,
        "num_ood": result.num_ood,
        "num_negatives": result.num_negatives,
        "id_scores": {k: v.tolist() for k, v in result.id_scores.items()},
    }


def _gloo_worker(rank, port, out_dir, fn, args):
    """``fn(rank, 2, *args)`` on rank ``rank`` of a 2-process gloo group, its result saved."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.save(fn(rank, 2, *args), os.path.join(out_dir, f"rank{rank}.pt"))
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _on_two_workers(tmp_path, fn, *args) -> list:
    """Both ranks' ``fn(rank, 2, *args)``, run in two spawned gloo processes."""
    mp.start_processes(
        _gloo_worker, args=(_port(), str(tmp_path), fn, args), nprocs=2, start_method="spawn"
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def _assert_same(one: dict, two: dict) -> None:
    assert (
        (two["num_id"], two["num_ood"])
        == (one["num_id"], one["num_ood"])
        == (23, {"far": 9, "near": 5})
    )
    assert two["num_negatives"] == one["num_negatives"]
    assert two["id_accuracy"] == one["id_accuracy"]
    assert abs(two["modality_gap"] - one["modality_gap"]) < 1e-9
    for score, values in one["id_scores"].items():
        np.testing.assert_allclose(two["id_scores"][score], values, rtol=0, atol=1e-6)
    for name, by_score in one["per_set"].items():
        for score, metrics in by_score.items():
            for metric, value in metrics.items():
                assert abs(two["per_set"][name][score][metric] - value) <= 1e-6, (
                    name,
                    score,
                    metric,
                )


def test_two_workers_evaluate_like_one(tmp_path):
    one = _evaluate(0, 1, remine=False)
    ranks = _on_two_workers(tmp_path, _evaluate, False)
    for two in ranks:  # every rank gets the whole evaluation
        _assert_same(one, two)
    # each image encoded once, by one rank: ID 12 + 11, far 4 + 5, near 4 + 1
    assert one["images_encoded"] == 37
    assert [r["images_encoded"] for r in ranks] == [20, 17]


def test_remining_split_over_two_workers_mines_like_one(tmp_path):
    one = _evaluate(0, 1, remine=True)
    assert one["num_negatives"] == 18
    for two in _on_two_workers(tmp_path, _evaluate, True):
        _assert_same(one, two)


def _score_blocks(rank: int, world_size: int) -> dict:
    """``evaluate_embeddings`` on 2,600 ID and 1,100 OoD rows (3 + 2 score blocks), counting the
    rows this rank scores."""
    from raymmft import evaluation
    from raymmft.ood.scores import OodScore as Score

    gen = torch.Generator().manual_seed(3)

    def unit(n: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(n, 16, generator=gen), dim=-1)

    text, negatives = unit(5), unit(40)
    id_feats, ood_feats = unit(2600), unit(1100)
    labels = torch.randint(0, 5, (2600,), generator=gen)
    scored = []
    original = Score.call_with
    Score.call_with = lambda self, f, *a, **k: scored.append(len(f)) or original(self, f, *a, **k)
    try:
        result = evaluation.evaluate_embeddings(
            id_feats,
            labels,
            text,
            {"far": ood_feats},
            scores=["neglabel", "mcm"],
            primary_score="neglabel",
            params={"ngroups": 2},
            inputs={"neglabel": {"neg_text_features": negatives}},
            rank=rank,
            world_size=world_size,
        )
    finally:
        Score.call_with = original
    return {
        "rows_scored": sum(scored) // 2,  # two scores per block
        "id_scores": {k: v.tolist() for k, v in result.id_scores.items()},
        "ood_scores": {k: v.tolist() for k, v in result.ood_scores["far"].items()},
        "per_set": result.per_set,
    }


def test_scoring_is_split_over_two_workers_block_by_block(tmp_path):
    one = _score_blocks(0, 1)
    assert one["rows_scored"] == 3700
    ranks = _on_two_workers(tmp_path, _score_blocks)
    # blocks of 1,024 rows: rank 0 scores ID block 1 of 3 and OoD block 1 of 2, rank 1 the rest
    assert [r["rows_scored"] for r in ranks] == [1024 + 1024, 1576 + 76]
    for two in ranks:  # the same blocks as one worker: the same scores, bit for bit
        assert two["id_scores"] == one["id_scores"]
        assert two["ood_scores"] == one["ood_scores"]
        assert two["per_set"] == one["per_set"]


TEXT = [f"a photo of a {' '.join(['big'] * (i % 5))} {w}." for i, w in enumerate(WORDS[:13])]


def _encode_text(rank: int, world_size: int) -> dict:
    from raymmft.ood.embed import TextEncoder

    torch.manual_seed(0)
    bundle = build_model("raymmft-tiny")
    encoder = TextEncoder(
        bundle.model, bundle.tokenizer, batch_size=2, rank=rank, world_size=world_size
    )
    batches = []
    original = bundle.model.encode_text
    bundle.model.encode_text = lambda t, *a, **k: batches.append(len(t)) or original(t, *a, **k)
    return {"features": encoder(TEXT), "batches": batches}


def test_text_is_split_over_two_workers_by_tokens_and_put_back_in_order(tmp_path):
    one = _encode_text(0, 1)
    assert one["batches"] == [2] * 6 + [1]
    ranks = _on_two_workers(tmp_path, _encode_text)
    # 7 batches of 13 prompts shared by tokens: each rank encodes some, together all, once
    assert all(r["batches"] for r in ranks)
    assert sum(sum(r["batches"]) for r in ranks) == 13
    for two in ranks:  # the same batches as one worker: the same features, row for row
        assert torch.equal(two["features"], one["features"])
