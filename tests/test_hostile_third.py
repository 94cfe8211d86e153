"""The third hostile run (stop 20): inputs no earlier test had tried, each a regression test that failed before.

Results files that destroy what they point at, output folders of the user's own, recipes and model metadata
that crash or hang, degenerate images, and what onnxruntime writes outside the output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from test_hostile_media import cli, make_video, photo, real_and_fake_photos


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def test_labels_out_never_replaces_a_crop_a_video_a_pipe_or_a_device(tmp_path):
    """Regression: ``labels crops --out X`` replaced whatever X was (an input crop, a video, a FIFO, a device node)
    with its text, by the atomic rename."""
    crop = photo(tmp_path / "crops" / "Celeb-real" / "id0_0000" / "00000.png")
    other = tmp_path / "other"
    other.mkdir()
    video = make_video(other / "clip.mp4", n=4)
    os.mkfifo(other / "pipe.txt")
    os.mknod(other / "nulldev", 0o600 | 0o020000, os.makedev(1, 3))  # a character device, as /dev/null
    before = {p: _md5(p) for p in (crop, video)}
    for target in (crop, video, other / "pipe.txt", other / "nulldev"):
        res = cli("labels", str(tmp_path / "crops"), "--out", str(target))
        assert res.exit_code == 1, (target, res.output)
    assert {p: _md5(p) for p in before} == before
    assert (other / "pipe.txt").is_fifo() and (other / "nulldev").is_char_device()
    ok = cli("labels", str(tmp_path / "crops"), "--out", str(tmp_path / "crops" / "labels.txt"))  # the README's way
    assert ok.exit_code == 0 and (tmp_path / "crops" / "labels.txt").read_text().startswith("1 ")



def test_a_jsonl_that_links_to_an_input_or_holds_other_data_is_refused(tmp_path, red_cli, tiny_model):
    """Regression: ``--jsonl`` as a symlink or hard link to face.png cut the image at its last newline (the
    torn-line repair) and appended JSON to it; a JPEG renamed copy.jsonl was appended to."""
    face = photo(tmp_path / "in" / "face.png")
    before = _md5(face)
    (tmp_path / "sym.jsonl").symlink_to(face)
    os.link(face, tmp_path / "hard.jsonl")
    (tmp_path / "copy.jsonl").write_bytes(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    for name, why in (("sym.jsonl", "is a link"), ("hard.jsonl", "is a link"), ("copy.jsonl", "other than JSON")):
        res = cli("predict", str(face), "--model", str(red_cli), "--jsonl", str(tmp_path / name))
        assert res.exit_code == 1 and why in " ".join(res.output.split()), (name, res.output)
    assert _md5(face) == before and _md5(tmp_path / "hard.jsonl") == before
    res = cli("predict", str(face), "--model", str(tiny_model), "--jsonl", str(tmp_path / "new.jsonl"))
    assert res.exit_code == 0 and json.loads((tmp_path / "new.jsonl").read_text().splitlines()[0])["file"]


def test_evaluate_out_is_never_a_users_folder_or_a_stage_folder(tmp_path, tiny_model):
    """Regression: ``evaluate ds --out mine`` overwrote the user's metrics.json and scores.csv there, and wrote
    into a ``frames`` stage folder."""
    model = tiny_model
    data = tmp_path / "ds"
    real_and_fake_photos(data)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text('{"mine": 1}')
    (mine / "scores.csv").write_text("mine\n")
    res = cli("evaluate", str(model), str(data), "--out", str(mine))
    assert res.exit_code == 1 and "no .dfdetect-run" in " ".join(res.output.split()), res.output
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.json", "scores.csv"]
    assert (mine / "metrics.json").read_text() == '{"mine": 1}'
    make_video(tmp_path / "vids" / "real" / "a.mp4", n=4)
    assert cli("frames", str(tmp_path / "vids"), "--out", str(tmp_path / "fr"), "--frames", "1").exit_code == 0
    listing = sorted(p.relative_to(tmp_path / "fr") for p in (tmp_path / "fr").rglob("*"))
    res = cli("evaluate", str(model), str(data), "--out", str(tmp_path / "fr"))
    assert res.exit_code == 1 and sorted(p.relative_to(tmp_path / "fr") for p in (tmp_path / "fr").rglob("*")) == listing
    ok = cli("evaluate", str(model), str(data), "--out", str(tmp_path / "ev"))
    assert ok.exit_code == 0 and (tmp_path / "ev" / "metrics.json").is_file(), ok.output
    assert cli("evaluate", str(model), str(data), "--out", str(tmp_path / "ev")).exit_code == 0  # its own: again


def test_onnxruntime_writes_nothing_outside_the_output_folder(tmp_path):
    """Regression: importing onnxruntime through dfdetect wrote ~/.cache/Microsoft/DeveloperTools/.onnxruntime/
    (a device id and an event database queued for upload) on every ONNX run."""
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    code = "import dfdetect.model.export as e; import onnxruntime; print(onnxruntime.__version__)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("name", ["deep.yaml", "hex.yaml", "num.yaml", "bomb.yaml"])
def test_hostile_recipes_are_one_line_quickly(tmp_path, name):
    """Regression: a recipe nested 20,000 deep or with a 4,000-digit hex integer gave a traceback; a huge
    num_frames was accepted and crashed later; a 336-byte alias bomb (9^9 leaves) hung in the error line."""
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for n in "bcdefghi":
        bomb += f"{n}: &{n} [" + ",".join(["*" + prev] * 9) + "]\n"
        prev = n
    texts = {"deep.yaml": "frames: " + "[" * 20000 + "]" * 20000 + "\n",
             "hex.yaml": "frames:\n  jpeg_quality: 0x" + "f" * 4000 + "\n",
             "num.yaml": "frames:\n  num_frames: " + "9" * 50 + "\n",
             "bomb.yaml": bomb + "frames: *i\n"}
    (tmp_path / name).write_text(texts[name])
    photo(tmp_path / "ds" / "real" / "a.png")
    code = textwrap.dedent(f"""
        from typer.testing import CliRunner
        from dfdetect.cli import app
        r = CliRunner().invoke(app, ["frames", {str(tmp_path / "ds")!r}, "--out", {str(tmp_path / "o")!r},
                                     "--config", {str(tmp_path / name)!r}], env={{"COLUMNS": "300"}})
        print(r.exit_code, repr(r.output))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]  # timeout=60: the bomb used to hang past 30 s at 2 GB
    rc, output = proc.stdout.strip().split(" ", 1)
    output = eval(output)
    assert rc == "1" and "not a dfdetect recipe" in output and "Traceback" not in output, output
    assert len(output) < 600 and not (tmp_path / "o").exists()


def _with_metadata(src: Path, dest: Path, key: str, value: str) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has keys(), not iteration
    meta[key] = value
    save_file(tensors, str(dest), metadata=meta)
    return dest


def test_model_metadata_nested_too_deep_or_too_large_is_one_line(tmp_path, tiny_model):
    """Regression: a protocol of 100,000 '[' in a .safetensors or .onnx file gave a RecursionError traceback (serve
    crashed at start); an input_size of 100000 loaded, then failed every file; 3000 took 3.2 GB per image."""
    import onnx

    from dfdetect.errors import WeightsError
    from dfdetect.model.detector import Detector
    from dfdetect.model.export import OnnxDetector, export_onnx

    deep = _with_metadata(tiny_model, tmp_path / "deep.safetensors", "protocol", "[" * 100_000)
    with pytest.raises(WeightsError, match="nested too deep"):
        Detector.load(deep)
    proto = json.loads(Detector.load(tiny_model).protocol_.model_dump_json())
    for key, value in (("input_size", 100_000), ("input_size", 3000)):
        bad = json.loads(json.dumps(proto))
        bad["model"][key] = value
        path = _with_metadata(tiny_model, tmp_path / f"{key}{value}.safetensors", "protocol", json.dumps(bad))
        with pytest.raises(WeightsError, match="model.input_size"):
            Detector.load(path)
    export_onnx(Detector.load(tiny_model), tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    for entry in model.metadata_props:
        if entry.key == "dfdetect.protocol":
            entry.value = "[" * 100_000
    onnx.save(model, str(tmp_path / "deep.onnx"))
    with pytest.raises(WeightsError, match="nested too deep"):
        OnnxDetector.load(tmp_path / "deep.onnx")
    res = cli("serve", "--model", str(tmp_path / "deep.onnx"), "--port", "1")
    assert res.exit_code == 1 and "nested too deep" in res.output


def test_a_one_pixel_high_or_wide_image_is_scored_not_an_opencv_assertion(tmp_path):
    """Regression: a valid 2000 x 1 PNG scaled its short side to 0 for the face finder (the default's YuNet runs
    on a <= 640 px copy): a raw OpenCV assertion line in the CLI, and a 500 from serve."""
    from fastapi.testclient import TestClient

    from dfdetect.model import hub
    from dfdetect.model.export import OnnxDetector
    from dfdetect.service import create_app

    for shape in ((1, 2000), (2000, 1)):
        cv2.imwrite(str(tmp_path / f"{shape[0]}x{shape[1]}.png"), np.full((*shape, 3), 128, np.uint8))
    res = cli("predict", str(tmp_path / "1x2000.png"), str(tmp_path / "2000x1.png"))  # the shipped model
    assert res.exit_code == 0 and "OpenCV" not in res.output and res.output.count("no_face") == 2, res.output
    client = TestClient(create_app(OnnxDetector.load(hub.resolve(None).onnx), frames=2))
    r = client.post("/api/v1/detect", files={"file": ("thin.png", (tmp_path / "1x2000.png").read_bytes(), "image/png")})
    assert r.status_code == 200 and r.json()["verdict"] == "no_face", r.text


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    """Regression: a UTF-8 BOM (Notepad's) made the first line of a seed label file or List_of_testing_videos.txt,
    and of a predict list file, unreadable ('\\ufeff1 ...', '\\ufeff../media/alpha.png: no such file')."""
    from dfdetect.data.labels import read_label_file
    from dfdetect.inference.scan import expand_lists

    labels = tmp_path / "List_of_testing_videos.txt"
    labels.write_bytes("\ufeff1 YouTube-real/00170.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n".encode())
    lines, bad = read_label_file(labels)
    assert bad == [] and lines[0].path == "YouTube-real/00170.mp4"
    photo(tmp_path / "media" / "alpha.png")
    listing = tmp_path / "list.txt"
    listing.write_bytes("\ufeffmedia/alpha.png\n".encode())
    assert expand_lists([listing]) == [tmp_path / "media" / "alpha.png"]


def _too_deep(folder: Path) -> None:
    """A video under a path longer than PATH_MAX (4096): made by walking down, since no call takes its whole name."""
    cwd = os.getcwd()
    try:
        os.chdir(folder)
        for _ in range(25):
            os.mkdir("d" * 200)
            os.chdir("d" * 200)
        Path("deep.mp4").write_bytes(b"unreachable")
    finally:
        os.chdir(cwd)


def test_a_path_longer_than_path_max_is_one_skipped_line_not_the_whole_folder(tmp_path, tiny_model):
    """Regression: one entry deeper than PATH_MAX stopped ``frames`` (exit 1, nothing written) and made ``predict``
    skip the whole folder, good videos included."""
    data = tmp_path / "data"
    make_video(data / "real" / "good.mp4", n=4)
    make_video(data / "fake" / "good.mp4", n=4)
    _too_deep(data / "real")
    res = cli("frames", str(data), "--out", str(tmp_path / "out"), "--frames", "1")
    assert res.exit_code == 0 and "2 written" in res.output and "File name too long" in res.output, res.output
    res = cli("predict", str(data), "--model", str(tiny_model), "--frames", "2")
    assert res.exit_code == 0 and "2 scored" in res.output and "File name too long" in res.output, res.output


def test_a_video_of_more_frames_than_the_limit_is_refused_before_its_index_grows(tmp_path, monkeypatch):
    """Regression: a 62 MB mp4 of 4 million 16 x 16 keyframes took predict (and serve) to 1.2 GB, indexing every
    packet. Past ``max_video_frames`` the index stops and the file is one line; the setting is a variable."""
    from dfdetect.config import MediaLimits
    from dfdetect.errors import BadInputError
    from dfdetect.preprocess.frames import count_frames, read_frames

    video = make_video(tmp_path / "data" / "real" / "v.mp4", n=30)
    with pytest.raises(BadInputError, match=r"v.mp4: holds more than 20 frames, the limit \(DFDETECT_MAX_VIDEO"):
        read_frames(video, 4, MediaLimits(max_video_frames=20))
    assert count_frames(video, MediaLimits(max_video_frames=30)) == 30
    monkeypatch.setenv("DFDETECT_MAX_VIDEO_FRAMES", "10")
    res = cli("frames", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--frames", "2")
    assert "holds more than 10 frames" in res.output and "Traceback" not in res.output


def test_frames_far_from_any_keyframe_cost_a_bounded_decode(tmp_path):
    """Regression: a 13 MB mp4 of a million frames after one keyframe took 40-50 s per prediction (a service
    worker held that long). At most ``max_decoded_frames`` are decoded: the sampled frames past it are lost, and
    the stage says so in one line."""
    import av

    from dfdetect.config import FrameConfig, MediaLimits
    from dfdetect.data.sources import discover
    from dfdetect.preprocess.frames import extract_frames, read_frames

    video = tmp_path / "data" / "real" / "onekey.mp4"
    video.parent.mkdir(parents=True)
    with av.open(str(video), "w") as out:
        s = out.add_stream("libx264", rate=25, options={"g": "100000", "bf": "0", "preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(200):
            img = np.full((32, 32, 3), i, np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    assert len(read_frames(video, 4)) == 4
    tight = MediaLimits(max_decoded_frames=60)
    got = read_frames(video, 4, tight)
    assert 1 <= len(got) < 4 and all(i < 60 for i, _ in got)
    report = extract_frames(discover(tmp_path / "data").items, tmp_path / "out", FrameConfig(num_frames=4),
                            limits=tight)
    assert report.written == len(got) and len(report.failed) == 1 and "could not be decoded" in report.failed[0]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_decoder_messages_are_the_files_own_line_not_loose_on_stderr(tmp_path, capfd):
    """Regression (third hostile run): OpenCV, through libpng, wrote ``libpng warning: iCCP: too short`` or
    ``[ WARN:0@0.1] ... PNG input buffer is incomplete`` straight to stderr, naming no file, beside dfdetect's own
    line for it. A warning alone leaves usable pixels (scored, no word); an error is the file's one line."""
    from dfdetect._io import load_image

    png = cv2.imencode(".png", np.full((64, 64, 3), 100, np.uint8))[1].tobytes()
    (tmp_path / "iccp.png").write_bytes(png[:33] + _png_chunk(b"iCCP", b"x\0\0" + b"junk" * 9) + png[33:])
    (tmp_path / "trunc.png").write_bytes(png[:len(png) // 2])
    idat = png.find(b"IDAT")
    n = int.from_bytes(png[idat - 4:idat], "big")
    body = bytearray(png[idat + 4:idat + 4 + n])
    body[6] ^= 0x55
    (tmp_path / "idat.png").write_bytes(png[:idat - 4] + _png_chunk(b"IDAT", bytes(body)) + png[idat + 8 + n:])
    capfd.readouterr()
    assert load_image(tmp_path / "iccp.png").shape == (64, 64, 3)
    errors = {}
    for name in ("trunc.png", "idat.png"):
        with pytest.raises(Exception) as err:
            load_image(tmp_path / name)
        errors[name] = str(err.value)
    print("still ours", file=sys.stderr, flush=True)
    err_text = capfd.readouterr().err
    assert "libpng" not in err_text and "WARN" not in err_text and "still ours" in err_text, err_text
    assert errors["trunc.png"].endswith("cannot decode the PNG image (PNG input buffer is incomplete)"), errors
    assert "idat.png: cannot decode the PNG image (libpng error: IDAT:" in errors["idat.png"], errors


def test_predicts_summary_names_no_folder_it_did_not_write_to(tmp_path, tiny_model):
    """Regression (third hostile run): ``predict a/x.mp4 b/y.mp4`` ended with ``predict: 2 written, 0 reused, 0
    skipped -> /home/you``: nothing was written, and the folder named was the inputs' common one (often the working
    directory). Now the summary counts what was scored, and names a folder only for ``--save``."""
    a = make_video(tmp_path / "a" / "x.mp4", n=4)
    b = make_video(tmp_path / "b" / "y.mp4", n=4)
    res = cli("predict", str(a), str(b), "--model", str(tiny_model), "--frames", "2")
    assert res.exit_code == 0 and "predict: 2 scored, 0 skipped\n" in res.output, res.output
    assert "->" not in res.output.split("predict: 2 scored")[1], res.output
    res = cli("predict", str(a), "--model", str(tiny_model), "--frames", "2", "--save", str(tmp_path / "vis"))
    assert res.exit_code == 0 and f"predict: 1 scored, 0 skipped -> {tmp_path / 'vis'}" in res.output, res.output
