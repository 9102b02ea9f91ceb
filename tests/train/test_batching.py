"""Batches: deterministic order, padding per batch, packing without cross-sample attention."""

from __future__ import annotations

import torch
from tinyrun import PAD, make_data, make_model

from lorapipe.train.batching import collate, epoch_steps, load_examples, pack
from lorapipe.train.loss import loss_sum, trainable_tokens


def _flat(steps: list) -> list[int]:
    return [i for step in steps for micro in step for i in micro]


def test_order_is_a_function_of_seed_and_epoch_and_split_independent() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 60, (203,), generator=generator).tolist()
    kwargs = dict(seed=3, group_by_length=True)
    a = epoch_steps(lengths, epoch=1, micro_batch_size=4, accumulation=1, world_size=1, **kwargs)
    b = epoch_steps(lengths, epoch=1, micro_batch_size=1, accumulation=2, world_size=2, **kwargs)
    assert a == epoch_steps(lengths, epoch=1, micro_batch_size=4, accumulation=1, world_size=1,
                            **kwargs)
    assert a != epoch_steps(lengths, epoch=2, micro_batch_size=4, accumulation=1, world_size=1,
                            **kwargs)
    # the same samples in the same effective batches, however a step is split
    assert [sorted(_flat([s])) for s in a] == [sorted(_flat([s])) for s in b]
    assert len(set(_flat(a))) == len(_flat(a)) == 200  # 203 = 50 × 4 + 3: incomplete tail dropped
    # length grouping keeps padding low: micro-batches hold similar lengths
    spread = [max(lengths[i] for i in m) - min(lengths[i] for i in m) for s in a for m in s]
    assert sum(spread) / len(spread) < 5


def test_collate_pads_to_the_longest_row() -> None:
    examples = load_examples(make_data(3))
    batch = collate([[e] for e in examples], PAD)
    width = max(len(ids) for ids, _ in examples)
    assert batch["input_ids"].shape == (3, width)
    assert int(batch["attention_mask"].sum()) == sum(len(ids) for ids, _ in examples)
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert "position_ids" not in batch


def test_pack_fits_every_example_once() -> None:
    lengths = [30, 10, 25, 5, 60, 64, 1, 33]
    rows = pack(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) == 4


def test_packed_and_unpacked_give_the_same_loss() -> None:
    model = make_model()
    model.eval()
    examples = load_examples(make_data(6, seed=4))
    unpacked = collate([[e] for e in examples], PAD)
    packed = collate([examples[:4], examples[4:]], PAD)  # two packed rows, one padded
    assert "attention_mask" not in packed and "position_ids" in packed
    assert trainable_tokens(packed) == trainable_tokens(unpacked)
    with torch.no_grad():
        expected, got = loss_sum(model, unpacked), loss_sum(model, packed)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_loss_sum_matches_cross_entropy_over_full_logits() -> None:
    """The head sees only trained positions; the sum must equal the full-logits one."""
    model = make_model()
    model.eval()
    batch = collate([[e] for e in load_examples(make_data(4, seed=5))], PAD)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits
        expected = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
            ignore_index=-100, reduction="sum")
        got = loss_sum(model, batch)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    # the hook is removed afterwards: a plain forward gives (batch, length, vocab) logits again
    with torch.no_grad():
        assert model(input_ids=batch["input_ids"]).logits.dim() == 3


def test_packing_auto_packs_raw_text_only() -> None:
    """train.packing: auto packs rows when every training sample is a document (raw
    text is packed as pretraining packs it), and leaves conversations one to a row."""
    from datasets import Dataset

    from lorapipe.config import TrainConfig
    from lorapipe.train.accumulation import Accumulation

    def rows(kind: str) -> Dataset:
        ids = [[1] * n for n in (10, 20, 30, 40, 15, 25, 35, 5)]
        return Dataset.from_dict({"input_ids": ids, "labels": ids, "kind": [kind] * len(ids)})

    config = TrainConfig(micro_batch_size=1, gradient_accumulation_steps=1)
    assert config.packing == "auto"
    packed = Accumulation(rows("text"), config, max_length=64, pad_token_id=0, world=1, rank=0)
    single = Accumulation(rows("chat"), config, max_length=64, pad_token_id=0, world=1, rank=0)
    assert len(single.items) == 8 and len(packed.items) < 8
    assert sorted(i for item in packed.items for i in item) == list(range(8))
