"""Hostile payloads, built byte by byte: broken images, archive attacks, raw multipart bodies.

Each builder is deterministic and small (a decompression bomb is a header that *declares* huge
dimensions, a zip bomb is a few kilobytes of compressed zeros), so the corpus runs in seconds.
"""

from __future__ import annotations

import base64
import io
import json
import stat
import struct
import tarfile
import zipfile
import zlib

from PIL import Image as PILImage

from tests.factories import image_bytes, patterned_image, png_header_only

# --- images -------------------------------------------------------------------------------------


def jpeg() -> bytes:
    return patterned_image("JPEG")


def png() -> bytes:
    return patterned_image("PNG")


def webp() -> bytes:
    return patterned_image("WEBP")


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first `keep` share of a file: a header that promises pixels the body never brings."""
    return data[: int(len(data) * keep)]


def corrupted(data: bytes, cut: int | None = None) -> bytes:
    """The first `cut` bytes (default: half) intact, the rest overwritten with noise."""
    cut = len(data) // 2 if cut is None else cut
    return data[:cut] + bytes((i * 151 + 7) % 256 for i in range(len(data) - cut))


def jpeg_header_declaring(width: int, height: int) -> bytes:
    """A JPEG whose SOF0 frame header declares width x height (a bomb's header), no scan data."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return (
        b"\xff\xd8"
        + b"\xff\xe0"
        + struct.pack(">H", 16)
        + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        + b"\xff\xc0"
        + struct.pack(">H", len(sof) + 2)
        + sof
        + b"\xff\xd9"
    )


def webp_header_declaring(width: int, height: int) -> bytes:
    """A lossless WEBP (VP8L) header declaring width x height (each at most 16384), no pixels."""
    bits = (width - 1) | ((height - 1) << 14)
    vp8l = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 8
    chunk = b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def png_with_zero_width() -> bytes:
    header = png_header_only(1, 1)
    ihdr = struct.pack(">IIBBBBB", 0, 16, 8, 0, 0, 0, 0)
    fixed = b"IHDR" + ihdr
    return (
        header[:8]
        + struct.pack(">I", 13)
        + fixed
        + struct.pack(">I", zlib.crc32(fixed))
        + (header[33:])
    )


def png_bad_crc() -> bytes:
    """A valid PNG whose IHDR checksum is wrong."""
    data = bytearray(png())
    data[29] ^= 0xFF
    return bytes(data)


def gif() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (8, 8), (1, 2, 3)).save(out, format="GIF")
    return out.getvalue()


def bmp() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (8, 8), (1, 2, 3)).save(out, format="BMP")
    return out.getvalue()


def tiff() -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (8, 8), (1, 2, 3)).save(out, format="TIFF")
    return out.getvalue()


def svg() -> bytes:
    return b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'


def html_named_jpg() -> bytes:
    return b"<html><script>alert(1)</script></html>"


def zip_named_png() -> bytes:
    return zip_bytes({"a.png": image_bytes(1)})


def jpeg_magic_then_png() -> bytes:
    """JPEG's SOI marker glued to a PNG: the magic says one format, the body another."""
    return b"\xff\xd8\xff" + png()


def animated_webp_over_budget(frames: int = 40, side: int = 400) -> bytes:
    """An animated WEBP whose frames together exceed the pixel limit though each frame does not."""
    images = [PILImage.new("RGB", (side, side), (i * 6 % 256, 0, 0)) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, format="WEBP", save_all=True, append_images=images[1:], lossless=False)
    return out.getvalue()


def noise_bytes(n: int, seed: int = 1) -> bytes:
    """Incompressible bytes (for size limits)."""
    import random

    return random.Random(seed).randbytes(n)


# --- archives ------------------------------------------------------------------------------------


def zip_bytes(
    entries: dict[str, bytes],
    *,
    symlinks: dict[str, str] | None = None,
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_bytes(
    entries: dict[str, bytes], *, special: dict[str, tuple[bytes, str]] | None = None
) -> bytes:
    """A tar.gz; `special` adds members of another type: name -> (tarfile type, link name)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, (kind, linkname) in (special or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = linkname
            archive.addfile(info)
    return buffer.getvalue()


def reference(classes: int = 2, per_class: int = 2, *, root: str = "ref") -> dict[str, bytes]:
    """An ImageFolder tree: `classes` folders of `per_class` PNGs."""
    return {
        f"{root}/class{c}/{i}.png": image_bytes(c * 100 + i)
        for c in range(classes)
        for i in range(per_class)
    }


def zip_bomb() -> bytes:
    """A 4 MiB run of zeros in a few kilobytes: a ratio far over any image's."""
    return zip_bytes({**reference(), "ref/class0/bomb.png": b"\x00" * (4 << 20)})


def encrypted_zip() -> bytes:
    """A zip whose only member has the 'encrypted' flag set (general purpose bit 0)."""
    data = bytearray(zip_bytes(reference(), compression=zipfile.ZIP_STORED))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (index := data.find(signature, start)) != -1:
            data[index + offset] |= 0x01
            start = index + 4
    return bytes(data)


# --- multipart and JSON -----------------------------------------------------------------------


def multipart(
    parts: list[tuple[bytes, bytes | None, bytes]], *, boundary: bytes = b"fwboundary"
) -> tuple[bytes, dict[str, str]]:
    """A multipart body built byte by byte: (field name, filename or None, content) per part."""
    body = b""
    for name, filename, content in parts:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        body += (
            b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
        )
    body += b"--" + boundary + b"--\r\n"
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}


def nested_json(depth: int) -> bytes:
    return b'{"name": "deep", "model_id": ' + b"[" * depth + b"]" * depth + b"}"


def cursor(raw: str) -> str:
    """A cursor as the API writes them: base64url of a JSON text, unpadded."""
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def cursor_of(values: object) -> str:
    return cursor(json.dumps(values))
