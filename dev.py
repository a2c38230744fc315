"""Bootstrap and run: `python3 dev.py train [overrides]`, `python3 dev.py test [pytest args]`.

Needs only Python >= 3.11 and pip: creates .venv on first use and (re)installs the exact versions in
requirements.lock whenever that file changes, then runs the command inside the venv.
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
LOCK = ROOT / "requirements.lock"
STAMP = VENV / "requirements.lock.sha256"
COMMANDS = {
    "train": ["train.py"],
    "eval": ["eval.py"],
    "extract": ["extract.py"],
    "predict": ["predict.py"],
    "test": ["-m", "pytest"],
}


def ensure_venv() -> None:
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != digest:
        print(f"installing {LOCK.name} into {VENV} (first run downloads torch: a few minutes)", flush=True)
        subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", "-r", str(LOCK)], check=True)
        STAMP.write_text(digest)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python3 dev.py {{{','.join(COMMANDS)}}} [args...]")
    ensure_venv()
    os.chdir(ROOT)
    args = [str(PYTHON), *COMMANDS[sys.argv[1]], *sys.argv[2:]]
    os.execv(args[0], args)


if __name__ == "__main__":
    main()
