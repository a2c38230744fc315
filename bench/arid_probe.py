"""What carries over to unseen scenes on ARID-6: linear probes on appearance and on motion, no deep net.

    python -m bench.arid_probe --arid-root DIR      # DIR: ../shared/data/arid6-train.tar unpacked (DIR or DIR/arid6)

Every clip of the dev split is decoded once (short side 112) and 16 frames are taken, one from the middle of each
sixteenth (``data.clip_sampling=segments`` at test). Three fixed descriptors of a clip, each fed to a
standardised logistic regression trained on ``dev_train.txt`` and scored on ``dev_test.txt`` (unseen scenes):

- appearance: the mean luminance of an 8x8 grid per frame (what a thumbnail's nearest neighbour reads);
- motion map: the mean absolute frame difference of gamma-lifted luminance on an 8x8 grid per frame pair;
- motion statistics: per frame pair, position-free figures of the difference map (its energy relative to the
  clip's, the centroid's height and horizontal spread relative to the clip's mean, its spread, the centroid's
  motion), and their means and deviations over the clip.

It prints train and dev-test accuracy per descriptor and regularisation strength, the confusion matrix of the
motion statistics, and the number of training scenes of each class: docs/video.md reads them.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import machine, table
from bench.recipes import arid_root
from data.video.decode import read_all

FRAMES = 16


def segment_middles(n: int) -> np.ndarray:
    edges = np.linspace(0, n, FRAMES + 1)
    return np.minimum(((edges[:-1] + edges[1:]) / 2).astype(int), n - 1)


def luminance(clip: np.ndarray, gamma: bool) -> torch.Tensor:
    x = torch.from_numpy(clip[segment_middles(len(clip))]).float().div(255).mean(-1)  # (T, H, W)
    return x.clamp_min(1e-4).pow(0.4) if gamma else x


def appearance(clip: np.ndarray) -> np.ndarray:
    return F.adaptive_avg_pool2d(luminance(clip, gamma=False)[None], 8)[0].flatten().numpy()


def motion_map(clip: np.ndarray) -> np.ndarray:
    x = F.avg_pool2d(luminance(clip, gamma=True)[None], 4)[0]
    return F.adaptive_avg_pool2d((x[1:] - x[:-1]).abs()[None], 8)[0].flatten().numpy()


def motion_statistics(clip: np.ndarray) -> np.ndarray:
    x = F.avg_pool2d(luminance(clip, gamma=True)[None], 4)[0]  # (T, h, w): blurred against sensor noise
    d = (x[1:] - x[:-1]).abs()  # (T-1, h, w)
    energy = d.sum((1, 2)) + 1e-6
    h, w = d.shape[1:]
    ys, xs = torch.arange(h).float()[:, None] / h, torch.arange(w).float()[None] / w
    cy, cx = (d * ys).sum((1, 2)) / energy, (d * xs).sum((1, 2)) / energy
    sy = ((d * (ys - cy[:, None, None]) ** 2).sum((1, 2)) / energy).sqrt()
    sx = ((d * (xs - cx[:, None, None]) ** 2).sum((1, 2)) / energy).sqrt()
    series = [energy / energy.mean(), cy - cy.mean(), (cx - cx.mean()).abs(), sy, sx, cy.diff(), cx.diff().abs()]
    summary = torch.stack([v.mean() for v in series] + [v.std() for v in series])
    return torch.cat([v.flatten() for v in series] + [summary]).numpy()


def load(root: Path, listing: str, names: list[str]) -> list[tuple[np.ndarray, int, str]]:
    out = []
    for line in (root / listing).read_text().split("\n"):
        if line.strip():
            rel = line.split()[0]
            out.append((read_all(root / "train" / rel, short_side=112), names.index(rel.split("/")[0]), rel))
    return out


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix
    from sklearn.preprocessing import StandardScaler

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arid-root", type=arid_root, required=True, help="arid6-train.tar unpacked (DIR or DIR/arid6)"
    )
    args = parser.parse_args()
    root = args.arid_root
    names = [line.split()[1] for line in (root / "classInd.txt").read_text().split("\n") if line.strip()]
    start = time.perf_counter()
    train, test = load(root, "dev_train.txt", names), load(root, "dev_test.txt", names)
    print(f"decoded {len(train)} + {len(test)} clips in {time.perf_counter() - start:.0f} s")
    y_train, y_test = np.array([y for _, y, _ in train]), np.array([y for _, y, _ in test])
    rows = []
    for name, describe in (
        ("appearance", appearance),
        ("motion map", motion_map),
        ("motion statistics", motion_statistics),
    ):
        x_train = np.stack([describe(c) for c, _, _ in train])
        x_test = np.stack([describe(c) for c, _, _ in test])
        scaler = StandardScaler().fit(x_train)
        for c in (0.01, 0.1, 1.0):
            probe = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x_train), y_train)
            predicted = probe.predict(scaler.transform(x_test))
            rows.append(
                [
                    name,
                    c,
                    f"{probe.score(scaler.transform(x_train), y_train):.3f}",
                    f"{(predicted == y_test).mean():.3f}",
                ]
            )
            if name == "motion statistics" and c == 0.1:
                matrix = confusion_matrix(y_test, predicted, labels=range(len(names)))
    print(f"\n{machine('cpu')}")
    print(table(["descriptor", "C", "train acc", "dev-test acc"], rows))
    print("\nmotion statistics (C=0.1), confusion on dev test (rows: true class):")
    print(table(["", *names], [[n, *row] for n, row in zip(names, matrix.tolist(), strict=True)]))
    scenes = {
        n: sorted({re.match(r"\w+?_(\d+)_", Path(rel).name).group(1) for _, y, rel in train if names[y] == n})
        for n in names
    }
    print("training scenes per class: " + ", ".join(f"{n} {len(s)}" for n, s in scenes.items()))
    print("dev-test clips per class: " + ", ".join(f"{n} {int((y_test == i).sum())}" for i, n in enumerate(names)))


if __name__ == "__main__":
    main()
