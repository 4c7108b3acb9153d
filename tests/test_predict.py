"""Tests for fer_tasks.tools.predict: faces in real photos, .keras and .tflite models, bad input."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import band_split, train_tiny_classifier
from PIL import Image

from fer_tasks import CLASS_NAMES
from fer_tasks.tools.predict import MAX_PIXELS, MIN_FACE, predict, read_gray, read_image

pytestmark = pytest.mark.slow  # trains a tiny CNN (seconds)
ROOT = Path(__file__).resolve().parents[1]


def _has_cascade() -> bool:
    import cv2

    return hasattr(cv2, "CascadeClassifier")


needs_cascade = pytest.mark.skipif(
    not _has_cascade(),
    reason="this OpenCV has no Haar cascade classifier (OpenCV 5): pin opencv-python-headless<5",
)


def _tiny_model():
    """A small CNN trained on bands whose position sets the class (learnable, fast)."""
    x, y = band_split(280, seed=0)
    return train_tiny_classifier(x, y, epochs=2), x


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from fer_tasks.stages.export import convert, representative_images, saved_model

    root = tmp_path_factory.mktemp("models")
    model, x = _tiny_model()
    paths = {
        "keras": root / "model.keras",
        "tflite": root / "model_float32.tflite",
        "int8": root / "model_int8.tflite",
    }
    model.save(paths["keras"])
    saved = saved_model(model, root / "saved_model")
    paths["tflite"].write_bytes(convert(saved, "float32"))
    paths["int8"].write_bytes(convert(saved, "int8", representative_images(x, 50, seed=0)))
    # as `export` leaves them: a recipe beside the files (here T = 1, no TTA)
    (root / "inference.json").write_text(
        json.dumps({"temperature": 1.0, "tta_flip": False, "temperature_in_model": True})
    )
    return paths


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """A photo with one frontal face (skimage's astronaut), one without, one gray crop."""
    data = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("photos")
    paths = {"face": root / "astronaut.jpg", "cat": root / "cat.png", "crop": root / "crop.png"}
    Image.fromarray(data.astronaut()).save(paths["face"], quality=92)
    Image.fromarray(data.chelsea()).save(paths["cat"])
    Image.fromarray(np.full((60, 50), 128, np.uint8)).save(paths["crop"])
    return paths


def _run(paths, model, **kw) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    rc = predict([Path(p) for p in paths], Path(model), out=out, err=err, **kw)
    return rc, out.getvalue().splitlines(), err.getvalue()


def _check_face_line(line: str, file: Path) -> dict:
    rec = json.loads(line)
    assert list(rec) == ["file", "box", "probabilities"]
    assert rec["file"] == str(file)
    assert list(rec["probabilities"]) == list(CLASS_NAMES)
    assert sum(rec["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert all(0.0 <= p <= 1.0 for p in rec["probabilities"].values())
    assert len(rec["box"]) == 4 and all(isinstance(v, int) for v in rec["box"])
    return rec


def _png_with_declared_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height (valid CRC), never allocated here."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------- faces


@needs_cascade
@pytest.mark.parametrize("kind", ["keras", "tflite", "int8"])
def test_face_in_photo_gives_box_and_probabilities(models, photos, kind) -> None:
    rc, lines, err = _run([photos["face"]], models[kind])
    assert rc == 0, err
    assert len(lines) == 1
    rec = _check_face_line(lines[0], photos["face"])
    x, y, w, h = rec["box"]
    # the astronaut's face: around (177, 66) 95x95 before padding, in a 512x512 photo
    assert 140 < x < 200 and 30 < y < 90 and 90 < w < 150 and 90 < h < 150
    assert x + w <= 512 and y + h <= 512


@needs_cascade
def test_keras_and_tflite_agree_on_the_face(models, photos) -> None:
    probs = []
    for kind in ("keras", "tflite"):
        rc, lines, _ = _run([photos["face"]], models[kind])
        assert rc == 0
        probs.append(np.array(list(json.loads(lines[0])["probabilities"].values())))
    assert np.abs(probs[0] - probs[1]).max() < 1e-3


def test_no_detect_uses_whole_image(models, photos) -> None:
    rc, lines, err = _run([photos["crop"]], models["tflite"], detect=False)
    assert rc == 0, err
    assert _check_face_line(lines[0], photos["crop"])["box"] == [0, 0, 50, 60]


def test_top_k_prints_short_line(models, photos) -> None:
    rc, lines, _ = _run([photos["crop"]], models["keras"], detect=False, top=2)
    assert rc == 0 and len(lines) == 1
    assert lines[0].startswith(f"{photos['crop']} [0,0,50,60]: ")
    parts = lines[0].split(": ", 1)[1].split(", ")
    assert len(parts) == 2
    pcts = [float(p.split()[1].rstrip("%")) for p in parts]
    assert pcts[0] >= pcts[1] and {p.split()[0] for p in parts} <= set(CLASS_NAMES)
    assert _run([photos["crop"]], models["keras"], detect=False, top=8)[0] == 2


def test_folder_is_searched_recursively_for_images(models, tmp_path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in (tmp_path / "x.png", tmp_path / "a" / "b" / "y.JPG"):
        Image.fromarray(np.full((48, 48), 90, np.uint8)).save(p, format="PNG")
    (tmp_path / "a" / "notes.txt").write_text("not an image, skipped in folders")
    rc, lines, err = _run([tmp_path], models["tflite"], detect=False)
    assert rc == 0, err
    assert [json.loads(line)["file"] for line in lines] == [
        str(tmp_path / "a" / "b" / "y.JPG"),
        str(tmp_path / "x.png"),
    ]


def test_tflite_path_never_imports_tensorflow(models, photos) -> None:
    detect = _has_cascade()  # exercise OpenCV too where it can detect
    image = photos["face"] if detect else photos["crop"]
    code = (
        "import sys; from pathlib import Path; from fer_tasks.tools.predict import predict\n"
        f"rc = predict([Path({str(image)!r})], Path({str(models['int8'])!r}), detect={detect!r})\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print('HEAVY', heavy, file=sys.stderr); sys.exit(rc or (3 if heavy else 0))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stderr
    assert len(r.stdout.splitlines()) == 1


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "case",
    [
        "not_image",
        "truncated_jpeg",
        "truncated_png",
        "bomb_header",
        "bomb_pil",
        "one_pixel",
        "missing_file",
    ],
)
def test_bad_file_is_reported_and_others_still_run(models, photos, tmp_path, case) -> None:
    bad = tmp_path / f"{case}.png"
    if case == "not_image":
        bad.write_text("hello, I am text\n")
        expect = "not an image"
    elif case.startswith("truncated"):
        fmt = "JPEG" if case.endswith("jpeg") else "PNG"
        buf = io.BytesIO()
        rgb = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(buf, format=fmt)
        bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        expect = "truncated"
    elif case == "bomb_header":  # over our limit, under Pillow's own bomb check
        _png_with_declared_size(bad, 10_000, 8_000)
        expect = f"10000x8000 = 80.0 megapixels (limit {MAX_PIXELS / 1e6:g})"
    elif case == "bomb_pil":  # so large that Pillow itself refuses to open it
        _png_with_declared_size(bad, 60_000, 60_000)
        expect = "too large, not decoded"
    elif case == "one_pixel":  # would be blown up to 48x48 from a single pixel
        Image.new("L", (1, 1), 128).save(bad)
        expect = f"image too small: 1x1 (a face needs {MIN_FACE} px or more)"
    else:
        expect = "no such file"
    rc, lines, err = _run([photos["crop"], bad, photos["crop"]], models["tflite"], detect=False)
    assert rc == 1
    assert len(lines) == 2  # both good files still printed
    assert all(json.loads(line)["file"] == str(photos["crop"]) for line in lines)
    assert err.count("fer predict: ") == 1
    assert f"fer predict: {bad}: " in err and expect in err


def test_bomb_is_refused_before_decoding(tmp_path, monkeypatch) -> None:
    path = _png_with_declared_size(tmp_path / "bomb.png", 10_000, 8_000)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a bomb"))
    with pytest.raises(ValueError, match="too large"):
        read_gray(path)


@needs_cascade
def test_photo_without_face_is_reported(models, photos) -> None:
    rc, lines, err = _run([photos["cat"], photos["face"]], models["tflite"])
    assert rc == 1
    assert len(lines) == 1 and json.loads(lines[0])["file"] == str(photos["face"])
    assert f"fer predict: {photos['cat']}: no face found" in err


@pytest.mark.parametrize("name", ["missing.keras", "missing.tflite"])
def test_missing_model_fails_clearly(photos, tmp_path, name) -> None:
    rc, lines, err = _run([photos["crop"]], tmp_path / name, detect=False)
    assert rc == 2 and lines == []
    assert f"{tmp_path / name}: model file not found" in err


def test_unusable_model_files_fail_clearly(photos, tmp_path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "m.tflite").write_bytes(b"not a flatbuffer")
    (tmp_path / "m.keras").write_bytes(b"not a zip")
    for name, expect in (
        ("m.onnx", "unknown model kind"),
        ("m.tflite", "not a loadable TFLite"),
        ("m.keras", "not a loadable .keras"),
    ):
        rc, lines, err = _run([photos["crop"]], tmp_path / name, detect=False)
        assert rc == 2 and lines == [], name
        assert expect in err and str(tmp_path / name) in err


def test_opencv_without_cascade_is_a_clear_error(models, photos, monkeypatch) -> None:
    import cv2

    monkeypatch.delattr(cv2, "CascadeClassifier", raising=False)
    rc, lines, err = _run([photos["face"]], models["tflite"])
    assert rc == 2 and lines == []
    assert "opencv-python-headless<5" in err and "--no-detect" in err


def test_opencv_missing_is_a_clear_error(models, photos, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
    rc, lines, err = _run([photos["face"]], models["tflite"])
    assert rc == 2 and lines == []
    assert "face detection needs OpenCV" in err
    assert _run([photos["crop"]], models["tflite"], detect=False)[0] == 0  # no OpenCV needed


# --------------------------------------------------------------------------- depth, size, frames


def _face8() -> np.ndarray:
    """A face-like 8-bit image (56x48) using the full 0..255 range: head, eyes, brows, mouth."""
    yy, xx = np.mgrid[:56, :48]
    a = 40 + 60 * yy / 55  # background gradient
    a = np.where(((xx - 24) / 18) ** 2 + ((yy - 28) / 24) ** 2 <= 1, 190 + 20 * xx / 47, a)
    for cx in (16, 32):
        a[(xx - cx) ** 2 + (yy - 22) ** 2 <= 9] = 0  # eyes
        a[16:18, cx - 4 : cx + 5] = 70  # brows
    a[38:41, 16:33] = 255  # open mouth, teeth
    return np.round(a).astype(np.uint8)


# the 8-bit face saved at other depths; each holds it at full range (or at 10 bits, or offset)
DEPTHS = {
    "png16_full.png": ("I;16", lambda a: a.astype(np.uint16) * 257),
    "png16_10bit.png": ("I;16", lambda a: a.astype(np.uint16) * 4),
    "tiff_i32_full.tif": ("I", lambda a: a.astype(np.int32) * 8_421_504),  # up to 2**31 - 128
    "tiff_i32_x1000.tif": ("I", lambda a: a.astype(np.int32) * 1000),
    "tiff_i32_signed.tif": ("I", lambda a: a.astype(np.int32) * 1000 - 128_000),
    "tiff_float.tif": ("F", lambda a: (a / 255.0).astype(np.float32)),
}


def _probabilities(lines: list[str]) -> np.ndarray:
    return np.array([list(json.loads(line)["probabilities"].values()) for line in lines])


@pytest.mark.parametrize("name", list(DEPTHS))
def test_high_bit_depth_reads_as_its_8_bit_version(tmp_path, name) -> None:
    a = _face8()
    assert a.min() == 0 and a.max() == 255
    mode, convert = DEPTHS[name]
    Image.fromarray(convert(a)).save(tmp_path / name)
    with Image.open(tmp_path / name) as img:
        assert img.mode == mode  # the file really is that depth
    Image.fromarray(a).save(tmp_path / "face8.png")
    gray8 = read_gray(tmp_path / "face8.png")
    assert np.array_equal(gray8, a)
    gray = read_gray(tmp_path / name)
    assert gray.dtype == np.uint8 and gray.shape == a.shape
    assert np.abs(gray.astype(int) - gray8).max() <= 1


def test_high_bit_depth_predicts_like_8_bit(models, tmp_path) -> None:
    a = _face8()
    files = [tmp_path / "face8.png"] + [tmp_path / name for name in DEPTHS]
    Image.fromarray(a).save(files[0])
    for name, (_, convert) in DEPTHS.items():
        Image.fromarray(convert(a)).save(tmp_path / name)
    rc, lines, err = _run(files, models["tflite"], detect=False)
    assert rc == 0 and err == ""
    assert [json.loads(line)["file"] for line in lines] == list(map(str, files))
    probs = _probabilities(lines)
    assert np.abs(probs - probs[0]).max() < 1e-6


def test_eight_bit_is_not_stretched_and_constant_high_depth_is_mid_grey(tmp_path) -> None:
    narrow = (100 + _face8() // 4).astype(np.uint8)  # 100..163: kept as it is
    Image.fromarray(narrow).save(tmp_path / "narrow8.png")
    assert np.array_equal(read_gray(tmp_path / "narrow8.png"), narrow)
    Image.fromarray(np.full((20, 20), 77, np.uint8)).save(tmp_path / "flat8.png")
    assert (read_gray(tmp_path / "flat8.png") == 77).all()
    for name, flat in (
        ("flat16.png", np.full((20, 20), 1000, np.uint16)),
        ("flat_i32.tif", np.full((20, 20), -5, np.int32)),
        ("flat_float.tif", np.full((20, 20), 0.25, np.float32)),
    ):
        Image.fromarray(flat).save(tmp_path / name)
        assert (read_gray(tmp_path / name) == 128).all(), name


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_image_with_non_finite_pixels_is_refused(models, photos, tmp_path, bad) -> None:
    f = (_face8() / 255.0).astype(np.float32)
    f[10, 10] = bad
    path = tmp_path / "bad_float.tif"
    Image.fromarray(f).save(path)
    rc, lines, err = _run([path, photos["crop"]], models["tflite"], detect=False)
    assert rc == 1
    assert len(lines) == 1 and json.loads(lines[0])["file"] == str(photos["crop"])
    msg = "NaN or infinite float pixels: cannot scale them to 8-bit grey"
    assert err == f"fer predict: {path}: {msg}\n"


def test_images_under_min_face_are_refused_and_min_face_is_not(models, tmp_path) -> None:
    sizes = [(1, 1), (MIN_FACE - 1, 40), (40, MIN_FACE - 1), (MIN_FACE, MIN_FACE), (MIN_FACE, 40)]
    files = []
    for w, h in sizes:
        files.append(tmp_path / f"g{w}x{h}.png")
        Image.fromarray(_face8()[:h, :w]).save(files[-1])
    rc, lines, err = _run(files, models["tflite"], detect=False)
    assert rc == 1
    assert [json.loads(line)["file"] for line in lines] == list(map(str, files[3:]))
    assert err.splitlines() == [
        f"fer predict: {f}: image too small: {w}x{h} (a face needs {MIN_FACE} px or more)"
        for f, (w, h) in zip(files[:3], sizes[:3], strict=True)
    ]


@pytest.mark.parametrize("name", ["anim.gif", "pages.tif"])
def test_multi_frame_file_is_predicted_from_frame_1_with_a_note(models, tmp_path, name) -> None:
    a = _face8()
    frames = [Image.fromarray(x) for x in (a, 255 - a, a // 2)]
    path, first = tmp_path / name, tmp_path / "frame1.png"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(first)
    assert read_image(path)[1] == 3 and np.array_equal(read_gray(path), a)
    rc, lines, err = _run([path, first], models["tflite"], detect=False)
    assert rc == 0
    assert err == f"fer predict: {path}: note: frame 1 of 3 used\n"
    assert _check_face_line(lines[0], path)["box"] == [0, 0, 48, 56]
    probs = _probabilities(lines)
    assert np.abs(probs[0] - probs[1]).max() < 1e-6


@pytest.mark.parametrize("name", ["still.gif", "still.tif", "still.png"])
def test_single_frame_file_gets_no_note(models, tmp_path, name) -> None:
    path = tmp_path / name
    Image.fromarray(_face8()).save(path)
    assert read_image(path)[1] == 1
    rc, lines, err = _run([path], models["tflite"], detect=False)
    assert rc == 0 and err == "" and len(lines) == 1


# --------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, models) -> dict[str, Path]:
    """A phase-like .keras model alone, its calibration file (T = 2, TTA on), an export of
    it with T = 2 inside and its inference.json, and an asymmetric face crop."""
    import keras

    from fer_tasks.lib.model import temperature_model
    from fer_tasks.stages.export import convert, saved_model

    root = tmp_path_factory.mktemp("calibrated")
    (root / "phase").mkdir()
    (root / "export").mkdir()
    model = keras.saving.load_model(models["keras"], compile=False)
    model.save(root / "phase" / "model.keras")
    recipe = {"temperature": 2.0, "tta_flip": True}
    (root / "calibration.json").write_text(json.dumps({**recipe, "split": "val"}))
    tflite = root / "export" / "model_float32.tflite"
    saved = saved_model(temperature_model(model, 2.0), root / "saved_model")
    tflite.write_bytes(convert(saved, "float32"))
    (root / "export" / "inference.json").write_text(
        json.dumps({**recipe, "temperature_in_model": True})
    )
    x, _ = band_split(7, seed=5)
    face = x[3].copy()
    face[:, :20] //= 3  # darker on the left: its mirror image differs
    Image.fromarray(face).save(root / "face.png")
    return {
        "keras": root / "phase" / "model.keras",
        "calibration": root / "calibration.json",
        "tflite": tflite,
        "face": root / "face.png",
    }


def _probs(lines: list[str]) -> np.ndarray:
    return np.array([list(json.loads(line)["probabilities"].values()) for line in lines])


def _expected_tta(calibrated, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the two passes' calibrated softmax, and the single pass, from the logits."""
    import keras

    from fer_tasks.lib.calibration import softmax
    from fer_tasks.lib.model import logit_model
    from fer_tasks.tools.predict import faces

    crops, _, _ = faces(calibrated["face"], None)
    lg = logit_model(keras.saving.load_model(calibrated["keras"], compile=False))
    z = lg.predict(crops[..., None].astype("float32"), verbose=0)
    z_mirror = lg.predict(crops[:, :, ::-1, None].astype("float32"), verbose=0)
    one = softmax(z, temperature)
    return (one + softmax(z_mirror, temperature)) / 2, one


@pytest.mark.parametrize("kind", ["keras", "tflite"])
def test_tta_prints_the_mean_of_the_two_passes_calibrated_softmax(calibrated, kind) -> None:
    """The .keras model with the calibrate stage's file, or the export with T inside and
    its inference.json: both print mean(softmax(z / T), softmax(z_mirror / T))."""
    extra = {"calibration": calibrated["calibration"]} if kind == "keras" else {}
    rc, lines, err = _run([calibrated["face"]], calibrated[kind], detect=False, **extra)
    assert rc == 0 and err == "", err
    tta, one = _expected_tta(calibrated, 2.0)
    assert np.abs(_probs(lines) - tta).max() < 1e-4
    assert np.abs(tta - one).max() > 1e-3  # the mirror image changes the answer: TTA is seen
    # --no-tta: the single pass, still calibrated
    rc, lines, _ = _run([calibrated["face"]], calibrated[kind], detect=False, tta=False, **extra)
    assert rc == 0 and np.abs(_probs(lines) - one).max() < 1e-4


def test_tta_on_the_tflite_export_runs_the_pair_in_one_batch(calibrated) -> None:
    from fer_tasks.lib.classifiers import TFLiteClassifier
    from fer_tasks.tools.predict import faces

    crops, _, _ = faces(calibrated["face"], None)
    clf = TFLiteClassifier(calibrated["tflite"])
    two_passes = (clf.predict(crops) + clf.predict(crops[:, :, ::-1])) / 2
    rc, lines, _ = _run([calibrated["face"]], calibrated["tflite"], detect=False)
    assert rc == 0 and np.abs(_probs(lines) - two_passes).max() < 1e-5


def test_without_a_recipe_the_softmax_is_printed_with_a_note(calibrated) -> None:
    rc, lines, err = _run([calibrated["face"]], calibrated["keras"], detect=False)
    assert rc == 0
    assert "note: no inference.json beside" in err and "not calibrated" in err
    _, one = _expected_tta(calibrated, 1.0)
    assert np.abs(_probs(lines) - one).max() < 1e-4


def test_a_temperature_is_never_applied_twice(calibrated) -> None:
    # the export holds T = 2 (its inference.json says so): a calibration file is refused
    rc, lines, err = _run(
        [calibrated["face"]],
        calibrated["tflite"],
        detect=False,
        calibration=calibrated["calibration"],
    )
    assert rc == 2 and lines == []
    assert "already holds temperature 2" in err and "drop --calibration" in err
    # the other direction: the same file for the bare .keras model is what it is for
    rc, _, err = _run(
        [calibrated["face"]],
        calibrated["keras"],
        detect=False,
        calibration=calibrated["calibration"],
    )
    assert rc == 0 and err == ""


def test_a_bad_calibration_file_is_a_clear_model_error(calibrated, tmp_path) -> None:
    bad = tmp_path / "calibration.json"
    bad.write_text('{"temperature": -1}')
    rc, _, err = _run([calibrated["face"]], calibrated["keras"], detect=False, calibration=bad)
    assert rc == 2 and f"{bad}: temperature must be a positive number" in err


def test_cli_flags_reach_predict(calibrated, capsys) -> None:
    from fer_tasks.cli import main

    face, model = str(calibrated["face"]), str(calibrated["keras"])
    args = ["predict", face, "--no-detect", "--model", model]
    assert main([*args, "--calibration", str(calibrated["calibration"]), "--no-tta"]) == 0
    tta, one = _expected_tta(calibrated, 2.0)
    assert np.abs(_probs(capsys.readouterr().out.splitlines()) - one).max() < 1e-4
    assert main([*args, "--calibration", str(calibrated["calibration"])]) == 0
    assert np.abs(_probs(capsys.readouterr().out.splitlines()) - tta).max() < 1e-4


def test_a_centre_crop_recipe_predicts_the_closer_view(calibrated, tmp_path) -> None:
    """A recipe with center_crop: the face's zoomed-in view is what the model sees."""
    import keras

    from fer_tasks.lib.calibration import center_zoom, softmax
    from fer_tasks.lib.model import logit_model
    from fer_tasks.tools.predict import faces

    recipe = tmp_path / "calibration.json"
    recipe.write_text(json.dumps({"temperature": 2.0, "tta_flip": True, "center_crop": 3}))
    rc, lines, err = _run(
        [calibrated["face"]], calibrated["keras"], detect=False, calibration=recipe
    )
    assert rc == 0 and err == "", err
    crops, _, _ = faces(calibrated["face"], None)
    closer = center_zoom(crops, 3)
    lg = logit_model(keras.saving.load_model(calibrated["keras"], compile=False))
    z = [
        lg.predict(v[..., None].astype("float32"), verbose=0) for v in (closer, closer[:, :, ::-1])
    ]
    expected = (softmax(z[0], 2.0) + softmax(z[1], 2.0)) / 2
    assert np.abs(_probs(lines) - expected).max() < 1e-4
    whole, _ = _expected_tta(calibrated, 2.0)
    assert np.abs(expected - whole).max() > 1e-3  # the crop changes the answer: it is seen
