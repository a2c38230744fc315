"""Every private Lightning name visfeat relies on (runs/lightning_private.py) still exists as checked."""

import pytorch_lightning as pl

from runs import lightning_private


def test_private_api_as_checked():
    problems = lightning_private.check()
    assert not problems, (
        f"pytorch-lightning {pl.__version__} changed private API that runs/lightning_private.py relies on:\n"
        + "\n".join(problems)
    )


def test_check_names_a_missing_name(monkeypatch):
    monkeypatch.delattr(pl.callbacks.ModelCheckpoint, "_save_topk_checkpoint")
    problems = lightning_private.check()
    assert any("ModelCheckpoint._save_topk_checkpoint is gone" in p and "2.6.6" in p for p in problems)


def test_no_private_lightning_name_outside_the_seam():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    private = re.compile(r"(?:super\(\)|fit_loop|_launcher|lightning[\w.]*)\.\s*_[a-z]\w*|import _[A-Z]\w*")
    found = []
    for path in root.glob("*/**/*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in {".venv", "tests"} or rel == Path("runs/lightning_private.py"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if private.search(line):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "private Lightning names outside runs/lightning_private.py:\n" + "\n".join(found)
