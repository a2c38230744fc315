"""Fine-tuning schedules: parameter groups and their lrs, frozen parts that really stay unchanged (weights
and BatchNorm statistics), unfreezing at the right epoch, and the per-epoch record of it all."""

import csv
import functools
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from models.backbones import VGG, LeNet, ResNet, VideoResNet
from models.net import Net
from models.nonlocal_block import NonLocalBlock
from nets.build import build_net
from nets.stored import net_state_dict
from trainer.callbacks.finetune import FineTune, net_groups
from trainer.module import ClassificationModule
from trainer.optim import cosine, no_decay_names
from trainer.run import train


class ParamProbe(pl.Callback):
    """Snapshots of the net's state (weights and buffers) when training starts and after every epoch."""

    instances: list["ParamProbe"] = []

    def __init__(self) -> None:
        self.snaps: list[dict[str, torch.Tensor]] = []
        ParamProbe.instances.append(self)

    def _snap(self, module: pl.LightningModule) -> None:
        self.snaps.append({k: v.detach().clone() for k, v in module.net.state_dict().items()})

    def on_train_start(self, trainer, pl_module) -> None:
        self._snap(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._snap(pl_module)


PROBE = "+callbacks.probe._target_=tests.test_finetune.ParamProbe"
# ResNet-18 with its ImageNet stem on 16x16 digits: every BatchNorm and stage, a fraction of the compute.
TINY_RESNET = ("model=resnet", "model.backbone.small_input=false", "data.image_size=16", "data.batch_size=8")


def same(a: dict, b: dict, prefix: str, *, buffers: bool = True) -> bool:
    keys = [
        k
        for k in a
        if k.startswith(prefix) and (buffers or not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    ]
    assert keys
    return all(torch.equal(a[k], b[k]) for k in keys)


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_groups_partition_the_net_from_stem_to_head():
    net = Net(backbone=ResNet(depth=18, small_input=True), num_classes=3)
    net.backbone.insert_after("layer3", 1, NonLocalBlock(in_channels=256))
    groups = net_groups(net)
    assert [(g.name, g.depth) for g in groups] == [
        ("stem", 5),
        ("layer1", 4),
        ("layer2", 3),
        ("layer3", 2),
        ("layer4", 1),
        ("head", 0),
    ]
    assert sum(p.numel() for g in groups for p in g.parameters()) == sum(p.numel() for p in net.parameters())
    nonlocal_params = {id(p) for p in net.backbone.inserted.parameters()}
    assert nonlocal_params <= {id(p) for p in groups[3].parameters()}
    lenet = net_groups(Net(backbone=LeNet(), num_classes=3))  # no stem params; fc pools the last stage
    assert [g.name for g in lenet] == ["conv1", "conv2", "head"]
    assert len(lenet[1].parameters()) == 2 + 4


def test_every_backbone_is_grouped_by_its_declared_names():
    vgg = net_groups(Net(backbone=VGG(depth=11), num_classes=3))  # an Identity stem: no stem group
    assert [g.name for g in vgg] == ["stage1", "stage2", "stage3", "stage4", "stage5", "head"]
    video_net = Net(backbone=VideoResNet(arch="r3d_18"), num_classes=3)
    video = net_groups(video_net)
    assert [g.name for g in video] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert video[0].modules == [video_net.backbone.stem]
    assert video[-1].modules == [video_net.drop, video_net.head]


def test_a_module_named_nowhere_is_refused_by_name():
    net = Net(backbone=LeNet(), num_classes=3)
    net.backbone.extra = torch.nn.Linear(2, 2)  # neither a stage nor in stem_names / pool_names
    with pytest.raises(RuntimeError, match=r"no fine-tuning group: \['backbone.extra.weight', 'backbone.extra.bias'\]"):
        net_groups(net)
    net = Net(backbone=LeNet(), num_classes=3)
    net.neck = torch.nn.Linear(2, 2)  # a part after the backbone missing from Net.post_backbone_names
    with pytest.raises(RuntimeError, match="neck.weight.*Net.post_backbone_names"):
        net_groups(net)


def test_group_lrs_follow_layer_decay_and_keep_their_ratios_under_the_schedule():
    net = Net(backbone=ResNet(depth=18, small_input=True), num_classes=3)
    ft = FineTune(mode="none", backbone_lr_mult=0.5, layer_decay=0.8)
    skip = no_decay_names(net)
    groups = ft.param_groups(net, lr=0.1, weight_decay=0.05, skip=skip)
    expected = {
        "head": 0.1,
        "layer4": 0.1 * 0.5 * 0.8,
        "layer3": 0.1 * 0.5 * 0.8**2,
        "layer2": 0.1 * 0.5 * 0.8**3,
        "layer1": 0.1 * 0.5 * 0.8**4,
        "stem": 0.1 * 0.5 * 0.8**5,
    }
    assert {g["name"] for g in groups} == set(expected) | {f"{n}/no_wd" for n in expected}
    for g in groups:
        assert g["lr"] == pytest.approx(expected[g["group"]])
        assert g["weight_decay"] == (0.0 if g["name"].endswith("/no_wd") else 0.05)
    bn_weight = net.backbone.bn1.weight
    assert any(p is bn_weight for g in groups if g["name"] == "stem/no_wd" for p in g["params"])
    opt = torch.optim.AdamW(groups)
    sched = cosine(opt, total_steps=10, steps_per_epoch=5, warmup_epochs=1)
    for _ in range(7):
        opt.step()
        sched.step()
    by_group = {g["group"]: g["lr"] for g in opt.param_groups}
    head = by_group["head"]
    assert 0 < head < 0.1
    for name, lr in by_group.items():
        assert lr == pytest.approx(head * expected[name] / 0.1)


def test_the_module_builds_its_groups_from_its_own_lr_and_weight_decay(make_cfg):
    net = Net(backbone=LeNet(), num_classes=3)
    adamw = functools.partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.05)
    ft = FineTune(mode="none", backbone_lr_mult=0.5, layer_decay=0.8)
    module = ClassificationModule(net=net, optimizer=adamw, lr=3e-3, weight_decay=0.05, group_params=ft.param_groups)
    opt = module.configure_optimizers()
    expected = adamw(ft.param_groups(net, lr=3e-3, weight_decay=0.05, skip=no_decay_names(net))).param_groups
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == [
        {k: v for k, v in g.items() if k != "params"} for g in expected
    ]
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == [[id(p) for p in g["params"]] for g in expected]
    assert {g["group"]: g["lr"] for g in opt.param_groups}["conv1"] == pytest.approx(3e-3 * 0.5 * 0.8**2)
    with pytest.raises(ValueError, match="module.lr is unset"):
        ClassificationModule(net=net, optimizer=adamw, group_params=ft.param_groups).configure_optimizers()
    sgd = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    plain = ClassificationModule(net=net, optimizer=sgd, lr=0.2, weight_decay=5e-4).configure_optimizers()
    assert [(g["group"], g["lr"], g["weight_decay"], len(g["params"])) for g in plain.param_groups] == [
        ("net", 0.2, 5e-4, 5),  # conv and linear weights: module.lr, not the optimizer's default
        ("net", 0.2, 0.0, 5),  # their biases
    ]
    # The config gives the module the optimizer's values.
    cfg = make_cfg("optimizer=sgd", "optimizer.lr=0.03")
    assert (cfg.module.lr, cfg.module.weight_decay) == (0.03, cfg.optimizer.weight_decay) == (0.03, 5e-4)


def test_a_module_built_for_evaluation_has_no_optimizer_and_says_so():
    module = ClassificationModule(net=Net(backbone=LeNet(), num_classes=3))
    with pytest.raises(ValueError, match="built without an optimizer .*pass optimizer="):
        module.configure_optimizers()


def test_gradual_unfreezes_one_stage_at_a_time_from_the_top():
    groups = net_groups(Net(backbone=ResNet(depth=18, small_input=True), num_classes=3))
    ft = FineTune(mode="gradual", unfreeze_at_epoch=1, unfreeze_every=2)
    frozen = [[g for g, on in ft.trainable(groups, e).items() if not on] for e in range(12)]
    assert frozen[0] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert frozen[1] == frozen[2] == ["stem", "layer1", "layer2", "layer3"]
    assert frozen[3] == frozen[4] == ["stem", "layer1", "layer2"]
    assert frozen[7] == ["stem"]
    assert frozen[9] == frozen[11] == []
    probe = FineTune(mode="linear_probe")
    assert all(not probe.trainable(groups, e)[g] for e in (0, 50) for g in ("stem", "layer4"))
    assert all(FineTune(mode="none").trainable(groups, 0).values())


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(mode="partial"), "finetune.mode='partial' is not one of"),
        (dict(mode="gradual", unfreeze_at_epoch=0), "unfreeze_at_epoch=0 must be >= 1"),
        (dict(layer_decay=0.0), "layer_decay=0.0 must be in"),
        (dict(backbone_lr_mult=0), "backbone_lr_mult=0 must be > 0"),
        (dict(unfreeze_every=0), "unfreeze_every=0 must be >= 1"),
    ],
)
def test_bad_finetune_options_fail_clearly(bad, match):
    with pytest.raises(ValueError, match=match):
        FineTune(**bad)


@pytest.fixture(scope="module")
def pretrained_resnet(tmp_path_factory):
    """A real checkpoint of ours: ResNet-18 trained briefly on all ten digits."""
    from tests.conftest import SMALL, compose_config

    run = tmp_path_factory.mktemp("pretrain")
    cfg = compose_config(
        *SMALL,
        *TINY_RESNET,
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "test=false",
        output_dir=run,
    )
    train(cfg)
    return run / "checkpoints" / "last.ckpt"


def test_frozen_backbone_stays_unchanged_until_unfreeze_epoch(make_cfg, tmp_path, pretrained_resnet):
    ParamProbe.instances.clear()
    cfg = make_cfg(
        *TINY_RESNET,
        f"model.pretrained={pretrained_resnet}",
        "data.classes=[5,6,7,8,9]",
        "data.num_classes=5",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "test=false",
        "~callbacks.model_checkpoint",
        "finetune=freeze_then_unfreeze",
        "finetune.unfreeze_at_epoch=2",
        "finetune.backbone_lr_mult=0.1",
        PROBE,
    )
    train(cfg)
    start, e0, e1, e2 = ParamProbe.instances[-1].snaps
    pre = net_state_dict(torch.load(pretrained_resnet, weights_only=True))
    # Our checkpoint into 5 classes: backbone bit-identical, head fresh.
    assert same(start, {k: pre[k] for k in start if k.startswith("backbone.")}, "backbone.")
    assert start["head.weight"].shape == (5, 512) and pre["head.weight"].shape == (10, 512)
    # Epochs 0 and 1: backbone weights and BN statistics untouched, head trained.
    assert same(start, e0, "backbone.") and same(e0, e1, "backbone.")
    assert not torch.equal(start["head.weight"], e0["head.weight"])
    assert not torch.equal(e0["head.weight"], e1["head.weight"])
    # Epoch 2: the backbone trains, every stage of it.
    for stage in ("backbone.conv1", "backbone.layer1", "backbone.layer4"):
        assert not same(e1, e2, stage, buffers=False), stage
    rows = metrics(tmp_path / "run")
    assert [r["finetune/trainable/layer4"] for r in rows] == ["0.0", "0.0", "1.0"]
    assert [r["finetune/trainable/head"] for r in rows] == ["1.0", "1.0", "1.0"]
    for r in rows:
        assert float(r["lr/layer1"]) == pytest.approx(0.1 * float(r["lr/head"]))
    assert (tmp_path / "run" / "plots" / "finetune.png").stat().st_size > 1000


def test_gradual_unfreezing_through_the_config(make_cfg, tmp_path):
    ParamProbe.instances.clear()
    cfg = make_cfg(
        "finetune=gradual",
        "finetune.unfreeze_at_epoch=1",
        "finetune.layer_decay=0.5",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "test=false",
        "~callbacks.model_checkpoint",
        PROBE,
    )
    train(cfg)
    start, e0, e1, e2 = ParamProbe.instances[-1].snaps
    assert same(start, e0, "backbone.") and not same(start, e0, "head.")
    assert same(e0, e1, "backbone.conv1") and not same(e0, e1, "backbone.conv2")
    assert not same(e1, e2, "backbone.conv1")
    rows = metrics(tmp_path / "run")
    assert [r["finetune/trainable/conv1"] for r in rows] == ["0.0", "0.0", "1.0"]
    assert [r["finetune/trainable/conv2"] for r in rows] == ["0.0", "1.0", "1.0"]
    for r in rows:
        assert float(r["lr/conv1"]) == pytest.approx(0.25 * float(r["lr/head"]))


def test_every_finetune_config_instantiates(make_cfg):
    for name in ("none", "linear_probe", "freeze_then_unfreeze", "gradual"):
        ft = instantiate(make_cfg(f"finetune={name}").finetune)
        assert isinstance(ft, FineTune) and ft.mode == name


def test_pretrained_path_errors_surface_from_the_config(make_cfg, tmp_path):
    cfg = make_cfg(f"model.pretrained={tmp_path / 'missing.ckpt'}")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        build_net(cfg.model)
