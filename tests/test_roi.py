"""ROI head: known roi_align / roi_pool values, presets, reductions, clips, and ROI vs global pooling."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from data.multi_digits import MultiDigitsDataModule
from models.backbones import ResNet, StagedBackbone, VideoResNet
from models.fusion import FPNFusion
from models.net import Net
from models.roi import ROIHead, boxes_per_frame, grid_boxes, rmac_boxes, roi_head


def ramp(h: int = 6, w: int = 6) -> torch.Tensor:
    """A (1, 1, h, w) map with value x + 10 y at cell (y, x): bilinear sampling of it is exact."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return (xs + 10 * ys)[None, None]


def test_roi_align_on_hand_made_map():
    # Stride 2: the box (2, 2, 6, 6) in pixels is (1, 1, 3, 3) on the map; aligned=True shifts it by half a
    # cell to (0.5, 0.5, 2.5, 2.5); each of the 2x2 cells averages 2x2 samples at 0.75, 1.25 (-> 1) and
    # 1.75, 2.25 (-> 2).
    head = ROIHead(in_channels=1, stride=2, op="align", output_size=2, sampling_ratio=2)
    cells = head.pool_cells(ramp(), [torch.tensor([[2.0, 2.0, 6.0, 6.0]])])
    torch.testing.assert_close(cells, torch.tensor([[[[11.0, 12.0], [21.0, 22.0]]]]))
    assert head(ramp(), [torch.tensor([[2.0, 2.0, 6.0, 6.0]])]).item() == pytest.approx(16.5)


def test_roi_pool_on_hand_made_map():
    # roi_pool rounds the box (0, 0, 3, 3) to cells 0..3 (4 x 4), two cells per bin; max = the bin's last.
    head = ROIHead(in_channels=1, stride=1, op="pool", output_size=2)
    cells = head.pool_cells(ramp(), [torch.tensor([[0.0, 0.0, 3.0, 3.0]])])
    torch.testing.assert_close(cells, torch.tensor([[[[11.0, 13.0], [31.0, 33.0]]]]))


def test_presets():
    torch.testing.assert_close(
        grid_boxes(32, 32, 2),
        torch.tensor(
            [
                [0.0, 0.0, 16.0, 16.0],
                [16.0, 0.0, 32.0, 16.0],
                [0.0, 16.0, 16.0, 32.0],
                [16.0, 16.0, 32.0, 32.0],
            ]
        ),
    )
    regions = rmac_boxes(32, 48, levels=3)
    torch.testing.assert_close(regions[0], torch.tensor([0.0, 0.0, 48.0, 32.0]))  # the full frame first
    sides = (regions[1:, 2] - regions[1:, 0]).round(decimals=4).unique()
    torch.testing.assert_close(sides, torch.tensor([16.0, 21.3333, 32.0]))  # 2 * 32 / (l + 1), l = 3, 2, 1
    assert (regions[:, :2] >= 0).all() and (regions[:, 2] <= 48).all() and (regions[:, 3] <= 32).all()
    assert len(regions) == 1 + 2 + 8 + 15


@pytest.mark.parametrize(("preset", "count"), [("full", 1), ("grid", 9), ("rmac", 1 + 1 + 4 + 9)])
def test_preset_used_without_boxes(preset, count):
    fmap = torch.randn(2, 3, 4, 4)
    head = ROIHead(in_channels=3, stride=4, preset=preset, grid=3, rmac_levels=3)
    feats, counts = head.box_features(fmap, None)
    assert counts == [count, count] and feats.shape == (2 * count, 3)
    explicit = [head._boxes_for(fmap, None, None)[0]] * 2
    torch.testing.assert_close(head(fmap), head(fmap, explicit))
    # A sample without boxes (K = 0) falls back to the preset; the other keeps its own.
    own = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    out = head(fmap, [own, torch.zeros(0, 4)])
    torch.testing.assert_close(out[1], head(fmap)[1])
    torch.testing.assert_close(out[0], head(fmap[:1], [own])[0])


def test_reductions():
    fmap = torch.randn(2, 4, 6, 6)
    boxes = [torch.tensor([[0.0, 0.0, 3.0, 3.0], [2.0, 1.0, 6.0, 6.0]]), torch.tensor([[1.0, 1.0, 5.0, 4.0]])]
    per_box, counts = ROIHead(in_channels=4, stride=1).box_features(fmap, boxes)
    assert counts == [2, 1] and per_box.shape == (3, 4)
    mean = ROIHead(in_channels=4, stride=1, reduce="mean")(fmap, boxes)
    torch.testing.assert_close(mean, torch.stack([per_box[:2].mean(0), per_box[2]]))
    mx = ROIHead(in_channels=4, stride=1, reduce="max")(fmap, boxes)
    torch.testing.assert_close(mx, torch.stack([per_box[:2].amax(0), per_box[2]]))
    att = ROIHead(in_channels=4, stride=1, reduce="attention")(fmap, boxes)
    torch.testing.assert_close(att[1], per_box[2])  # one box: weight 1
    lo, hi = per_box[:2].amin(0), per_box[:2].amax(0)
    assert ((att[0] >= lo - 1e-6) & (att[0] <= hi + 1e-6)).all()  # a convex combination of the two boxes


def test_fc_dim_and_errors():
    head = ROIHead(in_channels=4, stride=2, output_size=3, fc_dim=10)
    assert head.out_features == 10 and head(torch.randn(2, 4, 5, 5)).shape == (2, 10)
    with pytest.raises(ValueError, match="model.roi.reduce='sum' is unknown"):
        ROIHead(in_channels=4, stride=1, reduce="sum")
    with pytest.raises(ValueError, match="grid size n=0"):
        ROIHead(in_channels=4, stride=1, preset="grid", grid=0)
    with pytest.raises(ValueError, match="boxes for 1 samples but the batch has 2"):
        head(torch.randn(2, 4, 5, 5), [torch.zeros(1, 4)])
    with pytest.raises(ValueError, match=r"boxes\[0\] has shape \(2, 3, 4\)"):
        head(torch.randn(1, 4, 5, 5), [torch.zeros(2, 3, 4)])


def test_roi_head_builder_picks_the_map():
    backbone = ResNet(depth=18, small_input=True)
    assert (roi_head(backbone=backbone).stride, roi_head(backbone=backbone).out_features) == (8, 512)
    on_layer3 = roi_head(backbone=backbone, stage="layer3")
    assert (on_layer3.stride, on_layer3.out_features, on_layer3.stage) == (4, 256, "layer3")
    fused = roi_head(backbone=backbone, fusion=FPNFusion(backbone=backbone, channels=32))
    assert (fused.stride, fused.out_features) == (2, 32)
    with pytest.raises(ValueError, match="unknown stage 'layer9'"):
        roi_head(backbone=backbone, stage="layer9")
    with pytest.raises(ValueError, match="both set"):
        roi_head(backbone=backbone, stage="layer3", fusion=FPNFusion(backbone=backbone))
    net = Net(backbone=backbone, num_classes=3, roi=functools.partial(roi_head, stage="layer3"))
    assert net(torch.randn(2, 3, 16, 16), [torch.tensor([[0.0, 0.0, 8.0, 8.0]])] * 2).shape == (2, 3)


def test_boxes_per_frame_order():
    clip_box = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # (K=1, 4): every frame
    track = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(3, 4, 4)  # (K=3, T=4, 4)
    frames = boxes_per_frame([clip_box, track], 4)
    assert len(frames) == 8
    assert all(torch.equal(f, clip_box) for f in frames[:4])
    for t in range(4):
        assert torch.equal(frames[4 + t], track[:, t])
    # Fewer slices than frames (a 3D backbone's temporal stride): the centre frame of each segment.
    half = boxes_per_frame([track], 2)
    assert torch.equal(half[0], track[:, 1]) and torch.equal(half[1], track[:, 3])
    assert boxes_per_frame(None, 4) is None


def test_3d_map_pooled_per_time_slice():
    fmap = torch.cat([ramp(), ramp() + 100], 0).permute(1, 0, 2, 3)[None]  # (1, 1, T=2, 6, 6)
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 6.0, 6.0]]])  # (K=1, T=2, 4): the box moves
    head = ROIHead(in_channels=1, stride=1, output_size=2)
    first = head(ramp(), [boxes[:, 0]])
    second = head(ramp() + 100, [boxes[:, 1]])
    torch.testing.assert_close(head(fmap, [boxes]), (first + second) / 2)


class FrameMean(nn.Module):
    def __init__(self, *, in_features: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_features, 8, batch_first=True)
        self.out_features = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0][:, -1]  # (B, 8)


def test_video_roi_then_temporal_and_per_box_logits():
    """y = LSTM(ROIPool(CNN(x_t))) with a box per frame for one clip and one box for the other."""
    torch.manual_seed(0)
    net = Net(
        backbone=ResNet(depth=18, small_input=True),
        num_classes=4,
        roi=functools.partial(roi_head, op="pool", output_size=2),
        temporal=FrameMean,
    )
    clips = torch.randn(2, 3, 3, 16, 16)  # (B, C, T, H, W)
    boxes = [
        torch.tensor([[[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 12.0, 12.0], [8.0, 8.0, 16.0, 16.0]]]),
        torch.tensor([[0.0, 0.0, 16.0, 16.0], [2.0, 2.0, 10.0, 10.0]]),
    ]
    out = net(clips, boxes)
    assert out.shape == (2, 4)
    out.sum().backward()
    assert net.backbone.conv1.weight.grad is not None
    assert net.forward_boxes(clips, boxes).shape == (3, 4)  # 1 + 2 box tracks


def test_video_roi_3d_backbone():
    net = Net(backbone=VideoResNet(arch="r3d_18"), num_classes=4, roi=functools.partial(roi_head, reduce="max"))
    clips = torch.randn(2, 3, 4, 16, 16)
    shift = torch.arange(4.0)[None, :, None] * 2  # (1, T, 1): the boxes move 2 px a frame
    boxes = [
        torch.tensor([[0.0, 0.0, 8.0, 8.0]]),
        torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 2.0, 8.0, 6.0]])[:, None] + shift,
    ]
    assert net(clips, boxes).shape == (2, 4)
    assert net(clips).shape == (2, 4)  # full-frame preset
    assert net.forward_boxes(clips, boxes).shape == (3, 4)


# --- ROI head vs global pooling on several digits per image ----------------------------------------------
class SmallConvNet(StagedBackbone):
    """Two conv stages (stride 2 and 4), small enough to train on CPU in seconds."""

    stage_names = ["conv1", "conv2"]
    stage_channels = {"conv1": 16, "conv2": 32}
    stage_strides = {"conv1": 2, "conv2": 4}

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Identity()
        self.conv1, self.conv2 = self._stage(3, 16), self._stage(16, 32)

    @staticmethod
    def _stage(c_in: int, c_out: int) -> nn.Sequential:
        layers = [
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        return nn.Sequential(nn.Sequential(*layers))


def train_and_test(datamodule: MultiDigitsDataModule, roi, *, epochs: int) -> float:
    torch.manual_seed(0)
    net = Net(backbone=SmallConvNet(), num_classes=10, roi=roi)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        net.train()
        for batch in datamodule.train_dataloader():
            loss = nn.functional.cross_entropy(net(batch["input"], batch["boxes"]), batch["target"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            correct += (net(batch["input"], batch["boxes"]).argmax(1) == batch["target"]).sum().item()
            total += len(batch["target"])
    return correct / total


def test_roi_beats_global_pooling():
    dm = MultiDigitsDataModule(batch_size=64, train_canvases=300, val_canvases=10, test_canvases=200, seed=0)
    dm.setup()
    global_acc = train_and_test(dm, None, epochs=3)
    roi_acc = train_and_test(dm, functools.partial(roi_head, op="align", output_size=3, fc_dim=64), epochs=3)
    # Global pooling sees one image for 3 different labels: at most ~1/3 of them can be right.
    assert global_acc < 0.4
    assert roi_acc > 0.65 and roi_acc > global_acc + 0.3, (roi_acc, global_acc)
