"""Confusion counts and the scores computed from them."""

from __future__ import annotations

import pytest
import torch

from forestseg.metrics import confusion, scores


def test_confusion_counts_a_handmade_map() -> None:
    output = torch.tensor(
        [
            [
                [2.0, -1.0, 0.5],
                [-3.0, 1.0, 0.0],  # 0.0 is not > 0: background
                [4.0, -0.5, -2.0],
            ]
        ]
    )
    target = torch.tensor([[[1, 1, 0], [0, 1, 1], [0, 0, 0]]], dtype=torch.uint8)
    # pred:  1 0 1 / 0 1 0 / 1 0 0
    counts = confusion(output, target)
    assert counts.dtype == torch.int64
    # tp (0,0),(1,1); fp (0,2),(2,0); fn (0,1),(1,2); tn (1,0),(2,1),(2,2)
    assert counts.tolist() == [2, 2, 2, 3]  # tp, fp, fn, tn
    assert int(counts.sum()) == output.numel()


def test_confusion_uses_the_threshold() -> None:
    output = torch.tensor([0.2, 0.5, 0.6, 0.9, 0.1, 0.7])
    target = torch.tensor([0, 1, 1, 1, 1, 0])
    # > 0.5: 0 0 1 1 0 1 -> tp 2 (0.6, 0.9), fp 1 (0.7), fn 2 (0.5, 0.1), tn 1 (0.2)
    assert confusion(output, target, 0.5).tolist() == [2, 1, 2, 1]
    # > 0: everything forest
    assert confusion(output, target).tolist() == [4, 2, 0, 0]


def test_confusion_reads_float_targets_and_ignores_grad() -> None:
    output = torch.tensor([1.0, -1.0, 1.0, -1.0], requires_grad=True)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert confusion(output, target).tolist() == [1, 1, 1, 1]


def test_confusion_on_a_batch_sums_every_pixel() -> None:
    g = torch.Generator().manual_seed(0)
    output = torch.randn(5, 7, 9, generator=g)
    target = (torch.rand(5, 7, 9, generator=g) > 0.3).to(torch.uint8)
    tp, fp, fn, tn = confusion(output, target).tolist()
    pred, truth = output > 0, target == 1
    assert (tp, fp, fn, tn) == (
        int((pred & truth).sum()),
        int((pred & ~truth).sum()),
        int((~pred & truth).sum()),
        int((~pred & ~truth).sum()),
    )


def test_scores_on_handmade_counts() -> None:
    s = scores([30, 10, 20, 40])  # tp, fp, fn, tn
    assert s["iou"] == pytest.approx(30 / 60)
    assert s["miou"] == pytest.approx((30 / 60 + 40 / 70) / 2)
    assert s["dice"] == pytest.approx(60 / 90)
    assert s["accuracy"] == pytest.approx(70 / 100)
    assert s["precision"] == pytest.approx(30 / 40)
    assert s["recall"] == pytest.approx(30 / 50)
    assert set(s) == {"iou", "miou", "dice", "accuracy", "precision", "recall"}
    assert all(isinstance(v, float) for v in s.values())


def test_scores_accept_tensors_and_dice_is_f1() -> None:
    s = scores(torch.tensor([7, 3, 5, 11]))
    assert s["dice"] == pytest.approx(2 * s["precision"] * s["recall"] / (s["precision"] + s["recall"]))
    assert s["iou"] == pytest.approx(7 / 15)
    assert s["dice"] == pytest.approx(2 * s["iou"] / (1 + s["iou"]))


def test_scores_with_large_counts_are_exact() -> None:
    # Summed over a big test set the counts exceed float32's exact integers (2**24).
    big = 2**25 + 1
    s = scores([big, 1, 0, 0])
    assert s["precision"] == big / (big + 1)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        # No forest in the truth and none predicted: nothing to get wrong, scored 1.
        ([0, 0, 0, 10], {"iou": 1.0, "miou": 1.0, "dice": 1.0, "accuracy": 1.0, "precision": 1.0, "recall": 1.0}),
        # All forest, all predicted: background IoU has an empty denominator.
        ([10, 0, 0, 0], {"iou": 1.0, "miou": 1.0, "dice": 1.0, "accuracy": 1.0, "precision": 1.0, "recall": 1.0}),
        # Nothing predicted, some forest missed: an all-background model must not score precision 1.
        ([0, 0, 4, 6], {"iou": 0.0, "miou": 0.3, "dice": 0.0, "accuracy": 0.6, "precision": 0.0, "recall": 0.0}),
        # No forest, some predicted: recall's denominator is empty, precision is 0.
        ([0, 5, 0, 5], {"iou": 0.0, "miou": 0.25, "dice": 0.0, "accuracy": 0.5, "precision": 0.0, "recall": 1.0}),
        # Nothing at all.
        ([0, 0, 0, 0], {"iou": 1.0, "miou": 1.0, "dice": 1.0, "accuracy": 1.0, "precision": 1.0, "recall": 1.0}),
    ],
)
def test_scores_with_empty_denominators(counts: list[int], expected: dict) -> None:
    assert scores(counts) == pytest.approx(expected)


def test_summed_counts_differ_from_averaged_batch_iou() -> None:
    """Why counts are summed over the whole set before the ratio, never IoU averaged per batch.

    A batch's IoU weighs it equally whatever its forest content: a batch with one forest pixel
    (missed) counts as much as a batch with 100 (all found). Per-batch means also depend on the
    batch size and order; summed counts give the IoU of the set itself, the same however it is cut.
    """
    # Batch A: 100 forest pixels, all found, 100 background pixels. IoU 1.
    out_a = torch.cat([torch.full((100,), 5.0), torch.full((100,), -5.0)])
    tgt_a = torch.cat([torch.ones(100), torch.zeros(100)])
    # Batch B: 1 forest pixel, missed; 1 false alarm. IoU 0.
    out_b = torch.cat([torch.tensor([-5.0, 5.0]), torch.full((198,), -5.0)])
    tgt_b = torch.cat([torch.tensor([1.0, 0.0]), torch.zeros(198)])

    ca, cb = confusion(out_a, tgt_a), confusion(out_b, tgt_b)
    assert ca.tolist() == [100, 0, 0, 100] and cb.tolist() == [0, 1, 1, 198]
    summed = scores(ca + cb)["iou"]
    averaged = (scores(ca)["iou"] + scores(cb)["iou"]) / 2
    assert summed == pytest.approx(100 / 102)
    assert averaged == pytest.approx(0.5)
    assert abs(summed - averaged) > 0.4
    # The summed score equals the score of the whole set evaluated at once, however it is batched.
    whole = scores(confusion(torch.cat([out_a, out_b]), torch.cat([tgt_a, tgt_b])))["iou"]
    assert summed == whole


def test_confusion_per_item_rows_add_up_to_the_whole() -> None:
    g = torch.Generator().manual_seed(0)
    output, target = torch.randn(5, 6, 7, generator=g), (torch.rand(5, 6, 7, generator=g) > 0.5).to(torch.uint8)
    rows = confusion(output, target, 0.2, per_item=True)
    assert rows.shape == (5, 4) and rows.sum(1).tolist() == [42] * 5
    assert rows[2].tolist() == confusion(output[2], target[2], 0.2).tolist()
    assert rows.sum(0).tolist() == confusion(output, target, 0.2).tolist()


def test_a_soft_target_is_forest_only_above_one_half() -> None:
    """Targets are 0/1; a soft one (a resized or smoothed mask) counts as forest above 0.5, not above 0."""
    counts = confusion(torch.tensor([1.0, 1.0, -1.0, -1.0]), torch.tensor([1.0, 0.3, 0.3, 0.7]))
    assert counts.tolist() == [1, 1, 1, 1]
    half = confusion(torch.tensor([1.0, 1.0, -1.0, -1.0]), torch.tensor([1.0, 0.5, 0.5, 0.0]))  # 0.5: not above
    assert half.tolist() == [1, 1, 0, 2]
