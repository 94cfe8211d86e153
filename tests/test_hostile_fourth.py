"""The fourth hostile run (stop 21): inputs no earlier test had tried, each a regression test that failed before.

Paths that Rich read as markup, Hugging Face references the hub's own validator refuses, model files that hang or
blow up memory before they are checked, scan results that kept a passing failure for ever, sideways phone videos,
files with a thumbnail stream first, and what libraries printed on their own.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from test_hostile_media import cli, make_video

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "dfdetect" / "models"



def test_paths_that_look_like_rich_markup_are_printed_not_parsed(tmp_path, tiny_model):
    """Regression: ``--json 'mk/[/].json'`` (and ``--save``, ``--jsonl``, ``export --onnx``) ended in Rich's
    MarkupError traceback after the work was done; ``mk/[bold]/o.json`` was printed as ``mk//o.json``."""
    video = make_video(tmp_path / "in" / "clip.mp4", n=4)
    for odd in ("[", "[bold]"):
        folder = tmp_path / odd
        folder.mkdir()
        res = cli("predict", str(video), "--model", str(tiny_model), "--frames", "2",
                  "--json", str(folder / "].json" if odd == "[" else folder / "o.json"),
                  "--save", str(folder / "[/]pics"))
        assert res.exit_code == 0 and "Traceback" not in res.output, res.output
        assert f"results -> {folder}" in res.output and f"-> {folder / '[/]pics'}" in res.output, res.output
    res = cli("export", "--model", str(tiny_model), "--onnx", str(tmp_path / "[" / "[/]x.onnx"))
    assert res.exit_code == 0 and f"ONNX model -> {tmp_path / '[' / '[/]x.onnx'}" in res.output, res.output


@pytest.mark.parametrize("ref", ["hf://../../etc", "hf://a/b@main/x.safetensors", "hf://-a/b",
                                 "hf://a/b/../../x.safetensors"])
def test_hugging_face_references_the_hub_refuses_are_one_line(ref, tmp_path):
    """Regression: these gave huggingface_hub's HFValidationError (or a ValueError) with a 17-frame traceback."""
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.zeros((32, 32, 3), np.uint8))
    res = cli("predict", str(photo), "--model", ref)
    assert res.exit_code == 1 and "is not a Hugging Face reference" in res.output, res.output
    assert "Traceback" not in res.output


def _onnx_with_shipped_metadata(graph, path: Path) -> Path:
    import onnx
    from onnx import helper

    src = onnx.load(str(SHIPPED / "mobilenet_v2.dfdc_sbi.onnx"), load_external_data=False)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for prop in src.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(model, str(path))
    return path


def test_an_onnx_model_that_loops_for_ever_is_refused_from_its_graph(tmp_path):
    """Regression: a graph of one ``Loop`` of 2**62 turns, with the shipped twin's metadata, held ``predict`` for
    ever, and each ``serve`` worker that took an upload (SIGTERM did not stop it)."""
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    from dfdetect.errors import WeightsError
    from dfdetect.model.export import OnnxDetector

    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Add", ["a_in", "one"], ["a_out"])],
        "body", [helper.make_tensor_value_info("i", T.INT64, []), helper.make_tensor_value_info("c_in", T.BOOL, []),
                 helper.make_tensor_value_info("a_in", T.FLOAT, [1])],
        [helper.make_tensor_value_info("c_out", T.BOOL, []), helper.make_tensor_value_info("a_out", T.FLOAT, [1])],
        [numpy_helper.from_array(np.array([1.0], np.float32), "one")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "cond", "a0"], ["a"], body=body),
         helper.make_node("ReduceMean", ["input", "axes"], ["m"], keepdims=1),
         helper.make_node("Reshape", ["m", "shape"], ["m2"]), helper.make_node("Mul", ["m2", "a"], ["logit"])],
        "hang", [helper.make_tensor_value_info("input", T.FLOAT, ["n", 3, 160, 160])],
        [helper.make_tensor_value_info("logit", T.FLOAT, ["n", 1])],
        [numpy_helper.from_array(np.array(2**62, np.int64), "M"), numpy_helper.from_array(np.array(True), "cond"),
         numpy_helper.from_array(np.array([0.0], np.float32), "a0"),
         numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
         numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")])
    path = _onnx_with_shipped_metadata(graph, tmp_path / "loop.onnx")
    with pytest.raises(WeightsError, match=r"loop.onnx: its graph holds Loop, which `dfdetect export` never writes"):
        OnnxDetector.load(path)


def test_onnxruntimes_own_error_log_does_not_reach_the_terminal(tmp_path):
    """Regression: an ONNX file whose weights are external data in a named pipe was refused in one line, but only
    after onnxruntime's own red, multi-line ``[E:onnxruntime:...]`` log."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(SHIPPED / "mobilenet_v2.dfdc_sbi.onnx"))
    big = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    n = len(big.raw_data)
    big.ClearField("raw_data")
    big.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", str(n))):
        big.external_data.add(key=k, value=v)
    onnx.save(model, str(tmp_path / "ext.onnx"))
    os.mkfifo(tmp_path / "weights.bin")
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.zeros((32, 32, 3), np.uint8))
    run = subprocess.run([sys.executable, "-m", "dfdetect", "predict", str(photo), "--model",
                          str(tmp_path / "ext.onnx"), "--onnx"], capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 1 and "not a loadable ONNX model" in run.stderr, run.stderr
    assert "[E:onnxruntime" not in run.stderr and "\x1b[" not in run.stderr, run.stderr


def test_a_sparse_model_file_is_refused_from_its_header_before_any_tensor_is_read(tmp_path):
    """Regression: a 1 GB sparse .safetensors (4 KB on disk) with the shipped model's metadata and one fp16 tensor
    took 4 GB and 14 s to be read and cast, and only then was refused. The names and shapes in the header are
    compared with the model first (the old message came from ``load_state_dict``, after every tensor)."""
    from safetensors import safe_open

    from dfdetect.errors import WeightsError
    from dfdetect.model.detector import Detector

    with safe_open(str(SHIPPED / "mobilenet_v2.dfdc_sbi.safetensors"), "np") as fh:
        meta = fh.metadata()
    n = 64 << 20
    head = json.dumps({"__metadata__": meta, "w": {"dtype": "F16", "shape": [n // 2], "data_offsets": [0, n]}})
    path = tmp_path / "sparse.safetensors"
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(head)) + head.encode())
        fh.truncate(8 + len(head) + n)
    with pytest.raises(WeightsError, match=r"tensors differ, e\.g\. "):
        Detector.load(path)


def test_a_bad_limit_variable_is_one_line_at_the_start_not_a_failure_per_file(tmp_path, red_cli, monkeypatch):
    """Regression: ``DFDETECT_MAX_PIXELS=abc predict a.png b.mp4 --jsonl x.jsonl`` wrote an error line for every
    file, which a rerun with the variable fixed then skipped as done."""
    monkeypatch.setenv("DFDETECT_MAX_PIXELS", "abc")
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.zeros((32, 32, 3), np.uint8))
    res = cli("predict", str(photo), "--model", str(red_cli), "--jsonl", str(tmp_path / "x.jsonl"))
    assert res.exit_code == 1 and "DFDETECT_MAX_PIXELS" in res.output and not (tmp_path / "x.jsonl").exists()


def test_save_never_gives_one_name_to_two_inputs_across_runs(tmp_path, tiny_model):
    """Regression: ``predict a/clip.mp4 --save vis`` then ``predict b/clip.mp4 --save vis`` replaced a's pictures
    with b's, unsaid. The folder remembers which input each name shows; the same input again replaces its own."""
    a = make_video(tmp_path / "a" / "clip.mp4", n=4)
    b = make_video(tmp_path / "b" / "clip.mp4", n=4, seed=1)
    vis = tmp_path / "vis"
    for video in (a, b, a):
        res = cli("predict", str(video), "--model", str(tiny_model), "--frames", "2", "--save", str(vis))
        assert res.exit_code == 0, res.output
    names = sorted(p.name for p in vis.iterdir() if not p.name.startswith("."))
    assert names == ["clip-2_faces.png", "clip-2_scores.png", "clip_faces.png", "clip_scores.png"] or \
        names == ["clip-2_scores.png", "clip_scores.png"], names
    index = json.loads((vis / ".dfdetect-pictures.json").read_text())
    assert index == {"clip": str(a.resolve()), "clip-2": str(b.resolve())}


def _face_video(path: Path, image: np.ndarray, n: int = 6) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
        for _ in range(n):
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:, :, ::-1]), format="rgb24")))
        c.mux(s.encode())
    return path


def test_a_sideways_phone_video_is_turned_upright(tmp_path):
    """Regression: a portrait video stored sideways with a display matrix (as phones write it) was decoded sideways,
    so no face was found in it. Frames now come upright, as players and FFmpeg show them."""
    from dfdetect.preprocess.frames import read_frames

    rng = np.random.default_rng(0)
    upright = cv2.resize(rng.integers(0, 255, (6, 4, 3), dtype=np.uint8), (64, 96), interpolation=cv2.INTER_NEAREST)
    stored = _face_video(tmp_path / "stored.mp4", np.ascontiguousarray(np.rot90(upright, 1)))  # turned left
    data = bytearray(stored.read_bytes())
    identity = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    at = data.find(identity, data.find(b"tkhd"))
    data[at:at + 36] = struct.pack(">9I", 0, 0x10000, 0, 0xFFFF0000, 0, 0, 0, 0, 0x40000000)  # "turn it right"
    phone = tmp_path / "phone.mp4"
    phone.write_bytes(bytes(data))
    frames = dict(read_frames(phone, 2))
    assert all(f.shape == upright.shape for f in frames.values())  # the old code: (64, 96, 3), sideways
    assert np.abs(frames[min(frames)].astype(int) - upright.astype(int)).mean() < 8


def test_the_largest_video_stream_is_read_not_a_thumbnail_before_it(tmp_path):
    """Regression: an mkv whose first stream is a 64 x 64 black track and second the real video gave no_face."""
    from dfdetect.preprocess.frames import read_frames

    path = tmp_path / "two.mkv"
    with av.open(str(path), "w") as c:
        small, big = c.add_stream("libx264", rate=10), c.add_stream("libx264", rate=10)
        small.width = small.height = 64
        big.width, big.height = 160, 128
        for s in (small, big):
            s.pix_fmt = "yuv420p"
        for _ in range(4):
            c.mux(small.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")))
            c.mux(big.encode(av.VideoFrame.from_ndarray(np.full((128, 160, 3), 200, np.uint8), format="rgb24")))
        c.mux(small.encode())
        c.mux(big.encode())
    frames = dict(read_frames(path, 2))
    assert frames and all(f.shape == (128, 160, 3) for f in frames.values())


def test_training_says_when_its_detector_has_learnt_nothing():
    """Regression: a tiny head training with validation AUC 0.28 saved threshold 1.0 without a word; the detector
    then called every fake real."""
    from dfdetect.training.trainer import _verdict_warnings

    y = np.array([0, 0, 0, 1, 1, 1])
    worse = _verdict_warnings(y, np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3]), 1.0)
    assert any("validation AUC 0.000 is at or below chance" in w for w in worse)
    assert any("calls every validation crop real" in w for w in worse)
    assert _verdict_warnings(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), 0.5) == []


def test_pillows_warning_on_a_corrupt_exif_block_does_not_reach_stderr(tmp_path):
    """Regression: a JPEG with a broken EXIF block printed Pillow's ``UserWarning: Corrupt EXIF data`` (naming no
    file) while dfdetect read its header; the pixels are fine and it is scored."""
    from PIL import Image

    from dfdetect._io import load_image

    path = tmp_path / "bad_exif.jpg"
    Image.new("RGB", (40, 30), (90, 120, 150)).save(path, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + bytes(20))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # what a terminal would have shown
        assert load_image(path).shape == (30, 40, 3)
    assert not [w for w in caught if "EXIF" in str(w.message)], [str(w.message) for w in caught]


def test_a_list_naming_one_file_many_times_scores_it_once_and_says_so(tmp_path, red_cli):
    """Regression: a list naming the same image 3,000 times was scored 3,000 times (3,000 rows), and past 20
    skipped lines predict pointed at "the manifest", which predict never writes."""
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.zeros((32, 32, 3), np.uint8))
    listing = tmp_path / "list.txt"
    listing.write_text("p.png\n" * 30 + "".join(f"gone{i}.png\n" for i in range(25)))
    res = cli("predict", str(listing), "--model", str(red_cli), "--json", str(tmp_path / "out.json"))
    assert res.exit_code == 0 and "29 repeated inputs left out" in res.output, res.output
    doc = json.loads((tmp_path / "out.json").read_text())
    assert len(doc["results"]) == 1 and len(doc["failed"]) == 25
    assert res.output.count("skipped:") == 25 and "manifest" not in res.output


def test_a_recipe_that_gives_a_key_twice_is_refused(tmp_path):
    """Regression: PyYAML kept the last of two ``frames:`` keys silently; a ``<<`` merge still works."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("frames:\n  num_frames: 4\nframes:\n  num_frames: 8\n")
    res = cli("train", str(tmp_path), "--config", str(dup), "--out", str(tmp_path / "run"))
    assert res.exit_code == 1 and "the key 'frames' is given twice" in res.output, res.output
    from dfdetect.config import load_protocol

    merged = tmp_path / "merge.yaml"
    merged.write_text(textwrap.dedent("""\
        frames: &f
          num_frames: 4
          test_frames: 4
        model:
          input_size: 96
    """))
    assert load_protocol(merged).frames.num_frames == 4


def test_folder_scans_take_tiff_photos_and_3gp_clips(tmp_path):
    """Regression: ``.tif`` photos and ``.3gp``/``.mpg``/``.ts`` clips in a folder were left out of scans, unsaid."""
    from dfdetect.inference.predict import media_files

    cv2.imwrite(str(tmp_path / "a.tif"), np.zeros((8, 8, 3), np.uint8))
    for name in ("b.3gp", "c.mpg", "d.ts", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in media_files(tmp_path)] == ["a.tif", "b.3gp", "c.mpg", "d.ts"]


def test_unicode_line_separators_in_names_are_escaped():
    """Regression: U+2028 in a file name was printed raw, which some terminals and viewers show as a line break."""
    from dfdetect.errors import one_line

    assert one_line("a\u2028b\u2029c\x85d") == "a\\u2028b\\u2029c\\x85d"


def test_a_second_run_into_a_stage_folder_being_written_is_refused(tmp_path):
    """Regression (race): two runs of one stage into one folder both passed the stamp check, and each one's clean-up
    of interrupted temp files could delete the other's in-flight ones. The folder is locked while a run writes."""
    import fcntl

    make_video(tmp_path / "data" / "real" / "v.mp4", n=4)
    out = tmp_path / "out"
    assert cli("frames", str(tmp_path / "data"), "--out", str(out), "--frames", "1").exit_code == 0
    with (out / ".dfdetect-lock").open("a") as held:  # another run, busy in this folder
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        res = cli("frames", str(tmp_path / "data"), "--out", str(out), "--frames", "1")
        assert res.exit_code == 1 and "another dfdetect run is writing this folder" in res.output, res.output
    res = cli("frames", str(tmp_path / "data"), "--out", str(out), "--frames", "1")
    assert res.exit_code == 0 and "1 reused" in res.output, res.output
