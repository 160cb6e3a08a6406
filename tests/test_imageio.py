"""Image decoding (tinyvgg.data.imageio): every Pillow mode decodes to the 8-bit RGB a viewer
shows, in the class-folder loader and in ``predict`` alike."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tinyvgg import checkpoint
from tinyvgg.cli import main
from tinyvgg.data import load_image_folder
from tinyvgg.data.imageio import decode_image
from tinyvgg.models import vgg

H, W = 8, 12


def _reference_rgb():
    """An 8-bit RGB test card: ramps and a few pure colours, 0 and 255 included."""
    r = np.random.default_rng(5)
    img = r.integers(0, 256, (H, W, 3)).astype(np.uint8)
    img[0, :, :] = np.linspace(0, 255, W).round().astype(np.uint8)[:, None]
    img[1, 0], img[1, 1] = 0, 255
    return img


def _grey(rgb):
    return np.asarray(Image.fromarray(rgb).convert("L"))  # ITU-R 601-2 luma, what viewers use


def _over_white(rgb, alpha):
    a = alpha.astype(np.float64)[..., None] / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


def _png_16bit(path, arr, colour_type):
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit RGB):
    colour type 0 (grey, arr (H, W)) or 2 (RGB, arr (H, W, 3)), big-endian samples."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def _cases(tmp_path):
    """{name: (file, expected 8-bit RGB)} for every mode Pillow can open."""
    ref = _reference_rgb()
    g = _grey(ref)
    grey3 = np.repeat(g[..., None], 3, axis=2)
    alpha = np.tile(np.linspace(0, 255, W).round().astype(np.uint8), (H, 1))
    cases = {}

    def save(name, im, expected, fmt="PNG"):
        path = tmp_path / f"{name}.{fmt.lower()}"
        im.save(path, fmt)
        cases[name] = (path, expected)

    save("RGB", Image.fromarray(ref), ref)
    save("L", Image.fromarray(g), grey3)
    bits = g > 127
    save("1", Image.fromarray(bits), np.repeat((bits * 255).astype(np.uint8)[..., None], 3, axis=2))
    palette = np.random.default_rng(1).integers(0, 256, (256, 3)).astype(np.uint8)
    idx = np.random.default_rng(2).integers(0, 256, (H, W)).astype(np.uint8)
    p = Image.fromarray(idx, "P")
    p.putpalette(palette.tobytes())
    save("P", p, palette[idx])
    # P with per-entry alpha (PNG tRNS): entry k has alpha k.
    pt = p.copy()
    pt.info["transparency"] = bytes(range(256))
    save("P-transparency", pt, _over_white(palette[idx], idx))
    pa = Image.new("PA", (W, H))
    pa.putpalette(palette.tobytes())
    pa.putdata(list(zip(idx.ravel().tolist(), alpha.ravel().tolist())))
    cases["PA"] = (pa, _over_white(palette[idx], alpha))  # PNG stores PA as RGBA: test the image
    save("LA", Image.fromarray(np.stack([g, alpha], axis=2), "LA"), _over_white(grey3, alpha))
    save("RGBA", Image.fromarray(np.dstack([ref, alpha]), "RGBA"), _over_white(ref, alpha))
    save("CMYK", Image.fromarray(ref).convert("CMYK"), ref, fmt="TIFF")
    g16 = g.astype(np.uint16) * 257  # the 16-bit image whose 8-bit rendering is g
    save("I;16", Image.fromarray(g16), grey3)
    assert Image.open(cases["I;16"][0]).mode == "I;16"
    cases["I;16B"] = (Image.frombytes("I;16B", (W, H), g16.astype(">u2").tobytes()), grey3)
    save("I", Image.fromarray(g16.astype(np.int32)), grey3, fmt="TIFF")
    assert Image.open(cases["I"][0]).mode == "I"
    save("F", Image.fromarray(g.astype(np.float32) / 255), grey3, fmt="TIFF")
    assert Image.open(cases["F"][0]).mode == "F"
    _png_16bit(tmp_path / "rgb16.png", ref.astype(np.uint16) * 257, 2)
    cases["RGB 16-bit"] = (tmp_path / "rgb16.png", ref)
    _png_16bit(tmp_path / "grey16.png", g16, 0)
    cases["grey 16-bit PNG"] = (tmp_path / "grey16.png", grey3)
    assert sorted(cases) == sorted(MODES)
    return cases


def _decode_any(src, mode="RGB"):
    if isinstance(src, Image.Image):
        from tinyvgg.data.imageio import to_display_image
        out = np.asarray(to_display_image(src, mode))
        return out[..., None] if out.ndim == 2 else out
    return decode_image(src, mode)


MODES = ["RGB", "L", "1", "P", "P-transparency", "PA", "LA", "RGBA", "CMYK", "I;16", "I;16B", "I", "F",
         "RGB 16-bit", "grey 16-bit PNG"]


@pytest.mark.parametrize("name", MODES)
def test_every_mode_decodes_to_its_8bit_rgb_rendering(tmp_path, name):
    src, expected = _cases(tmp_path)[name]
    got = _decode_any(src)
    assert got.dtype == np.uint8 and got.shape == (H, W, 3)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", MODES)
def test_every_mode_decodes_to_grey_for_one_channel_models(tmp_path, name):
    src, expected = _cases(tmp_path)[name]
    got = _decode_any(src, "L")
    assert got.dtype == np.uint8 and got.shape == (H, W, 1)
    # Pillow's luma of the 8-bit rendering (colour through alpha: rounding differs by at most 1).
    assert np.abs(got[..., 0].astype(int) - _grey(expected)).max() <= 1


def test_16bit_grey_ramp_is_not_white(tmp_path):
    """The issue's case: a 0..65535 ramp decoded with 99.6 % of pixels at 255."""
    ramp = np.tile(np.arange(0, 65536, 64, dtype=np.uint16).reshape(1, -1), (4, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    Image.fromarray((ramp >> 8).astype(np.uint8)).save(tmp_path / "ramp8.png")
    got = decode_image(tmp_path / "ramp16.png")
    assert abs(got.mean() - 127.5) < 1
    np.testing.assert_array_equal(got, decode_image(tmp_path / "ramp8.png"))


def test_exif_orientation_is_applied(tmp_path):
    ref = _reference_rgb()
    im = Image.fromarray(ref)
    exif = im.getexif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    im.save(tmp_path / "rotated.png", exif=exif)
    np.testing.assert_array_equal(decode_image(tmp_path / "rotated.png"), np.rot90(ref, k=-1))


def test_folder_loader_and_predict_use_the_same_decoding(tmp_path, capsys):
    (tmp_path / "files").mkdir()
    # The class-folder loader reads .png/.jpg: every PNG case, in one class folder.
    pngs = {name: case for name, case in _cases(tmp_path / "files").items()
            if not isinstance(case[0], Image.Image) and case[0].suffix == ".png"}
    assert len(pngs) >= 10
    d = tmp_path / "folder" / "c"
    d.mkdir(parents=True)
    for i, (path, _) in enumerate(pngs.values()):
        (d / f"{i:02d}.png").write_bytes(path.read_bytes())
    ds = load_image_folder(tmp_path / "folder", cache=False)
    assert not ds.skipped and len(ds) == len(pngs)
    for image, (name, (_, expected)) in zip(ds.images, pngs.items()):
        np.testing.assert_array_equal(image, expected, err_msg=name)


def test_predict_decodes_16bit_like_its_8bit_copy(tmp_path, capsys):
    """predict: a 16-bit copy of an image gets exactly the probabilities of its 8-bit original."""
    model = vgg("vgg11", num_classes=3, input_size=32, width=1 / 16, hidden=16, init="he")
    # Larger classifier weights, so the probabilities show differences between inputs.
    model.load_state_dict({k: v * 30 if k.startswith("classifier") and k.endswith("weight") else v
                           for k, v in model.state_dict().items()})
    ck = checkpoint.save(tmp_path / "m.npz", model, mean=[120.0, 110.0, 100.0], std=[60.0, 60.0, 60.0],
                         classes=["a", "b", "c"], input_size=32)
    g = np.random.default_rng(3).integers(0, 256, (32, 32)).astype(np.uint8)
    Image.fromarray(g).save(tmp_path / "g8.png")
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert main(["predict", str(ck), str(tmp_path / "g8.png")]) == 0
    out8 = capsys.readouterr().out.split(":", 1)[1]
    assert main(["predict", str(ck), str(tmp_path / "g16.png")]) == 0
    out16 = capsys.readouterr().out.split(":", 1)[1]
    assert out16 == out8
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "white.png")
    assert main(["predict", str(ck), str(tmp_path / "white.png")]) == 0
    assert capsys.readouterr().out.split(":", 1)[1] != out8  # the probabilities do tell images apart
