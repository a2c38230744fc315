"""Split lists and class index files: parsing, label checks (with the line quoted), HMDB51 split files."""

import re

import pytest

from data.video.lists import read_class_index, read_hmdb_splits, read_split_list, scan_folder


def write(path, text):
    path.write_text(text)
    return path


def test_class_index_one_based(tmp_path):
    names, base = read_class_index(write(tmp_path / "classInd.txt", "1 Run\n2 Jump\n\n3 Swim\n"))
    assert (names, base) == (["Run", "Jump", "Swim"], 1)


def test_class_index_zero_based_any_line_order(tmp_path):
    names, base = read_class_index(write(tmp_path / "c.txt", "1 Jump\n0 Run\n"))
    assert (names, base) == (["Run", "Jump"], 0)


@pytest.mark.parametrize("text", ["1 Run\n3 Jump\n", "2 Run\n3 Jump\n", "Run 1\n", "1 Run\n2 Run\n"])
def test_class_index_rejects_gaps_bad_base_and_bad_lines(tmp_path, text):
    with pytest.raises(ValueError, match="c.txt"):
        read_class_index(write(tmp_path / "c.txt", text))


def test_split_list_with_and_without_labels(tmp_path):
    names = ["Run", "Jump"]
    path = write(tmp_path / "train.txt", "Jump/a.avi 2\nRun/b.avi 1\n# comment\nRun/c.avi\n")
    assert read_split_list(path, names, base=1) == [("Jump/a.avi", 1), ("Run/b.avi", 0), ("Run/c.avi", 0)]
    zero = write(tmp_path / "z.txt", "Jump/a.avi 1\n")
    assert read_split_list(zero, names, base=0) == [("Jump/a.avi", 1)]


def test_mismatched_label_is_rejected_with_the_line_quoted(tmp_path):
    path = write(tmp_path / "train.txt", "Run/b.avi 1\nJump/a.avi 1\n")
    with pytest.raises(
        ValueError, match=re.escape("train.txt:2: 'Jump/a.avi 1': label 1 does not match folder 'Jump'")
    ):
        read_split_list(path, ["Run", "Jump"], base=1)


def test_without_class_index_labels_must_be_consistent_per_folder(tmp_path):
    ok = write(tmp_path / "ok.txt", "Run/a.avi 7\nRun/b.avi 7\nJump/c.avi 3\n")
    assert [y for _, y in read_split_list(ok, ["Jump", "Run"], base=None)] == [1, 1, 0]
    bad = write(tmp_path / "bad.txt", "Run/a.avi 7\nRun/b.avi 8\n")
    with pytest.raises(ValueError, match=re.escape("bad.txt:2: 'Run/b.avi 8': label 8 differs from label 7")):
        read_split_list(bad, ["Run"], base=None)


@pytest.mark.parametrize("line", ["Walk/a.avi 1", "a.avi 1", "Run/a.avi one", "Run/a.avi 1 2"])
def test_bad_lines_are_rejected_with_the_line_quoted(tmp_path, line):
    path = write(tmp_path / "l.txt", f"Run/ok.avi\n{line}\n")
    with pytest.raises(ValueError, match=re.escape(f"l.txt:2: {line!r}")):
        read_split_list(path, ["Run"], base=1)


def test_missing_list_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_split_list(tmp_path / "nope.txt", ["Run"], base=None)


def test_hmdb_split_files(tmp_path):
    write(tmp_path / "run_test_split1.txt", "r1.avi 1 \nr2.avi 2 \nr3.avi 0 \n")
    write(tmp_path / "jump_test_split1.txt", "j1.avi 2\nj2.avi 1\n")
    train, test = read_hmdb_splits(tmp_path, ["jump", "run"], split=1)
    assert train == [("jump/j2.avi", 0), ("run/r1.avi", 1)]
    assert test == [("jump/j1.avi", 0), ("run/r2.avi", 1)]
    with pytest.raises(FileNotFoundError, match="run_test_split2.txt"):
        write(tmp_path / "jump_test_split2.txt", "j1.avi 1\n")
        read_hmdb_splits(tmp_path, ["jump", "run"], split=2)


def test_scan_folder_finds_videos_by_suffix(tmp_path):
    for rel in ["b/x.MP4", "b/sub/y.webm", "a/z.avi", "a/notes.txt", ".hidden/w.mp4", "empty/readme.md"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert scan_folder(tmp_path) == {"a": ["a/z.avi"], "b": ["b/sub/y.webm", "b/x.MP4"]}
