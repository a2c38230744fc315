"""What feature extraction reads: the files of an input folder or file list, with their labels.

Input kinds (``kind=auto`` decides from the files it finds):

    one file      an image or a video (by its extension): one source, named by its file name, unlabelled
    a folder      scanned recursively (hidden files and folders skipped) for image files, or for video files
    a file list   ``.txt``: ``<path> [label]`` per line (``#`` comments; whitespace-separated, so a path with
                  spaces needs the CSV form); ``.csv``: a header with ``path`` and optionally ``label``.
                  Paths are relative to the list's folder (absolute paths are kept as given).

A file's ``rel`` path (the ``path`` column of index.csv) is relative to the input folder, or as listed. Its
label is the first folder of ``rel`` when every file of a folder input lies in a subfolder (class folders),
the ``label`` column of a list, and empty otherwise.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from data.image_folder import IMAGE_EXTENSIONS
from data.video.lists import VIDEO_EXTENSIONS

KINDS = ("auto", "images", "videos")


@dataclass(frozen=True)
class Source:
    path: Path  # the file to read
    rel: str  # its name in index.csv
    label: str  # "" when unlabelled


def list_sources(input: str | Path, *, kind: str = "auto") -> tuple[str, list[Source]]:
    """``("images" | "videos", sources)`` of one image or video, a folder or a file list, in a stable (sorted or
    listed) order."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown; choose one of {KINDS}")
    input = Path(input)
    if input.is_dir():
        return _folder(input, kind)
    if input.is_file() and media_kind(input.suffix) is not None:
        media = media_kind(input.suffix)
        if kind not in ("auto", media):
            raise ValueError(f"input={input} is one of the {media}, not {kind}; use kind=auto or kind={media}")
        return media, [Source(input, input.name, "")]
    if input.is_file():
        return _file_list(input, kind)
    raise FileNotFoundError(
        f"input={input} does not exist; give an image, a video, a folder of them, or a file list (.txt/.csv)"
    )


def media_kind(suffix: str) -> str | None:
    suffix = suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "images"
    if suffix in VIDEO_EXTENSIONS:
        return "videos"
    return None


def _folder(root: Path, kind: str) -> tuple[str, list[Source]]:
    found: dict[str, list[Path]] = {"images": [], "videos": []}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        media = media_kind(path.suffix)
        if media is not None:
            found[media].append(path)
    kind = _pick_kind(kind, found, where=str(root))
    files = found[kind]
    class_folders = all(len(p.relative_to(root).parts) > 1 for p in files)
    sources = []
    for p in files:
        rel = p.relative_to(root)
        sources.append(Source(p, rel.as_posix(), rel.parts[0] if class_folders else ""))
    return kind, sources


def _pick_kind(kind: str, found: dict[str, list[Path]], *, where: str) -> str:
    if kind != "auto":
        if not found[kind]:
            raise FileNotFoundError(f"{where}: no {kind} found (extensions {sorted(_extensions(kind))})")
        return kind
    present = [k for k, files in found.items() if files]
    if not present:
        raise FileNotFoundError(
            f"{where}: no images ({sorted(IMAGE_EXTENSIONS)}) or videos ({sorted(VIDEO_EXTENSIONS)}) found"
        )
    if len(present) == 2:
        raise ValueError(
            f"{where} holds both images ({len(found['images'])}) and videos ({len(found['videos'])}); "
            f"choose one with kind=images or kind=videos"
        )
    return present[0]


def _extensions(kind: str) -> set[str]:
    return set(IMAGE_EXTENSIONS) if kind == "images" else set(VIDEO_EXTENSIONS)


def _file_list(list_path: Path, kind: str) -> tuple[str, list[Source]]:
    entries = _read_csv_list(list_path) if list_path.suffix.lower() == ".csv" else _read_text_list(list_path)
    if not entries:
        raise ValueError(f"file list {list_path} lists no files")
    found: dict[str, list[Path]] = {"images": [], "videos": []}
    sources = []
    for lineno, rel, label in entries:
        media = media_kind(Path(rel).suffix)
        if media is None:
            raise ValueError(
                f"{list_path}:{lineno}: {rel!r} is neither an image ({sorted(IMAGE_EXTENSIONS)}) nor a video "
                f"({sorted(VIDEO_EXTENSIONS)}) by its extension"
            )
        path = list_path.parent / rel  # an absolute rel stays absolute
        found[media].append(path)
        sources.append((media, Source(path, rel, label)))
    kind = _pick_kind(kind, found, where=str(list_path))
    # A listed file that does not exist is not an error here: it lands in failures.csv like an unreadable one.
    return kind, [s for media, s in sources if media == kind]


def _read_text_list(path: Path) -> list[tuple[int, str, str]]:
    entries = []
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) > 2:
            raise ValueError(
                f"{path}:{lineno}: expected '<path> [label]', got {line!r} (paths with spaces: use a .csv list)"
            )
        entries.append((lineno, parts[0], parts[1] if len(parts) == 2 else ""))
    return entries


def _read_csv_list(path: Path) -> list[tuple[int, str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise ValueError(
                f"{path}: a CSV file list needs a header with a 'path' column (and optionally 'label'); "
                f"found {reader.fieldnames}"
            )
        return [
            (lineno, row["path"], (row.get("label") or "").strip())
            for lineno, row in enumerate(reader, start=2)
            if row["path"]
        ]
