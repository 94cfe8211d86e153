from pathlib import Path

import pytest

from dfdetect.data.labels import (
    Label,
    LabelLine,
    from_seed_value,
    generate_labels,
    read_label_file,
    to_seed_value,
    write_label_file,
)
from dfdetect.data.sources import discover, load_celebdf, load_csv, parse_celebdf_name
from dfdetect.errors import BadInputError


def test_seed_convention_is_inverted_exactly_once():
    assert from_seed_value(1) is Label.REAL and from_seed_value(0) is Label.FAKE
    assert to_seed_value(Label.FAKE) == 0 and to_seed_value(Label.REAL) == 1
    with pytest.raises(ValueError):
        from_seed_value(2)


def test_label_file_round_trips_and_reports_bad_lines(tmp_path):
    lines = [LabelLine(Label.REAL, "Celeb-real/id0_0000/00000.png"), LabelLine(Label.FAKE, "Celeb-synthesis/a b.png")]
    f = write_label_file(tmp_path / "labels.txt", lines)
    assert f.read_text().splitlines() == ["1 Celeb-real/id0_0000/00000.png", "0 Celeb-synthesis/a b.png"]
    back, bad = read_label_file(f)
    assert back == lines and bad == []
    f.write_text(f.read_text() + "x nonsense\n7 foo.png\n1\n")
    back, bad = read_label_file(f)
    assert back == lines and len(bad) == 3
    assert all(str(f) in msg for msg in bad)


def test_generate_labels_follows_the_seed(tmp_path):
    for rel in ("Celeb-real/id0_0000/00000.png", "Celeb-synthesis/id0_id1_0000/00000.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    out = tmp_path / "labels.txt"
    generate_labels(tmp_path, "Celeb-real", Label.REAL, dest=out)
    generate_labels(tmp_path, "Celeb-synthesis", Label.FAKE, dest=out)
    assert out.read_text().splitlines() == ["1 Celeb-real/id0_0000/00000.png", "0 Celeb-synthesis/id0_id1_0000/00000.png"]
    with pytest.raises(BadInputError, match="folder not found"):
        generate_labels(tmp_path, "YouTube-real", Label.REAL, dest=out)


@pytest.mark.parametrize(
    ("name", "target", "source", "index"),
    [("id0_0000.mp4", "id0", None, 0), ("id12_id16_0007.mp4", "id12", "id16", 7), ("00170", "yt00170", None, 170)],
)
def test_celebdf_names_parse(name, target, source, index):
    parsed = parse_celebdf_name(name)
    assert (parsed.target, parsed.source, parsed.index) == (target, source, index)


def test_celebdf_bad_name_is_rejected():
    with pytest.raises(ValueError, match="not a Celeb-DF name"):
        parse_celebdf_name("holiday.mp4")


def _touch(root: Path, rel: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(b"\0")


def test_load_celebdf_marks_the_official_test_list(tmp_path):
    for rel in ("Celeb-real/id0_0000.mp4", "Celeb-real/id1_0000.mp4", "Youtube-real/00003.mp4",
                "Celeb-synthesis/id0_id1_0000.mp4", "Celeb-synthesis/id1_id0_0002.mp4", "Celeb-synthesis/junk.mp4"):
        _touch(tmp_path, rel)
    (tmp_path / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00003.mp4\n0 Celeb-synthesis/id1_id0_0002.mp4\n1 Celeb-real/id9_0001.mp4\n")
    ds = discover(tmp_path)
    assert ds.kind == "celebdf"
    by_rel = {it.rel: it for it in ds.items}
    assert by_rel["Youtube-real/00003.mp4"].is_test  # the spelling difference is bridged
    assert by_rel["Celeb-synthesis/id1_id0_0002.mp4"].is_test
    assert by_rel["Celeb-synthesis/id1_id0_0002.mp4"].label is Label.FAKE
    assert by_rel["Celeb-synthesis/id0_id1_0000.mp4"].groups == ("id0", "id1")
    assert not by_rel["Celeb-real/id0_0000.mp4"].is_test
    assert ds.counts() == {"real": 3, "fake": 2, "test": 2}
    assert any("junk.mp4" in s for s in ds.skipped)
    assert any("id9_0001.mp4" in s and "not found" in s for s in ds.skipped)


def test_not_a_celebdf_root_names_the_folder(tmp_path):
    with pytest.raises(BadInputError, match="not a Celeb-DF v2 root"):
        load_celebdf(tmp_path)
    with pytest.raises(BadInputError, match="unknown layout"):
        discover(tmp_path)
    with pytest.raises(BadInputError, match="not found"):
        discover(tmp_path / "missing")


def test_csv_with_group_column(tmp_path):
    _touch(tmp_path, "real/a.jpg")
    _touch(tmp_path, "fake/b.jpg")
    (tmp_path / "labels.csv").write_text(
        "path,label,original_video\nreal/a.jpg,real,a.mp4\nfake/b.jpg,fake,a.mp4\nfake/c.jpg,fake,a.mp4\nreal/a.jpg,maybe,x\n")
    ds = load_csv(tmp_path / "labels.csv")
    assert [(it.label, it.groups) for it in ds.items] == [(Label.REAL, ("a",)), (Label.FAKE, ("a",))]
    assert len(ds.skipped) == 2
    assert discover(tmp_path).kind == "csv"


def test_ffpp_and_dfdc_layouts(tmp_path):
    ff = tmp_path / "ff"
    _touch(ff, "original_sequences/youtube/c23/videos/000.mp4")
    _touch(ff, "manipulated_sequences/Deepfakes/c23/videos/000_003.mp4")
    ds = discover(ff)
    assert ds.kind == "ffpp" and [it.groups for it in ds.items] == [("ff000",), ("ff000", "ff003")]
    dd = tmp_path / "dfdc" / "part0"
    _touch(dd, "aaa.mp4")
    _touch(dd, "bbb.mp4")
    (dd / "metadata.json").write_text(
        '{"aaa.mp4": {"label": "REAL", "original": null}, "bbb.mp4": {"label": "FAKE", "original": "aaa.mp4"},'
        ' "ccc.mp4": {"label": "FAKE", "original": "aaa.mp4"}}')
    ds = discover(tmp_path / "dfdc")
    assert ds.kind == "dfdc"
    assert [(it.label, it.groups) for it in ds.items] == [(Label.REAL, ("aaa",)), (Label.FAKE, ("aaa",))]
    assert len(ds.skipped) == 1


def test_shared_dfdc_faces_load(shared_data):
    ds = discover(shared_data / "dfdc-faces")
    assert ds.counts()["real"] == 3000 and ds.counts()["fake"] == 3000


def test_csv_that_is_not_utf8_text_is_one_line(tmp_path):
    """Regression: a binary or non-UTF-8 CSV gave a UnicodeDecodeError traceback."""
    bad = tmp_path / "labels.csv"
    bad.write_bytes(b"\xff\xfe\x00p\x00a\x00t\x00h")
    with pytest.raises(BadInputError, match="cannot read as a UTF-8 CSV") as err:
        discover(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_csv_with_bom_and_short_rows(tmp_path):
    """A spreadsheet's byte-order mark does not hide 'path'; a row that stops before its path is skipped."""
    _touch(tmp_path, "real/a.jpg")
    (tmp_path / "bom.csv").write_bytes("\ufeffpath,label\nreal/a.jpg,real\n".encode())
    assert len(load_csv(tmp_path / "bom.csv").items) == 1
    (tmp_path / "short.csv").write_text("label,path\nreal\nreal,real/a.jpg\n")
    ds = load_csv(tmp_path / "short.csv")
    assert len(ds.items) == 1 and ds.skipped == [f"{tmp_path / 'short.csv'}:2: no path"]


def test_generate_labels_ignores_hidden_temp_files(tmp_path):
    """Regression: a killed run's atomic-write temp file (.00000.png.x1y2.png) was labelled as data."""
    _touch(tmp_path, "Celeb-real/id0_0000/00000.png")
    _touch(tmp_path, "Celeb-real/id0_0000/.00001.png.k2j3.png")
    lines = generate_labels(tmp_path, "Celeb-real", Label.REAL, dest=tmp_path / "labels.txt")
    assert [line.path for line in lines] == ["Celeb-real/id0_0000/00000.png"]
