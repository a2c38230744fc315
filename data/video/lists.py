"""Which videos belong to which split and class: folder scans, split lists, class index files.

Formats:
    class index (UCF101 ``classInd.txt``): ``<index> <class name>`` per line, indices consecutive from 0 or 1.
    split list (UCF101 ``trainlist01.txt``): ``<class>/<clip> [label]`` per line, relative to the root.
    HMDB51 split file (``<class>_test_split<k>.txt``): ``<clip> <tag>``, tag 1 = train, 2 = test, 0 = unused.
    labelled list (videos in any layout, e.g. one flat folder): ``<path> <label>`` per line, the label a class
    name or an integer index (``read_labelled_list``); the class does not come from the path.

A video is a ``(relative path, label)`` pair; in class folder layouts its class is always the first folder of
its path, and a label written in a split list must agree with it.
"""

from __future__ import annotations

from pathlib import Path

VIDEO_EXTENSIONS = (
    ".mp4",
    ".avi",
    ".webm",
    ".mkv",
    ".mov",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".ogv",
    ".3gp",
)

Video = tuple[str, int]


def scan_folder(root: Path, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> dict[str, list[str]]:
    """Class folder name -> sorted relative paths of the videos under it (any depth)."""
    exts = {e.lower() for e in extensions}
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(str(f.relative_to(root)) for f in folder.rglob("*") if f.suffix.lower() in exts and f.is_file())
        if files:
            classes[folder.name] = files
    return classes


def class_folders(root: Path, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[str]:
    """Sorted names of the folders of ``root`` that hold a video (split-file folders beside them do not)."""
    exts = {e.lower() for e in extensions}
    folders = (p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(p.name for p in folders if any(f.suffix.lower() in exts for f in p.rglob("*")))


def read_class_index(path: Path) -> tuple[list[str], int]:
    """Class names in index order and the index base (0 or 1) of a ``classInd.txt``-style file."""
    entries = []
    for lineno, line in _lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].lstrip("-").isdigit():
            raise ValueError(f"{path}:{lineno}: {line!r}: expected '<index> <class name>'")
        entries.append((int(parts[0]), parts[1].strip()))
    if not entries:
        raise ValueError(f"class index {path} lists no classes")
    entries.sort()
    base = entries[0][0]
    indices = [i for i, _ in entries]
    if base not in (0, 1) or indices != list(range(base, base + len(entries))):
        raise ValueError(f"class index {path}: indices must run consecutively from 0 or 1; got {indices[:10]}...")
    names = [n for _, n in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"class index {path} names a class twice")
    return names, base


def read_split_list(path: Path, class_names: list[str], base: int | None) -> list[Video]:
    """Videos of a split list; labels come from the folder names and are checked against written ones.

    With a class index (``base`` given) a written label must equal ``base + position of the folder's class``.
    Without one (``base=None``) written labels are only checked for consistency: one label per folder.
    """
    position = {name: i for i, name in enumerate(class_names)}
    seen: dict[str, tuple[int, int, str]] = {}  # folder -> (written label, line number, line)
    videos = []
    for lineno, line in _lines(path):
        parts = line.split()
        rel = parts[0]
        folder = Path(rel).parts[0] if len(Path(rel).parts) > 1 else None
        if folder is None or folder not in position:
            known = f"; known classes: {class_names[:5]}..." if class_names else ""
            raise ValueError(f"{path}:{lineno}: {line!r}: the first folder of the path must be a class{known}")
        label = position[folder]
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].lstrip("-").isdigit()):
            raise ValueError(f"{path}:{lineno}: {line!r}: expected '<class>/<clip> [label]'")
        if len(parts) == 2:
            written = int(parts[1])
            if base is not None and written != label + base:
                raise ValueError(
                    f"{path}:{lineno}: {line!r}: label {written} does not match folder {folder!r}, which is "
                    f"class {label + base} in the class index"
                )
            if base is None:
                first = seen.setdefault(folder, (written, lineno, line))
                if first[0] != written:
                    raise ValueError(
                        f"{path}:{lineno}: {line!r}: label {written} differs from label {first[0]} given to "
                        f"the same folder on line {first[1]} ({first[2]!r})"
                    )
        videos.append((rel, label))
    if not videos:
        raise ValueError(f"split list {path} lists no videos")
    return videos


def read_hmdb_splits(split_dir: Path, class_names: list[str], split: int) -> tuple[list[Video], list[Video]]:
    """Train and test videos of HMDB51 split ``split`` (1-3) from ``<class>_test_split<split>.txt`` files."""
    train, test = [], []
    for label, name in enumerate(class_names):
        path = split_dir / f"{name}_test_split{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"HMDB51 split file {path} is missing (class {name!r}, data.split={split})")
        for lineno, line in _lines(path):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{path}:{lineno}: {line!r}: expected '<clip> <0|1|2>'")
            if parts[1] != "0":
                (train if parts[1] == "1" else test).append((f"{name}/{parts[0]}", label))
    return train, test


def read_labelled_list(path: Path) -> list[tuple[str, str]]:
    """``(path, label)`` strings of a ``<path> <label>`` list; the label is the last word, so paths may hold spaces."""
    entries = []
    for lineno, line in _lines(path):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: {line!r}: expected '<path> <label>' (a class name or index)")
        entries.append((parts[0], parts[1]))
    if not entries:
        raise ValueError(f"list {path} lists no videos")
    return entries


def label_indices(
    labels: list[str], class_index: tuple[list[str], int] | None, source: str
) -> tuple[list[str], list[int]]:
    """Class names and the label index of each written label (a class name or an integer index).

    With a class index (``(names, base)`` of ``read_class_index``) names must be in it and integers count from its
    base. Without one, integer labels are the indices themselves (names "0", "1", ...) and name labels are
    numbered in sorted order; a mix of both is an error.
    """
    numeric = [label.lstrip("-").isdigit() for label in labels]
    if class_index is not None:
        names, base = class_index
        position = {name: i for i, name in enumerate(names)}
        out = []
        for label, is_int in zip(labels, numeric, strict=True):
            index = int(label) - base if is_int else position.get(label)
            if index is None or not 0 <= index < len(names):
                raise ValueError(f"{source}: label {label!r} is not a class of the class index ({names[:5]}...)")
            out.append(index)
        return names, out
    if all(numeric):
        indices = [int(label) for label in labels]
        if min(indices) < 0:
            raise ValueError(f"{source}: label {min(indices)} is negative; labels index classes from 0")
        return [str(i) for i in range(max(indices) + 1)], indices
    if any(numeric):
        example = labels[numeric.index(True)]
        raise ValueError(
            f"{source}: labels mix class names and integers (e.g. {example!r}); use one kind, or give "
            f"data.class_index to say which name each integer stands for"
        )
    names = sorted(set(labels))
    position = {name: i for i, name in enumerate(names)}
    return names, [position[label] for label in labels]


def _lines(path: Path):
    if not Path(path).is_file():
        raise FileNotFoundError(f"list file {path} does not exist")
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield lineno, line
