"""Reading images: every image moda reads comes through here, under the policy of the root image_io_moda.py (which
URLs are fetched, which bytes are decoded: formats, file size and pixels, checked before decoding)."""

import hashlib
from pathlib import Path

from image_io_moda import ImageInputError, decode_image, is_url, load_url_image, read_image_file, to_rgb

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def image_files(root: Path) -> list:
    """The image files below `root` (searched recursively), in a fixed order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def image_bytes(image) -> bytes:
    """The raw bytes of an image reference (a path or bytes); a file's size is checked before it is read
    (image_io_moda.MAX_IMAGE_BYTES), and a missing, empty or oversized file is an ImageInputError (a ValueError)."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    return read_image_file(image)


def content_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_image(data: bytes, where: str):
    """Decodes image bytes to RGB under image_io_moda's decoding policy (formats, size and pixel limits, checked
    before decoding); raises ValueError starting with `where` when they are not a readable image."""
    return decode_image(data, where)


def load_image(image, where: str):
    """A PIL image, a path, an http(s) URL or raw bytes -> an RGB PIL image; ValueError starting with `where` when it
    cannot be read (a missing, unreadable or oversized file, a URL refused or failing, no image, bytes that are empty,
    not an allowed format or too many pixels). URLs are fetched under image_io_moda's URL policy."""
    from PIL import Image

    if isinstance(image, Image.Image):
        try:
            return to_rgb(image)
        except Exception as err:  # a lazily opened image whose data is truncated
            raise ValueError(f"{where}: not a readable image ({type(err).__name__}: {err})") from err
    if image is None:
        raise ValueError(f"{where}: no image")
    try:
        if is_url(image):
            return load_url_image(image)
        data = image_bytes(image)
    except ImageInputError as err:
        raise ImageInputError(f"{where}: {err}") from err
    except OSError as err:  # e.g. a directory's permissions
        raise ValueError(f"{where}: cannot read image {str(image)[:200]!r} ({err})") from err
    return open_image(data, where)
