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
    private = re.compile(r"(?:super\(\)|fit_loop|_launcher|lightning[\w.]*)\.\s*(_[a-z]\w*)|import (_[A-Z]\w*)")
    files = [
        p
        for p in root.glob("*/**/*.py")
        if p.relative_to(root).parts[0] not in {".venv", "tests"} and p.name != "lightning_private.py"
    ]
    ours = {m for p in files for m in re.findall(r"def (_\w+)\(", p.read_text())}  # our own private methods
    found = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            m = private.search(line)
            if m and (m.group(1) or m.group(2)) not in ours:
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not found, "private Lightning names outside runs/lightning_private.py:\n" + "\n".join(found)
