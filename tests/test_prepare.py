"""Tests for the `prepare` stage on tiny generated CSVs and image-folder trees."""

from __future__ import annotations

import gzip
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_tasks import CLASS_NAMES
from fer_tasks.lib.io import load_split
from fer_tasks.lib.params import PrepareParams
from fer_tasks.stages.prepare import PrepareError, prepare

PROJECT_ROOT = Path(__file__).resolve().parents[1]
USAGES = ("Training", "PublicTest", "PrivateTest")


# ----------------------------------------------------------------------- helpers


def _face(i: int) -> np.ndarray:
    """A deterministic, row-unique 48x48 uint8 image (first two pixels encode i)."""
    img = np.random.default_rng(i).integers(0, 256, (48, 48), dtype=np.uint8)
    img.flat[0], img.flat[1] = i // 256, i % 256
    return img


def _row_id(img: np.ndarray) -> int:
    return int(img.flat[0]) * 256 + int(img.flat[1])


def _px(img: np.ndarray) -> str:
    return " ".join(map(str, img.ravel()))


def _write_csv(path: Path, lines: list[str], *, gz: bool = False, newline: str = "\n") -> Path:
    data = (newline.join(lines) + newline).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _rows(n: int = 21, usages: tuple[str, ...] = USAGES) -> list[tuple[int, int, str]]:
    """(row id, label, usage): labels cycle 0..6, usages in blocks."""
    return [(i, i % 7, usages[i * len(usages) // n]) for i in range(n)]


def _csv_lines(rows: list[tuple[int, int, str]], usage: bool = True) -> list[str]:
    if usage:
        return ["emotion,pixels,Usage"] + [f"{y},{_px(_face(i))},{u}" for i, y, u in rows]
    return ["emotion,pixels"] + [f"{y},{_px(_face(i))}" for i, y, _ in rows]


def _run(tmp_path: Path, source: Path, **kw) -> dict:
    return prepare(source, tmp_path / "out", tmp_path / "report.json", PrepareParams(**kw))


def _splits(tmp_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {s: load_split(tmp_path / "out" / f"{s}.npz") for s in ("train", "val", "test")}


def _expect_error(tmp_path: Path, source: Path, *fragments: str, **kw) -> str:
    with pytest.raises(PrepareError) as info:
        _run(tmp_path, source, **kw)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    assert "\n" not in msg
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "report.json").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith((".out", ".report"))]
    assert leftovers == []
    return msg


def _save_img(path: Path, img: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid-looking PNG that claims a huge size (decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _tree(root: Path, splits: tuple[str, ...] = ("train", "test")) -> Path:
    """Small image tree: mixed-case class folders, odd sizes, RGB/L/RGBA, PNG and JPEG."""
    for s in splits:
        for c, name in enumerate(CLASS_NAMES):
            folder = root / s / (name.upper() if c % 2 else name.capitalize())
            shade = 20 + 30 * c
            _save_img(folder / "a.png", Image.new("RGB", (60, 75), (shade, shade, shade)))
            _save_img(folder / "b.jpg", Image.new("L", (30, 30), shade))
            _save_img(folder / "c.png", Image.new("RGBA", (48, 48), (shade, shade, shade, 128)))
    return root


# -------------------------------------------------------------------- CSV happy


@pytest.mark.parametrize("gz", [False, True])
def test_csv_all_usages(tmp_path: Path, gz: bool) -> None:
    rows = _rows(21)
    src = _write_csv(tmp_path / ("fer.csv.gz" if gz else "fer.csv"), _csv_lines(rows), gz=gz)
    report = _run(tmp_path, src, chunk_rows=4)
    out = _splits(tmp_path)
    for split, usage in zip(("train", "val", "test"), USAGES, strict=True):
        images, labels = out[split]
        want = [(i, y) for i, y, u in rows if u == usage]
        assert images.dtype == np.uint8 and images.shape == (len(want), 48, 48)
        assert labels.dtype == np.int64
        assert [(_row_id(im), int(y)) for im, y in zip(images, labels, strict=True)] == want
        for im in images:
            np.testing.assert_array_equal(im, _face(_row_id(im)))
        summary = report["splits"][split]
        assert summary["origin"] == usage
        assert summary["total"] == len(want)
        assert list(summary["counts"]) == list(CLASS_NAMES)
        assert summary["counts"] == {
            n: sum(1 for _, y in want if y == c) for c, n in enumerate(CLASS_NAMES)
        }
    assert report["kind"] == "csv" and report["source"] == str(src)
    assert report["carved"] == [] and report["skipped"] == {"count": 0, "first": []}
    assert json.loads((tmp_path / "report.json").read_text()) == report


def test_csv_gzip_detected_by_magic_bytes_crlf_blank_lines(tmp_path: Path) -> None:
    rows = _rows(14)
    lines = _csv_lines(rows)
    lines.insert(5, "")  # a blank line in the middle is ignored
    src = _write_csv(tmp_path / "fer.data", lines, gz=True, newline="\r\n")
    report = _run(tmp_path, src)
    assert sum(report["splits"][s]["total"] for s in ("train", "val", "test")) == 14


def test_csv_lenient_tokens_accepted(tmp_path: Path) -> None:
    """Tabs, leading zeros and padding go through the slow path and are accepted."""
    img = _face(3)
    px = list(map(str, img.ravel()))
    px[5] = px[5].zfill(4)
    odd = " " + "\t".join(px[:10]) + "  " + " ".join(px[10:]) + " "
    lines = _csv_lines(_rows(7, ("Training",)))
    lines[4] = f" 3 ,{odd},Training "  # row id 3, label 3
    src = _write_csv(tmp_path / "fer.csv", lines)
    _run(tmp_path, src)
    images = np.concatenate([v[0] for v in _splits(tmp_path).values()])
    match = [im for im in images if _row_id(im) == 3]
    assert len(match) == 1
    np.testing.assert_array_equal(match[0], img)


def test_chunk_size_does_not_change_output(tmp_path: Path) -> None:
    src = _write_csv(tmp_path / "fer.csv", _csv_lines(_rows(30)))
    a = prepare(src, tmp_path / "a", tmp_path / "a.json", PrepareParams(chunk_rows=1))
    b = prepare(src, tmp_path / "b", tmp_path / "b.json", PrepareParams(chunk_rows=1000))
    assert a["splits"] == b["splits"]
    for s in ("train", "val", "test"):
        for x, y in zip(
            load_split(tmp_path / "a" / f"{s}.npz"),
            load_split(tmp_path / "b" / f"{s}.npz"),
            strict=True,
        ):
            np.testing.assert_array_equal(x, y)


# -------------------------------------------------------------------- carving


def _carve_source(tmp_path: Path) -> Path:
    # no Usage column: 70 rows, 10 per class, all Training
    return _write_csv(tmp_path / "train_only.csv", _csv_lines(_rows(70), usage=False))


def test_missing_splits_carved_stratified(tmp_path: Path) -> None:
    src = _carve_source(tmp_path)
    report = _run(tmp_path, src, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert report["carved"] == ["test", "val"]
    out = _splits(tmp_path)
    per_class = {s: report["splits"][s]["counts"] for s in out}
    assert all(c == 1 for c in per_class["test"].values())
    assert all(c == 2 for c in per_class["val"].values())
    assert all(c == 7 for c in per_class["train"].values())
    assert report["splits"]["test"]["origin"] == "carved from train"
    ids = [sorted(_row_id(im) for im in out[s][0]) for s in out]
    assert sorted(sum(ids, [])) == list(range(70))  # disjoint and complete
    for s, (images, labels) in out.items():  # labels still match their images
        assert [i % 7 for i in map(_row_id, images)] == labels.tolist(), s


def test_carving_is_seeded(tmp_path: Path) -> None:
    src = _carve_source(tmp_path)

    def ids(name: str, seed: int) -> dict[str, list[int]]:
        prepare(src, tmp_path / name, tmp_path / f"{name}.json", PrepareParams(seed=seed))
        return {
            s: [_row_id(im) for im in load_split(tmp_path / name / f"{s}.npz")[0]]
            for s in ("train", "val", "test")
        }

    first = ids("a", 7)
    assert ids("b", 7) == first
    assert ids("c", 8) != first


def test_publictest_alone_is_test_and_val_is_carved(tmp_path: Path) -> None:
    # the shared FER2013 copy: Training and PublicTest, no PrivateTest
    rows = _rows(28, ("Training", "PublicTest"))
    report = _run(tmp_path, _write_csv(tmp_path / "fer.csv", _csv_lines(rows)), val_fraction=0.15)
    assert report["carved"] == ["val"] and report["unused"] == []
    assert report["splits"]["test"]["origin"] == "PublicTest"
    assert report["splits"]["test"]["total"] == 14
    assert report["splits"]["val"]["origin"] == "carved from train"
    assert report["splits"]["train"]["total"] + report["splits"]["val"]["total"] == 14
    test_ids = {_row_id(im) for im in _splits(tmp_path)["test"][0]}
    assert test_ids == {i for i, _, u in rows if u == "PublicTest"}


def test_roles_can_name_the_source_split(tmp_path: Path) -> None:
    # the former protocol on demand: PublicTest as val, test carved from Training
    rows = _rows(28, ("Training", "PublicTest"))
    src = _write_csv(tmp_path / "fer.csv", _csv_lines(rows))
    report = _run(tmp_path, src, roles={"val": "PublicTest", "test": "auto"})
    assert report["carved"] == ["test"]
    assert report["splits"]["val"]["origin"] == "PublicTest"
    assert report["splits"]["val"]["total"] == 14


def test_unused_held_out_split_is_left_out_and_reported(tmp_path: Path) -> None:
    rows = _rows(21)
    src = _write_csv(tmp_path / "fer.csv", _csv_lines(rows))
    report = _run(tmp_path, src, roles={"val": "carve", "test": "PrivateTest"})
    assert report["unused"] == ["PublicTest"] and report["carved"] == ["val"]
    ids = {_row_id(im) for v in _splits(tmp_path).values() for im in v[0]}
    assert not ids & {i for i, _, u in rows if u == "PublicTest"}


def test_a_role_naming_a_missing_split_fails_naming_key_and_source(tmp_path: Path) -> None:
    src = _write_csv(tmp_path / "fer.csv", _csv_lines(_rows(28, ("Training", "PublicTest"))))
    _expect_error(
        tmp_path,
        src,
        str(src),
        "prepare.roles.test is PrivateTest",
        "has PublicTest",
        roles={"test": "PrivateTest"},
    )
    # the other direction: a split the source has is accepted in that role
    assert _run(tmp_path, src, roles={"test": "PublicTest"})["carved"] == ["val"]


@pytest.mark.parametrize(
    ("present", "roles", "expected"),
    [
        ({"PublicTest", "PrivateTest"}, {}, {"val": "PublicTest", "test": "PrivateTest"}),
        ({"PublicTest"}, {}, {"val": "carve", "test": "PublicTest"}),
        ({"PrivateTest"}, {}, {"val": "carve", "test": "PrivateTest"}),
        (set(), {}, {"val": "carve", "test": "carve"}),
        ({"PublicTest"}, {"val": "PublicTest"}, {"val": "PublicTest", "test": "carve"}),
        (
            {"PublicTest", "PrivateTest"},
            {"test": "PublicTest"},
            {"val": "carve", "test": "PublicTest"},
        ),
        (
            {"PublicTest", "PrivateTest"},
            {"val": "PrivateTest"},
            {"val": "PrivateTest", "test": "PublicTest"},
        ),
        ({"PublicTest", "PrivateTest"}, {"val": "carve"}, {"val": "carve", "test": "PrivateTest"}),
    ],
)
def test_resolve_roles(present, roles, expected) -> None:
    from fer_tasks.lib.params import SplitRoles
    from fer_tasks.stages.prepare import resolve_roles

    assert resolve_roles(present, SplitRoles(**roles)) == expected


def test_one_split_cannot_play_both_roles() -> None:
    from pydantic import ValidationError

    from fer_tasks.lib.params import SplitRoles

    with pytest.raises(ValidationError, match="both PublicTest"):
        SplitRoles(val="PublicTest", test="PublicTest")
    assert SplitRoles(val="carve", test="carve").val == "carve"  # carving both is fine


# --------------------------------------------------------------------- folder


def test_folder_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path / "images")
    (root / "train" / "HAPPY" / ".DS_Store").write_bytes(b"junk")  # hidden files ignored
    report = _run(tmp_path, root)
    assert report["kind"] == "folder"
    assert report["carved"] == ["val"]  # test/ (PublicTest in the common release) is test
    assert report["splits"]["test"]["origin"] == "test/"
    assert report["splits"]["test"]["counts"] == dict.fromkeys(CLASS_NAMES, 3)
    out = _splits(tmp_path)
    assert len(out["train"][1]) + len(out["val"][1]) == 21
    for images, labels in out.values():
        assert images.dtype == np.uint8 and images.shape[1:] == (48, 48)
        for im, y in zip(images, labels, strict=True):
            shade = 20 + 30 * int(y)
            assert abs(int(np.median(im)) - shade) <= 2  # gray, resized, right class


def test_folder_tree_with_val(tmp_path: Path) -> None:
    root = _tree(tmp_path / "images", ("train", "val", "test"))
    report = _run(tmp_path, root, format="folder")
    assert report["carved"] == []
    assert {s: report["splits"][s]["origin"] for s in ("train", "val", "test")} == {
        "train": "train/",
        "val": "val/",
        "test": "test/",
    }
    assert all(report["splits"][s]["total"] == 21 for s in ("train", "val", "test"))


def test_rgb_to_gray_conversion(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for s in ("train", "test"):
        for c, name in enumerate(CLASS_NAMES):
            _save_img(root / s / name / "x.png", Image.new("RGB", (96, 96), (200, 100, 50)))
            _save_img(root / s / name / "y.png", Image.new("RGB", (96, 96), (10 * c, 0, 0)))
    _run(tmp_path, root)
    images, labels = _splits(tmp_path)["test"]
    bright = images[np.median(images.reshape(len(images), -1), axis=1) > 100]
    assert len(bright) == 7 and (bright == 124).all()  # ITU-R 601-2 luma: L = .299R+.587G+.114B


# ------------------------------------------------------------------ bad input


def _bad_csv(tmp_path: Path, line: int, text: str, name: str = "bad.csv") -> Path:
    lines = _csv_lines(_rows(12))
    lines[line - 1] = text
    return _write_csv(tmp_path / name, lines)


GOOD_PX = _px(_face(0))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (f"0,{GOOD_PX} 7,Training", "wrong pixel count: expected 2304 values, got 2305"),
        (f"0,{GOOD_PX.rsplit(' ', 1)[0]},Training", "got 2303"),
        ("0,,Training", "got 0"),
        (f"0,{GOOD_PX.replace(' ', ' 1x ', 1).rsplit(' ', 1)[0]},Training", "pixel 2 is '1x'"),
        (f"0,{GOOD_PX.replace(' ', ' 12.5 ', 1).rsplit(' ', 1)[0]},Training", "not an integer"),
        (f"0,{GOOD_PX.replace(' ', ' 256 ', 1).rsplit(' ', 1)[0]},Training", "256 is outside"),
        (f"0,{GOOD_PX.replace(' ', ' -1 ', 1).rsplit(' ', 1)[0]},Training", "-1 is outside"),
        (f"0,{GOOD_PX.replace(' ', ' 99999 ', 1).rsplit(' ', 1)[0]},Training", "outside 0-255"),
        (f"7,{GOOD_PX},Training", "emotion 7 is outside 0-6"),
        (f"-1,{GOOD_PX},Training", "emotion -1 is outside"),
        (f"3.0,{GOOD_PX},Training", "emotion '3.0' is not an integer"),
        (f"happy,{GOOD_PX},Training", "not an integer"),
        (f"3,{GOOD_PX},Trainning", "unknown Usage 'Trainning'"),
        (f"3,{GOOD_PX},", "unknown Usage ''"),
        (f"3,{GOOD_PX}", "expected 3 fields, got 2"),
    ],
)
def test_bad_csv_row(tmp_path: Path, text: str, fragment: str) -> None:
    src = _bad_csv(tmp_path, 9, text)
    msg = _expect_error(tmp_path, src, str(src), "line 9", fragment)
    assert "line 9:" in msg


def test_bad_row_in_gz_reports_line(tmp_path: Path) -> None:
    lines = _csv_lines(_rows(12))
    lines[11] = f"9,{GOOD_PX},Training"
    src = _write_csv(tmp_path / "fer.csv.gz", lines, gz=True)
    _expect_error(tmp_path, src, str(src), "line 12", "emotion 9", chunk_rows=5)


def test_first_bad_row_is_reported(tmp_path: Path) -> None:
    lines = _csv_lines(_rows(12))
    lines[7] = f"8,{GOOD_PX},Training"  # line 8: bad label
    lines[5] = f"0,{GOOD_PX} 1,Training"  # line 6: bad pixels, found by a later pass
    src = _write_csv(tmp_path / "fer.csv", lines)
    _expect_error(tmp_path, src, "line 6:", "wrong pixel count")


def test_missing_column(tmp_path: Path) -> None:
    src = _write_csv(tmp_path / "fer.csv", ["emotion,Usage", "0,Training"])
    _expect_error(tmp_path, src, str(src), "line 1", "missing required column(s) pixels")


def test_missing_column_fails_even_with_skip(tmp_path: Path) -> None:
    src = _write_csv(tmp_path / "fer.csv", [f"0,{GOOD_PX},Training"] * 3)  # no header
    _expect_error(tmp_path, src, str(src), "line 1", "emotion, pixels", on_bad_row="skip")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        # gzip.compress stamps the current second into its header unless
        # mtime is given: bytes that change between xdist workers' collections
        # made their test ids differ and stopped the run. Fixed ids and mtime=0.
        (b"", "empty file (0 bytes)"),
        (b"emotion,pixels,Usage\n", "header only"),
        (b"\n\n", "empty file"),
        (gzip.compress(b"", mtime=0), "empty file"),
        (gzip.compress(b"emotion,pixels,Usage\n", mtime=0), "header only"),
    ],
    ids=["zero-bytes", "header-only", "blank-lines", "gzip-empty", "gzip-header-only"],
)
def test_empty_file(tmp_path: Path, content: bytes, fragment: str) -> None:
    src = tmp_path / "fer.csv"
    src.write_bytes(content)
    _expect_error(tmp_path, src, str(src), fragment, on_bad_row="skip")


def test_corrupt_gzip(tmp_path: Path) -> None:
    data = gzip.compress("\n".join(_csv_lines(_rows(12))).encode())
    src = tmp_path / "fer.csv.gz"
    src.write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path, src, str(src), "corrupt gzip data")


def test_missing_source(tmp_path: Path) -> None:
    _expect_error(tmp_path, tmp_path / "nope.csv", str(tmp_path / "nope.csv"), "not found")


def test_format_mismatch(tmp_path: Path) -> None:
    root = _tree(tmp_path / "images")
    _expect_error(tmp_path, root, str(root), "format is csv", format="csv")
    src = _write_csv(tmp_path / "fer.csv", _csv_lines(_rows(7)))
    _expect_error(tmp_path, src, str(src), "format is folder", format="folder")


def test_folder_without_train(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _save_img(root / "test" / "happy" / "a.png", Image.new("L", (48, 48)))
    _expect_error(tmp_path, root, str(root), "no train/ folder")


def test_unknown_class_folder(tmp_path: Path) -> None:
    root = _tree(tmp_path / "images")
    bad = root / "test" / "contempt"
    _save_img(bad / "a.png", Image.new("L", (48, 48)))
    _expect_error(tmp_path, root, str(bad), "unknown class folder", on_bad_row="skip")


@pytest.mark.parametrize("kind", ["text", "truncated", "empty"])
def test_corrupt_image(tmp_path: Path, kind: str) -> None:
    root = _tree(tmp_path / "images")
    bad = root / "train" / "Fear" / "broken.jpg"
    if kind == "text":
        bad.write_text("not an image")
    elif kind == "empty":
        bad.write_bytes(b"")
    else:
        good = (root / "train" / "Fear" / "b.jpg").read_bytes()
        bad.write_bytes(good[: len(good) // 2])
    _expect_error(tmp_path, root, str(bad), "not a readable image")


def test_decompression_bomb(tmp_path: Path) -> None:
    root = _tree(tmp_path / "images")
    bomb = _png_header_only(root / "train" / "sad" / "bomb.png", 100_000, 100_000)
    _expect_error(tmp_path, root, str(bomb), "decompression bomb")


def test_pixel_limit_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fer_tasks.lib.sources._MAX_IMAGE_PIXELS", 50 * 50)
    root = _tree(tmp_path / "images")  # a.png is 60x75
    _expect_error(tmp_path, root, "a.png", "decompression bomb guard")


def test_error_keeps_previous_output(tmp_path: Path) -> None:
    good = _write_csv(tmp_path / "good.csv", _csv_lines(_rows(21)))
    _run(tmp_path, good)
    before = {p.name: p.read_bytes() for p in [*(tmp_path / "out").iterdir()]}
    report = (tmp_path / "report.json").read_text()
    bad = _bad_csv(tmp_path, 5, f"0,{GOOD_PX},Nope")
    with pytest.raises(PrepareError):
        _run(tmp_path, bad)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert (tmp_path / "report.json").read_text() == report


def test_rerun_replaces_output(tmp_path: Path) -> None:
    _run(tmp_path, _write_csv(tmp_path / "a.csv", _csv_lines(_rows(21))))
    (tmp_path / "out" / "stale.txt").write_text("old")
    report = _run(tmp_path, _write_csv(tmp_path / "b.csv", _csv_lines(_rows(42))))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "test.npz",
        "train.npz",
        "val.npz",
    ]
    assert report["splits"]["train"]["total"] == 14


def test_source_inside_out_dir_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    src = _write_csv(tmp_path / "out" / "fer.csv", _csv_lines(_rows(7)))
    with pytest.raises(PrepareError, match="contains the source"):
        _run(tmp_path, src)
    assert src.exists()


def test_report_inside_out_dir(tmp_path: Path) -> None:
    src = _write_csv(tmp_path / "fer.csv", _csv_lines(_rows(21)))
    prepare(src, tmp_path / "out", tmp_path / "out" / "report.json", PrepareParams())
    assert json.loads((tmp_path / "out" / "report.json").read_text())["kind"] == "csv"


# ----------------------------------------------------------------- skip mode


def test_skip_bad_rows(tmp_path: Path) -> None:
    lines = _csv_lines(_rows(21))
    lines[2] = f"7,{GOOD_PX},Training"  # line 3
    lines[9] = f"0,{GOOD_PX} 5,PublicTest"  # line 10
    lines[15] = f"0,{GOOD_PX},Whatever"  # line 16
    lines[20] = f"0,{GOOD_PX.replace(' ', ' x ', 1).rsplit(' ', 1)[0]},PrivateTest"  # line 21
    src = _write_csv(tmp_path / "fer.csv", lines)
    report = _run(tmp_path, src, on_bad_row="skip", chunk_rows=4)
    skipped = report["skipped"]
    assert skipped["count"] == 4
    assert [s["line"] for s in skipped["first"]] == [3, 10, 16, 21]
    assert "emotion 7" in skipped["first"][0]["reason"]
    assert "wrong pixel count" in skipped["first"][1]["reason"]
    out = _splits(tmp_path)
    assert sum(len(v[1]) for v in out.values()) == 17
    ids = {_row_id(im) for v in out.values() for im in v[0]}
    assert not ids & {1, 8, 14, 19}  # data lines 3, 10, 16, 21 are row ids 1, 8, 14, 19
    assert sum(report["splits"][s]["total"] for s in out) == 17


def test_skip_lists_only_first_few(tmp_path: Path) -> None:
    lines = _csv_lines(_rows(30, ("Training",)))
    for i in range(1, 26):
        lines[i] = f"9,{GOOD_PX},Training"
    report = _run(tmp_path, _write_csv(tmp_path / "fer.csv", lines), on_bad_row="skip")
    assert report["skipped"]["count"] == 25
    assert len(report["skipped"]["first"]) == 10
    assert report["skipped"]["first"][0]["line"] == 2


def test_skip_all_rows_fails(tmp_path: Path) -> None:
    src = _write_csv(tmp_path / "fer.csv", ["emotion,pixels", f"9,{GOOD_PX}", "0,1 2"])
    _expect_error(tmp_path, src, str(src), "no training rows", on_bad_row="skip")


def test_skip_bad_images(tmp_path: Path) -> None:
    root = _tree(tmp_path / "images")
    (root / "train" / "Fear" / "broken.png").write_text("nope")
    _png_header_only(root / "test" / "Sad" / "bomb.png", 100_000, 100_000)
    report = _run(tmp_path, root, on_bad_row="skip")
    assert report["skipped"]["count"] == 2
    assert {s["path"] for s in report["skipped"]["first"]} == {
        os.path.join("train", "Fear", "broken.png"),
        os.path.join("test", "Sad", "bomb.png"),
    }
    assert report["splits"]["test"]["total"] == 21


# ------------------------------------------------------------------ real data


REAL_TRAINING = [3995, 436, 4097, 7215, 4830, 3171, 4965]
REAL_PUBLIC_TEST = [467, 56, 496, 895, 653, 415, 607]


@pytest.mark.slow
@pytest.mark.realdata
def test_real_fer2013(tmp_path: Path) -> None:
    default = PROJECT_ROOT.parent / "shared" / "datasets" / "fer2013" / "fer2013.csv.gz"
    src = Path(os.environ.get("FER2013_CSV", default))
    if not src.is_file():
        pytest.skip(f"FER2013 CSV not found at {src} (set FER2013_CSV to its path)")
    report = _run(tmp_path, src)  # no PrivateTest: PublicTest is test, val carved (~10 %)
    counts = {s: list(report["splits"][s]["counts"].values()) for s in ("train", "val", "test")}
    assert counts["test"] == REAL_PUBLIC_TEST
    assert [a + b for a, b in zip(counts["train"], counts["val"], strict=True)] == REAL_TRAINING
    assert report["carved"] == ["val"] and report["splits"]["val"]["total"] == 2871
    assert report["skipped"]["count"] == 0
    images, labels = load_split(tmp_path / "out" / "test.npz")
    assert images.shape == (3589, 48, 48) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=7).tolist() == REAL_PUBLIC_TEST
