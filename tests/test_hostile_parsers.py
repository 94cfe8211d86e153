"""Property-based tests (hypothesis) for every parser of user files (issue 12, "Beyond fixing").

Label lines (``{value} {path}``, 1 = real), the Celeb-DF test list (``List_of_testing_videos.txt``: the same
format), labels.csv, DFDC ``metadata.json`` and Celeb-DF names. Whatever the text, a parser either returns
or raises :class:`~dfdetect.errors.DfdetectError` (one line), every skipped entry is one line, and no path
it yields lies outside the dataset root. Multipart bodies are the service's (tests/test_service.py).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dfdetect.data.labels import Label, LabelLine, format_label_lines, read_label_file
from dfdetect.data.sources import CelebDFName, load_celebdf, load_csv, load_dfdc, parse_celebdf_name
from dfdetect.errors import DfdetectError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Text a file can hold (no lone surrogates), biased to what breaks parsers: separators, dots, slashes, breaks.
TEXT = st.text(st.one_of(st.characters(blacklist_categories=("Cs",)),
                         st.sampled_from(list(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029/\\.,;\"'01"))), max_size=200)
#: Path-like text: components from a small alphabet, so ``..``, absolute and empty parts come up often.
PATHISH = st.lists(st.sampled_from(["..", ".", "", "a", "b.mp4", "real", "x.png", "/", "~", "c:", "id0_0000.mp4",
                                    "\x00", "\n", " ", "%2e%2e"]), min_size=1, max_size=6).map("/".join)


def _inside(root: Path, p: str | Path) -> bool:
    root_a = os.path.abspath(root)
    return os.path.commonpath([root_a, os.path.abspath(p)]) == root_a and ".." not in Path(p).parts


def _one_line_each(lines: list[str]) -> bool:
    return all("\n" not in s and "\r" not in s for s in lines)


def _tree(tmp: Path) -> Path:
    """A dataset root with a few real files, and a file beside it that no row may reach."""
    root = tmp / "root"
    for rel in ("real/a.mp4", "real/x.png", "b.mp4", "fake/b.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"data")
    (tmp / "outside.png").write_bytes(b"secret")
    return root


# --------------------------------------------------------------------------- label lines and the test list


@SETTINGS
@given(TEXT)
@example("1 ../outside.png\n0 /etc/passwd\n1\x0creal/a.mp4\n")
def test_label_lines_never_crash(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.txt"
        path.write_text(text, encoding="utf-8")
        lines, bad = read_label_file(path)
    assert all(isinstance(x.label, Label) and x.path and x.path == x.path.strip() for x in lines)
    assert all("\n" not in x.path for x in lines) and _one_line_each(bad)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([Label.REAL, Label.FAKE]), TEXT), max_size=8))
@example([(Label.REAL, "a\x0cb.png"), (Label.FAKE, "c\u2028d.png"), (Label.REAL, "e\x1cf.png")])
def test_label_file_round_trips_every_name_it_accepts(rows):
    """Regression: reading split lines at \\x0c, \\x1c or \\u2028 too (str.splitlines), so a name holding one
    came back as two rows, one of them lost."""
    # What labels.label_path_problem accepts: no line break, no blank at either end, not empty
    lines = [LabelLine(label, path) for label, path in rows
             if path and path == path.strip() and "\n" not in path and "\r" not in path]
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "labels.txt"
        dest.write_text(format_label_lines(lines), encoding="utf-8")
        back, bad = read_label_file(dest)
    assert back == lines and bad == []


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["0", "1", "2", "x", ""]), st.one_of(PATHISH, TEXT)), max_size=8))
@example([("1", "../outside.png"), ("0", "real/x.png")])
def test_label_table_paths_stay_inside_the_root(rows):
    """Regression: a label line '1 ../outside.png' read a crop from outside the root."""
    from dfdetect.data.crops import load_label_table

    with tempfile.TemporaryDirectory() as tmp:
        root = _tree(Path(tmp))
        label_file = Path(tmp) / "labels.txt"
        label_file.write_text("".join(f"{v} {p}\n" for v, p in rows), encoding="utf-8")
        try:
            table = load_label_table(label_file, root)
        except DfdetectError as exc:
            assert "\n" not in str(exc)
            return
        assert all(_inside(root, p) for p in table.paths) and _one_line_each(table.skipped)


@SETTINGS
@given(TEXT)
@example("1 Celeb-real/id0_0000.mp4\n0 ../../etc/passwd\n1 /abs.mp4\n")
def test_celebdf_test_list_never_crashes(text):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "celeb"
        for rel in ("Celeb-real/id0_0000.mp4", "Celeb-synthesis/id0_id1_0000.mp4", "YouTube-real/00170.mp4"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"data")
        (root / "List_of_testing_videos.txt").write_text(text, encoding="utf-8")
        ds = load_celebdf(root)
    assert sorted(it.rel for it in ds.items) == ["Celeb-real/id0_0000.mp4", "Celeb-synthesis/id0_id1_0000.mp4",
                                                 "YouTube-real/00170.mp4"]
    assert all(_inside(root, it.path) for it in ds.items) and _one_line_each(ds.skipped)


def test_the_writer_refuses_a_name_no_line_can_hold():
    from dfdetect.data.labels import label_path_problem

    for bad in ("a\nb.png", "a\rb.png", " a.png", "a.png\u2028", ""):
        assert label_path_problem(bad)
        try:
            format_label_lines([LabelLine(Label.REAL, bad)])
        except DfdetectError as exc:
            assert "\n" not in str(exc)
        else:
            raise AssertionError(f"{bad!r} was written")


@SETTINGS
@given(TEXT)
@example("id0_id16_0000.mp4")
@example("id99999999999999999999_0000")
def test_celebdf_names_parse_or_say_why(name):
    try:
        parsed = parse_celebdf_name(name)
    except ValueError as exc:
        assert "Celeb-DF name" in str(exc)
        return
    assert isinstance(parsed, CelebDFName) and all(i.startswith(("id", "yt")) for i in parsed.identities)


# --------------------------------------------------------------------------- labels.csv


@SETTINGS
@given(st.one_of(TEXT, st.lists(st.tuples(st.one_of(PATHISH, TEXT), st.sampled_from(["real", "fake", "REAL", "", "x"]),
                                          TEXT), max_size=8)))
@example([("../outside.png", "fake", ""), ("/etc/passwd", "real", ""), ("real/x.png", "real", "g")])
def test_csv_never_crashes_and_stays_inside(content):
    if isinstance(content, list):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "label", "group"])
        w.writerows(content)
        content = buf.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        root = _tree(Path(tmp))
        (root / "labels.csv").write_text(content, encoding="utf-8")
        try:
            ds = load_csv(root / "labels.csv")
        except DfdetectError as exc:
            assert "\n" not in str(exc)
            return
    assert all(_inside(root, it.path) and _inside(root, root / it.rel) for it in ds.items)
    assert _one_line_each(ds.skipped)


# --------------------------------------------------------------------------- DFDC metadata.json

JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=12)
ENTRY = st.one_of(JSON, st.fixed_dictionaries({"label": st.sampled_from(["REAL", "FAKE", "fake", 1, None, ""])},
                                              optional={"original": JSON}))


@SETTINGS
@given(st.one_of(JSON, st.dictionaries(st.one_of(PATHISH, TEXT), ENTRY, max_size=6)))
@example({"a.mp4": {"label": "FAKE", "original": ["x"]}, "../outside.png": {"label": "FAKE"},
          "/etc/passwd": {"label": "REAL"}, "b.mp4": "FAKE"})
def test_dfdc_metadata_never_crashes_and_stays_inside(meta):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dfdc"
        (root / "part0").mkdir(parents=True)
        (root / "part0" / "a.mp4").write_bytes(b"data")
        (root / "part0" / "b.mp4").write_bytes(b"data")
        (Path(tmp) / "outside.png").write_bytes(b"secret")
        (root / "part0" / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
        ds = load_dfdc(root)
    assert all(_inside(root, it.path) and _inside(root, root / it.rel) for it in ds.items)
    assert _one_line_each(ds.skipped)


@SETTINGS
@given(st.binary(max_size=300))
def test_dfdc_metadata_bytes_never_crash(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "metadata.json").write_bytes(data)
        ds = load_dfdc(root)
    assert ds.items == [] or all(_inside(root, it.path) for it in ds.items)
    assert _one_line_each(ds.skipped)
