"""Transfer without downloads (docs/video.md): a 2D net trained here on CIFAR-10 starts a video recipe, through
``model.pretrained`` on the checkpoint train.py wrote: LeNet-5 -> the frame CNN of arid6_cnn_gru, ResNet-18
(7x7 stem) -> R3D-18 of arid6_r3d by I3D inflation."""

import torch
import torch.nn.functional as F

from nets.build import build_net
from tests.data_utils import write_cifar10
from trainer.run import train

STEP = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "test=false", "data.batch_size=4",
        "data.val_size=8", "optimized_metric=null"]  # fmt: skip


def pretrain(make_cfg, tmp_path, *overrides: str) -> tuple[dict, str]:
    """Trains a 2D net on a tiny CIFAR-10 in its real pickle layout; its backbone tensors and best.ckpt."""
    root = tmp_path / "cifar10"
    write_cifar10(root, n_per_batch=8, n_test=8)
    run_dir = tmp_path / "pre"
    train(make_cfg(*overrides, f"data.root={root}", *STEP, output_dir=run_dir))
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("net.backbone."): v for k, v in state.items() if k.startswith("net.backbone.")}, str(ckpt)


def test_cifar10_lenet_starts_the_frame_cnn_of_arid6_cnn_gru(make_cfg, tmp_path):
    backbone, ckpt = pretrain(make_cfg, tmp_path, "experiment=cifar10_lenet")
    cfg = make_cfg("experiment=arid6_cnn_gru", f"model.pretrained={ckpt}", "model.pretrained_exclude=[head]")
    net = build_net(cfg.model)
    assert type(net.backbone).__name__ == "LeNet" and net.temporal is not None
    own = net.backbone.state_dict()
    assert sorted(own) == sorted(backbone)
    for key, value in backbone.items():
        assert torch.equal(own[key], value), key
    scratch = build_net(make_cfg("experiment=arid6_cnn_gru").model)
    assert not torch.equal(scratch.backbone.conv1[0].weight, net.backbone.conv1[0].weight)


def test_cifar10_resnet18_is_inflated_into_arid6_r3d(make_cfg, tmp_path):
    backbone, ckpt = pretrain(
        make_cfg, tmp_path, "experiment=cifar10_resnet18", "model.backbone.small_input=false", "trainer.accelerator=cpu"
    )
    cfg = make_cfg("experiment=arid6_r3d", f"model.pretrained={ckpt}", "model.pretrained_exclude=[head]")
    net = build_net(cfg.model).eval()
    stem = net.backbone.stem[0].weight  # (64, 3, 3, 7, 7): the 2D stem repeated over 3 frames, divided by 3
    assert stem.shape == (64, 3, 3, 7, 7)
    torch.testing.assert_close(stem.sum(2), backbone["conv1.weight"])
    torch.testing.assert_close(net.backbone.layer4[1].conv2[0].weight.sum(2), backbone["layer4.1.conv2.weight"])
    assert torch.equal(net.backbone.layer3[0].downsample[1].running_var, backbone["layer3.0.downsample.1.running_var"])
    # I3D: a clip of one repeated frame gives the 2D stem's response on an inner frame.
    frame = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out3d = net.backbone.stem[0](frame[:, :, None].repeat(1, 1, 5, 1, 1))
    torch.testing.assert_close(
        out3d[:, :, 2], F.conv2d(frame, backbone["conv1.weight"], stride=2, padding=3), atol=1e-5, rtol=1e-5
    )
