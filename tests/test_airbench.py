"""airbench94 from visfeat parts against the airbench package's own code (PyPI airbench 0.1.8), piece by piece:
the net, the whitening init, one optimizer step, the lr schedule, lookahead, TTA, the alternating flip; then
the recipe learns."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from bench.airbench import reference_on
from models.airbench import AirbenchNet
from models.net import Net
from trainer.callbacks.lookahead import Lookahead
from trainer.optim import decoupled_sgd, norm_names, param_groups, triangle
from trainer.tta import tta_logits

airbench = pytest.importorskip("airbench")
from airbench import lib_airbench94, utils  # noqa: E402

WIDTHS = {"block1": 8, "block2": 16, "block3": 16}


def ours_and_reference(seed: int = 0) -> tuple[Net, torch.nn.Module]:
    """Our net and airbench's make_net94 (on CPU, fp32) with the same weights."""
    with reference_on("cpu"):
        torch.manual_seed(seed)
        ref = lib_airbench94.make_net94(widths=WIDTHS)
    ref = ref.to(memory_format=torch.contiguous_format)
    ours = Net(backbone=AirbenchNet(widths=list(WIDTHS.values())), num_classes=10, head_bias=False, logit_scale=1 / 9)
    ours.load_state_dict({**ref_to_ours(ref.state_dict()), "backbone.whitened": torch.tensor(False)}, strict=True)
    return ours, ref


def ref_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """airbench's nn.Sequential keys -> ours: 0 whiten, 2-4 the conv groups, 7 the linear head."""
    out = {}
    for key, value in state.items():
        index, _, rest = key.partition(".")
        if index == "0":
            out[f"backbone.stem.0.{rest}"] = value
        elif index in ("2", "3", "4"):
            out[f"backbone.block{int(index) - 1}.0.{rest}"] = value
        elif index == "7":
            out[f"head.{rest}"] = value
    return out


def test_net_equals_make_net94():
    ours, ref = ours_and_reference()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    frozen = {n for n, p in ours.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone.stem.0.weight"} | {n for n in norm_names(ours) if n.endswith("weight")}
    x = torch.randn(4, 3, 32, 32)
    for mode in ("train", "eval"):
        ours.train(mode == "train")
        ref.train(mode == "train")
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    bn = ours.backbone.block1[0].norm1
    assert bn.eps == 1e-12 and bn.momentum == pytest.approx(0.4)


def test_whitening_equals_airbench():
    ours, ref = ours_and_reference()
    images = torch.randn(64, 3, 32, 32) * torch.rand(1, 3, 1, 1) + torch.randn(1, 3, 1, 1)
    utils.init_whitening_conv(ref[0], images, eps=5e-4)
    ours.backbone.init_whitening(images, eps=5e-4)
    torch.testing.assert_close(ours.backbone.whiten.weight, ref[0].weight, rtol=1e-4, atol=1e-5)
    # and it whitens: the first half of the filters decorrelates 2x2 patches (covariance diagonal)
    k = ours.backbone.whiten.weight[:12].flatten(1)  # (12, 12)
    patches = utils.get_patches(images, (2, 2)).flatten(1)
    cov = k @ (patches.T @ patches / len(patches)) @ k.T
    off = cov - torch.diag(torch.diagonal(cov))
    assert off.abs().max() < 1e-3 * torch.diagonal(cov).max()


def test_one_step_equals_airbench_sgd():
    """airbench: summed loss, lr / kilostep, 64x for BatchNorm biases; ours: mean loss, decoupled_sgd."""
    ours, ref = ours_and_reference()
    hyp, batch = lib_airbench94.hyp["opt"], 32
    momentum, kilo = hyp["momentum"], 1024 * (1 + 1 / (1 - hyp["momentum"]))
    lr, wd = hyp["lr"] / kilo, hyp["weight_decay"] * batch / kilo
    norm_biases = [p for k, p in ref.named_parameters() if "norm" in k and p.requires_grad]
    other = [p for k, p in ref.named_parameters() if "norm" not in k and p.requires_grad]
    ref_opt = torch.optim.SGD(
        [
            dict(params=norm_biases, lr=lr * hyp["bias_scaler"], weight_decay=wd / (lr * hyp["bias_scaler"])),
            dict(params=other, lr=lr, weight_decay=wd / lr),
        ],
        momentum=momentum,
        nesterov=True,
    )
    groups = param_groups(ours.named_parameters(), skip=set(), weight_decay=hyp["weight_decay"], norm=norm_names(ours))
    opt = decoupled_sgd(
        groups,
        lr=hyp["lr"],
        momentum=momentum,
        weight_decay=hyp["weight_decay"],
        batch_size=batch,
        norm_lr_scale=hyp["bias_scaler"],
    )
    torch.manual_seed(1)
    for _ in range(3):  # momentum builds up over steps
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        ref_loss = F.cross_entropy(ref(x), y, label_smoothing=0.2, reduction="none").sum()
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
        loss = F.cross_entropy(ours(x), y, label_smoothing=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ours_after = ref_to_ours(ref.state_dict())
    for name, value in ours.state_dict().items():
        if name != "backbone.whitened":
            torch.testing.assert_close(value, ours_after[name], rtol=1e-4, atol=1e-6, msg=name)


def test_triangle_equals_airbench_schedule():
    total = 387
    xp = torch.tensor([0, int(0.23 * total), total])
    fp = torch.tensor([0.2, 1.0, 0.07])
    x = torch.arange(1 + total)
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    b = fp[:-1] - m * xp[:-1]
    idx = torch.clamp(torch.sum(torch.ge(x[:, None], xp[None, :]), 1) - 1, 0, len(m) - 1)
    expected = m[idx] * x + b[idx]  # airbench's triangle(), lib utils.train
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    factor = triangle(opt, total_steps=total, steps_per_epoch=39).lr_lambdas[0]
    torch.testing.assert_close(torch.tensor([factor(i) for i in range(1 + total)]), expected, rtol=1e-5, atol=1e-6)


def test_lookahead_equals_airbench():
    ours, ref = ours_and_reference()
    module = torch.nn.Module()
    module.net = ours
    state = utils.LookaheadState(ref)
    look = Lookahead()
    look.on_train_start(None, module)
    for decay in (0.1, 0.5, 1.0):
        with torch.no_grad():
            for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
                noise = torch.randn_like(p)
                p.add_(noise)
                q.add_(noise)
        state.update(ref, decay)
        look.update(module, decay)
        expected = ref_to_ours(ref.state_dict())
        for name, value in ours.state_dict().items():
            if name != "backbone.whitened":
                torch.testing.assert_close(value, expected[name], msg=name)


def test_tta_equals_airbench_infer():
    ours, ref = ours_and_reference()
    ours.eval()
    images = torch.randn(6, 3, 32, 32)

    class Loader:  # what airbench.infer reads of a loader
        normalize = staticmethod(lambda x: x)

    Loader.images = images
    for level, mode in enumerate(("none", "mirror", "mirror_translate")):
        expected = utils.infer(ref, Loader, tta_level=level)
        torch.testing.assert_close(tta_logits(ours, images, mode), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="module.tta=mirror augments images"):
        tta_logits(ours, torch.randn(2, 3, 4, 32, 32), "mirror")


def test_alternating_flip_flips_each_image_every_other_epoch():
    from data.in_memory import BatchAugment

    aug = BatchAugment(mean=[0, 0, 0], std=[1 / 255] * 3, flip_p=0.5, alternate_flip=True, seed=3)
    images = torch.arange(32 * 4 * 4 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).view(32, 3, 4, 4)
    index = torch.arange(32)
    flipped = [(aug(images, index=index, epoch=e) != images.float()).flatten(1).any(1) for e in range(4)]
    assert 8 < int(flipped[0].sum()) < 24  # a random half in the even epochs ...
    assert torch.equal(flipped[0], ~flipped[1]) and torch.equal(flipped[0], flipped[2])  # ... the rest in odd ones
    # the same image gets the same flip in any batch and order
    order = torch.randperm(32)
    again = (aug(images[order], index=order, epoch=0) != images[order].float()).flatten(1).any(1)
    assert torch.equal(again, flipped[0][order])


def test_recipe_learns_digits(tmp_path):
    """experiment=cifar10_airbench94 at a tiny width on the digits (held in memory): well above chance."""
    from runs.compose import compose_config
    from trainer.run import train

    cfg = compose_config(
        "experiment=cifar10_airbench94",
        "data=digits",
        "data.in_memory=true",
        "data.batch_size=64",
        "data.val_size=0.1",
        "model.backbone.widths=[8,16,16]",
        "train_epochs=9.5",
        "callbacks.whitening.num_images=500",
        "~callbacks.progress_bar",
        output_dir=tmp_path,
    )
    train(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    steps_per_epoch = 1257 // 64  # digits' 70 % training split, drop_last
    assert results["global_step"] == math.ceil(9.5 * steps_per_epoch)
    assert results["epochs"] == 10
    assert results["test/acc"] > 0.8, results["test/acc"]


def test_decoupled_sgd_keeps_a_groups_own_lr_multiple():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = decoupled_sgd(
        [dict(params=[a], lr=11.5, weight_decay=0.01), dict(params=[b], lr=1.15, weight_decay=0.01)],
        lr=11.5,
        momentum=0.85,
        weight_decay=0.01,
        batch_size=100,
    )
    lr_a, lr_b = (g["lr"] for g in opt.param_groups)
    assert lr_a == pytest.approx(11.5 / (1024 * (1 + 1 / 0.15)) * 100) and lr_b == pytest.approx(lr_a / 10)
    # the decay per step is the same whatever the lr
    assert [g["lr"] * g["weight_decay"] for g in opt.param_groups] == pytest.approx(
        [0.01 * 100 / (1024 / 0.15 + 1024)] * 2
    )
