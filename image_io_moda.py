"""Reading untrusted images: which URLs MODA fetches and which bytes it decodes, for every entry point.

The processor (processing_moda.py), the Inference Endpoints handler (handler.py) and the moda commands (through
moda/io/images.py) read images only through this file, so both policies live here once.

URLs: http and https only, without a user:password@ part, at most MAX_URL_CHARACTERS long. The host is resolved once
and every address it resolves to must be public: loopback, private, link-local (169.254.169.254 is the cloud metadata
service), shared (CGNAT), multicast, reserved and unspecified addresses are refused, also written as IPv4-mapped IPv6
(::ffff:127.0.0.1), and so is every network of IANA's special-purpose registries (SPECIAL_PURPOSE_NETWORKS, listed
here because the standard library's idea of "global" changes between Python versions). The
connection goes to the address that was checked, so a second DNS answer cannot switch it (DNS rebinding); the URL's
host goes in the Host header and, for https, in SNI and the certificate check. Redirects are followed here, each hop
checked the same way, at most MAX_REDIRECTS of them. The body is capped at MAX_IMAGE_BYTES while it streams (a larger
Content-Length is refused before reading); CONNECT_TIMEOUT_S and READ_TIMEOUT_S bound each step and
FETCH_DEADLINE_S the whole fetch, so a server that trickles a byte at a time is cut off. Intranet catalogs (and
tests) opt in to private addresses with MODA_ALLOW_PRIVATE_URLS=1 or `allow_private=True`. Proxy settings
(HTTP_PROXY) are not used: the address check must see the server itself.

Decoding: JPEG, PNG, WEBP, GIF, BMP and TIFF only (Pillow never tries another plugin, so EPS/PS never reach
Ghostscript); at most MAX_IMAGE_BYTES of input (base64 text is measured before it is copied), MAX_IMAGE_PIXELS pixels
and a MAX_ASPECT_RATIO between the sides, read from the header before any pixel is decoded (and before a JPEG is put in
draft mode: a progressive JPEG holds full-size buffers whatever its draft scale); a large JPEG is decoded at a reduced
scale (DRAFT_SIZE); then the first frame of an animation, EXIF orientation applied, transparency composited on white,
RGB, and an image whose sides are over MAX_DECODED_SHORT_SIDE / MAX_DECODED_LONG_SIDE shrunk to fit. Images and
arrays handed over already opened (a PIL image, a numpy array) pass the same checks (check_opened_image) before their
pixels are read.

Every refusal is an ImageInputError (a ValueError) naming the input and the problem. This file travels with the
weights (save_pretrained copies it with processing_moda.py, and the handler imports it from the model folder): it
imports only PIL, numpy and the standard library.
"""

import base64
import binascii
import http.client
import ipaddress
import os
import socket
import ssl
import time
import urllib.parse
import warnings

import numpy as np

# A catalog photo is a few MB; 50 MB leaves room for a large PNG or TIFF and refuses a body that would only waste
# memory and time (a 300 MB response cost 600 MB before this limit).
MAX_IMAGE_BYTES = 50 * 1024 * 1024
# 40 megapixels holds a full-frame photo from a 36-megapixel camera; decoded as RGBA it takes 160 MB. Pillow's own
# limit warns only above 89 megapixels and refuses above 179, so a 37 KB PNG declaring 13000x13000 pixels used to
# cost 11 s and 2.9 GB. The check reads the header's size, before any pixel is decoded.
MAX_IMAGE_PIXELS = 40_000_000
# CLIP's vision tower takes 224x224 pixels. A JPEG is decoded at the smallest scale (1/2, 1/4 or 1/8) that keeps
# both sides at least twice that: a 6000x4000 photo decodes as 750x500 (1/64 of the memory), and the resize to 224
# still starts from twice the pixels it keeps.
DRAFT_SIZE = 448
# After decoding, an image whose short side is longer than this is shrunk to it (Lanczos), so a request holds at most
# one full-size image at a time. CLIP resizes the short side to 224 and crops the centre: twice DRAFT_SIZE keeps four
# times the pixels it reads. Images with a short side up to this size (every catalog photo MODA was trained and
# measured on) are not touched, so their pixel values, and their captions, are the same bit for bit.
MAX_DECODED_SHORT_SIDE = 2 * DRAFT_SIZE
# ... and whose long side is longer than this (an image up to MAX_ASPECT_RATIO thin keeps a short side over 896 only
# when its long side is longer still): one decoded image holds at most 896 x 7,168 pixels (19 MB) after the shrink.
MAX_DECODED_LONG_SIDE = 8 * MAX_DECODED_SHORT_SIDE
# Long side / short side. CLIP resizes the short side to 224 and only then crops: a 10x4,000,000 PNG (40 megapixels,
# a few KB) would be resized to 224x89,600,000 (60 GB); 100,000x10 took 5 GB and 16 s. At 100:1 the resize takes
# 224x22,400 (5 megapixels); no product photo comes near it, and small odd images (a 1x70 strip) stay readable.
MAX_ASPECT_RATIO = 100
# What product photos come as. Pillow would otherwise try every plugin it has, EPS/PS (run by Ghostscript) included.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# The formats an opened image may say it is: Pillow's JPEG opener gives a multi-picture JPEG the format "MPO".
OPENED_FORMATS = ALLOWED_FORMATS + ("MPO",)
# Base64 text: 4 characters per 3 bytes, line breaks (CRLF every 76 characters, as MIME writes it) and a data: URL's
# header. Longer text is refused by its length, before it is copied (stripped, joined) or decoded.
BASE64_LINE = 76
BASE64_HEADER_SLACK = 1024
# Longer URLs are refused before they are parsed or scanned (servers commonly refuse over 8 KB too).
MAX_URL_CHARACTERS = 8192
CONNECT_TIMEOUT_S = 5  # per connection attempt
READ_TIMEOUT_S = 10  # per read: a server that stops answering
FETCH_DEADLINE_S = 20  # the whole fetch, redirects included: a server that answers a byte at a time
MAX_REDIRECTS = 3
# Images one Inference Endpoints request may hold: each is fetched or decoded before the model runs.
MAX_IMAGES_PER_REQUEST = 32
ALLOW_PRIVATE_URLS_ENV = "MODA_ALLOW_PRIVATE_URLS"
# Shared address space (RFC 6598, carrier-grade NAT): not public, though Python's is_private says no.
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
# NAT64's well-known prefix (RFC 6052) embeds an IPv4 address in its last 32 bits: that address is checked (DNS64
# answers every IPv4-only host so on an IPv6-only network). 6to4 (2002::/16) and Teredo are checked the same way.
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
# IANA's IPv4 and IPv6 Special-Purpose Address Registries (and the deprecated site-local fec0::/10): none is a public
# image server. Checked besides the standard library's is_private/is_global, whose answers differ between Python
# versions (192.0.0.0/24, 192.88.99.0/24, fec0::/10 and 3fff::/20 passed as global on 3.11). (network, what it is,
# never): `never` ones are refused even with MODA_ALLOW_PRIVATE_URLS (no server of an intranet lives there either).
SPECIAL_PURPOSE_NETWORKS = tuple((ipaddress.ip_network(network), what, never) for network, what, never in (
    ("0.0.0.0/8", "a 'this network' address", True),
    ("10.0.0.0/8", "a private address", False),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address", False),
    ("127.0.0.0/8", "a loopback address", False),
    ("169.254.0.0/16", "a link-local address", False),
    ("172.16.0.0/12", "a private address", False),
    ("192.0.0.0/24", "an IETF protocol assignment address (192.0.0.0/24)", False),
    ("192.0.2.0/24", "a documentation address (TEST-NET-1)", False),
    ("192.88.99.0/24", "a 6to4 relay anycast address (192.88.99.0/24)", False),
    ("192.168.0.0/16", "a private address", False),
    ("198.18.0.0/15", "a benchmarking address (198.18.0.0/15)", False),
    ("198.51.100.0/24", "a documentation address (TEST-NET-2)", False),
    ("203.0.113.0/24", "a documentation address (TEST-NET-3)", False),
    ("224.0.0.0/4", "a multicast address", True),
    ("240.0.0.0/4", "a reserved address", True),
    ("255.255.255.255/32", "the broadcast address", True),
    ("::/128", "an unspecified address", True),
    ("::1/128", "a loopback address", False),
    ("64:ff9b:1::/48", "a local-use NAT64 address (64:ff9b:1::/48)", False),
    ("100::/64", "a discard-only address (100::/64)", True),
    ("2001::/23", "an IETF protocol assignment address (2001::/23)", False),
    ("2001:db8::/32", "a documentation address (2001:db8::/32)", False),
    ("3fff::/20", "a documentation address (3fff::/20)", False),
    ("fc00::/7", "a private (unique local) address", False),
    ("fe80::/10", "a link-local address", False),
    ("fec0::/10", "a site-local address (fec0::/10)", False),
    ("ff00::/8", "a multicast address", True),
))
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
CHUNK_BYTES = 64 * 1024
USER_AGENT = "moda-image-fetch/1"


class ImageInputError(ValueError):
    """An image input refused or unreadable: the message names the input and the problem."""


def describe_input(value, limit: int = 200) -> str:
    """The input's repr, cut to `limit` characters (a base64 string or a long URL names itself by its start)."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB" if size >= 1024 * 1024 else f"{size} bytes"


# ---------------------------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------------------------

def is_url(value) -> bool:
    """An http(s) URL, read as one (fetched under the URL policy), never as a path."""
    # Only the start is looked at: stripping or lower-casing a 100 MB string would copy it.
    return isinstance(value, str) and value[:64].lstrip().lower().startswith(("http://", "https://"))


def private_urls_allowed(allow_private=None) -> bool:
    """The caller's choice, else MODA_ALLOW_PRIVATE_URLS (1/true/yes): off by default."""
    if allow_private is not None:
        return bool(allow_private)
    return os.environ.get(ALLOW_PRIVATE_URLS_ENV, "").strip().lower() in ("1", "true", "yes")


def address_problem(address: str, allow_private: bool):
    """None for an address MODA may connect to, else what it is ("a loopback address", ...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) names no other host
    if ip.version == 6:
        translated = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64_PREFIX else None)
        if translated is not None:  # the packets go to the IPv4 address inside: that one counts
            problem = address_problem(str(translated), allow_private)
            return None if problem is None else f"{problem} ({translated})"
        tunnelled = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if tunnelled is not None:  # 6to4 and Teredo reach the IPv4 address inside: it must pass too
            problem = address_problem(str(tunnelled), allow_private)
            if problem is not None:
                return f"{problem} ({tunnelled})"
    # Never a server, whatever the opt-in: 0.0.0.0 and :: reach this host, multicast and reserved reach no one host.
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    special = next(((what, never) for network, what, never in SPECIAL_PURPOSE_NETWORKS
                    if ip.version == network.version and ip in network), None)
    if special is not None and special[1]:
        return special[0]
    if ip.is_loopback:
        kind = "a loopback address"
    elif ip.is_link_local:
        kind = "a link-local address"
    elif ip.is_reserved:  # e.g. 240.0.0.0/4, which Python also counts as private
        return "a reserved address"
    elif ip.version == 4 and ip in SHARED_ADDRESS_SPACE:
        kind = "a shared (carrier-grade NAT) address"
    elif ip.is_private:
        kind = "a private address"
    elif not ip.is_global:
        kind = "a non-public address"
    elif special is not None:  # what this Python's standard library counts as global, IANA does not
        kind = special[0]
    else:
        return None
    return None if allow_private else kind


def url_error(url: str, problem: str) -> ImageInputError:
    return ImageInputError(f"Could not load image {describe_input(url)}: {problem}")


def resolve_url(url: str, allow_private=None):
    """
    Checks a URL against the policy and resolves its host: (parts, addresses), addresses being the
    (family, socket address) pairs to connect to, every one of them allowed. Nothing is sent anywhere.
    """
    allow = private_urls_allowed(allow_private)
    if not isinstance(url, str):
        raise ImageInputError(f"A URL must be a string; got {type(url).__name__}.")
    if len(url) > MAX_URL_CHARACTERS:
        raise url_error(url, f"the URL has {len(url)} characters, over the {MAX_URL_CHARACTERS} limit "
                             f"(MAX_URL_CHARACTERS)")
    if any(ord(character) < 33 or ord(character) == 127 for character in url):
        raise url_error(url, "the URL holds spaces or control characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise url_error(url, f"only http and https URLs are fetched, not {parts.scheme or 'a schemeless'!r} ones")
    if parts.username is not None or parts.password is not None:
        raise url_error(url, "URLs with a user name or password (user:password@host) are refused")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as err:
        raise url_error(url, f"bad port ({err})") from err
    host = parts.hostname
    if not host:
        raise url_error(url, "the URL has no host")
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as err:
        raise url_error(url, f"cannot resolve host {host!r} ({err})") from err
    addresses = []
    for family, _, _, _, sockaddr in answers:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        problem = address_problem(sockaddr[0], allow)
        if problem is not None:  # one bad answer is enough: which one a connection would use is not ours to pick
            helps = not allow and address_problem(sockaddr[0], True) is None  # would the opt-in let it through?
            hint = f"; set {ALLOW_PRIVATE_URLS_ENV}=1 to allow private addresses" if helps else ""
            said = f"{host} is" if host == sockaddr[0] else f"{host} resolves to {sockaddr[0]},"
            raise url_error(url, f"{said} {problem}{hint}")
        if (family, sockaddr) not in addresses:
            addresses.append((family, sockaddr))
    if not addresses:
        raise url_error(url, f"host {host!r} has no IPv4 or IPv6 address")
    return parts, addresses


class DeadlineBound:
    """Makes a socket's every read wait at most READ_TIMEOUT_S and never past the fetch's deadline, so a server that
    sends one byte at a time (each read answered in time) is still cut off when the whole fetch is due."""

    deadline = None  # time.monotonic() value
    read_timeout = READ_TIMEOUT_S

    def _arm(self):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the fetch deadline passed")
        self.settimeout(min(remaining, self.read_timeout))

    def recv(self, *args):
        self._arm()
        return super().recv(*args)

    def recv_into(self, *args):
        self._arm()
        return super().recv_into(*args)


class DeadlineBoundSocket(DeadlineBound, socket.socket):
    """A plain TCP socket under DeadlineBound."""


class DeadlineBoundSSLSocket(DeadlineBound, ssl.SSLSocket):
    """A TLS socket under DeadlineBound (the TLS layer also reads through its own `read`)."""

    def read(self, *args):
        self._arm()
        return super().read(*args)


class PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to an address already checked: no second DNS look-up, while the Host header (and for
    https SNI and the certificate check) carry the URL's host name."""

    def __init__(self, host, port, family, sockaddr, use_tls, deadline, connect_timeout, read_timeout):
        super().__init__(host, port, timeout=connect_timeout)
        self.family, self.sockaddr, self.use_tls = family, sockaddr, use_tls
        self.deadline, self.connect_timeout, self.read_timeout = deadline, connect_timeout, read_timeout

    def connect(self):
        sock = DeadlineBoundSocket(self.family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.deadline, sock.read_timeout = self.deadline, self.read_timeout
        try:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the fetch deadline passed")
            sock.settimeout(min(self.connect_timeout, remaining))
            sock.connect(self.sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.use_tls:
                context = ssl.create_default_context()  # certificate and host name checked
                context.sslsocket_class = DeadlineBoundSSLSocket
                sock.settimeout(min(self.connect_timeout, max(self.deadline - time.monotonic(), 0.001)))
                sock = context.wrap_socket(sock, server_hostname=self.host)
                sock.deadline, sock.read_timeout = self.deadline, self.read_timeout
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def fetch_url(url: str, *, max_bytes: int = MAX_IMAGE_BYTES, connect_timeout: float = CONNECT_TIMEOUT_S,
              read_timeout: float = READ_TIMEOUT_S, deadline: float = FETCH_DEADLINE_S,
              max_redirects: int = MAX_REDIRECTS, allow_private=None) -> bytes:
    """The body of an http(s) URL under the URL policy (see the module docstring); ImageInputError otherwise."""
    due = time.monotonic() + deadline
    current = url
    for _ in range(max_redirects + 1):
        parts, addresses = resolve_url(current, allow_private)
        try:
            status, location, body = _get(current, parts, addresses, due, max_bytes, connect_timeout, read_timeout)
        except ImageInputError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as err:
            if time.monotonic() >= due:
                raise url_error(url, f"took longer than the {deadline:g} s the whole fetch may take") from err
            raise url_error(url, f"{type(err).__name__}: {err}") from err
        if status in REDIRECT_STATUSES:
            if not location:
                raise url_error(url, f"HTTP {status} redirect without a Location header")
            current = urllib.parse.urljoin(current, location.strip())
            continue
        if status != 200:
            where = "" if current == url else f" (redirected to {describe_input(current)})"
            raise url_error(url, f"the server answered HTTP {status}{where}")
        return body
    raise url_error(url, f"more than {max_redirects} redirects (the last to {describe_input(current)})")


def _get(url, parts, addresses, due, max_bytes, connect_timeout, read_timeout):
    """(status, Location, body) from the first of `addresses` that connects; the body only for a 200."""
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_header = parts.netloc.rpartition("@")[2]
    last_error = None
    for family, sockaddr in addresses:
        connection = PinnedHTTPConnection(parts.hostname, sockaddr[1], family, sockaddr,
                                          parts.scheme.lower() == "https", due, connect_timeout, read_timeout)
        try:
            try:
                connection.connect()
            except OSError as err:  # refused, unreachable (e.g. no IPv6 route), timed out: try the host's next address
                last_error = err
                continue
            connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
            connection.putheader("Host", host_header)
            connection.putheader("Accept-Encoding", "identity")  # no gzip: the byte cap counts what is decoded
            connection.putheader("Accept", "image/*")
            connection.putheader("User-Agent", USER_AGENT)
            connection.endheaders()
            response = connection.getresponse()
            if response.status != 200:
                return response.status, response.getheader("Location"), b""
            length = response.getheader("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise url_error(url, f"the server announces {megabytes(int(length))}, over the "
                                     f"{megabytes(max_bytes)} limit (MAX_IMAGE_BYTES)")
            body = bytearray()
            while True:
                chunk = response.read1(CHUNK_BYTES)
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    raise url_error(url, f"the body is over the {megabytes(max_bytes)} limit (MAX_IMAGE_BYTES)")
            return response.status, None, bytes(body)
        finally:
            connection.close()
    raise last_error


# ---------------------------------------------------------------------------------------------------------------
# Bytes, files and base64
# ---------------------------------------------------------------------------------------------------------------

def check_size(size: int, where: str, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageInputError(f"{where}: {megabytes(size)} is over the {megabytes(max_bytes)} limit (MAX_IMAGE_BYTES)")


def read_image_file(path, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """A local image file's bytes, its size checked before it is read."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageInputError(f"Image file not found: {path!r}")
    size = os.path.getsize(path)
    if size == 0:
        raise ImageInputError(f"Image file is empty (0 bytes): {path!r}")
    check_size(size, f"Image file {path!r}", max_bytes)
    try:
        with open(path, "rb") as handle:
            return handle.read(max_bytes + 1)
    except OSError as err:
        raise ImageInputError(f"Cannot read image file {path!r}: {err}") from err


def max_base64_characters(max_bytes: int = MAX_IMAGE_BYTES) -> int:
    """The longest base64 text that can hold max_bytes: 4 characters per 3 bytes, a CRLF every BASE64_LINE
    characters, and BASE64_HEADER_SLACK for a data: URL's header and padding."""
    encoded = 4 * -(-max_bytes // 3)
    return encoded + 2 * -(-encoded // BASE64_LINE) + BASE64_HEADER_SLACK


def check_base64_length(text: str, where: str, max_bytes: int = MAX_IMAGE_BYTES) -> None:
    """Refuses text longer than base64 of max_bytes can be, by its length alone: nothing is copied or scanned."""
    if len(text) > max_base64_characters(max_bytes):
        raise ImageInputError(f"{where}: {len(text)} characters of base64 is over the {megabytes(max_bytes)} limit "
                              f"(MAX_IMAGE_BYTES)")


def base64_image_bytes(text: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """Image bytes from base64 text: a data: URL or bare base64, line-wrapped (as MIME and `base64` write it) or
    URL-safe (whose padding is often left out). Its length is checked before it is copied, its size before it is
    decoded."""
    check_base64_length(text, f"The base64 input {describe_input(text, 40)}", max_bytes)
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise ImageInputError(f"A data: URL must hold base64 (data:image/...;base64,...); got "
                                  f"{describe_input(header, 60)}")
    text = "".join(text.split())
    check_size(len(text) * 3 // 4 - text[-2:].count("="), f"The base64 input {describe_input(text, 40)}", max_bytes)
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageInputError(f"{describe_input(text, 40)} is not valid base64 ({err})") from err


# ---------------------------------------------------------------------------------------------------------------
# Decoding. `where` starts every message and names the input: "catalog.csv row 3", "Could not read image 'x.png'".
# ---------------------------------------------------------------------------------------------------------------

def check_opened_image(image, where: str, *, max_pixels: int = MAX_IMAGE_PIXELS):
    """
    A PIL image or a numpy array that came in already opened -> itself, if it may be decoded: an allowed format (an
    image made in memory has none: allowed), at most max_pixels pixels and MAX_ASPECT_RATIO between its sides. Only
    the header's size is read, never a pixel: a lazily opened image is still undecoded. ImageInputError starting with
    `where` otherwise.
    """
    if isinstance(image, np.ndarray):
        shape = image.shape
        if image.ndim == 3 and shape[-1] in (1, 3, 4):
            height, width = shape[:2]
        elif image.ndim == 3 and shape[0] in (1, 3):
            height, width = shape[1:]
        elif image.ndim == 2:
            height, width = shape
        else:  # a layout no image has: the caller names the shapes it takes
            height, width = 0, 0
        if image.size > 4 * max_pixels:  # every layout: four channels of max_pixels at most
            raise ImageInputError(f"{where}: an array of shape {shape} holds {image.size} values, over the "
                                  f"{max_pixels / 1e6:g} megapixel limit (MAX_IMAGE_PIXELS)")
    else:
        form = getattr(image, "format", None)
        if form is not None and form not in OPENED_FORMATS:
            raise ImageInputError(f"{where}: a {form} image; only {', '.join(ALLOWED_FORMATS)} are read")
        width, height = image.size
    if width * height > max_pixels:
        raise ImageInputError(
            f"{where}: {width}x{height} pixels is over the {max_pixels / 1e6:g} megapixel limit (MAX_IMAGE_PIXELS), "
            f"refused before decoding as a possible decompression bomb"
        )
    if min(width, height) and max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageInputError(
            f"{where}: {width}x{height} pixels is over the {MAX_ASPECT_RATIO}:1 limit on the ratio of its sides "
            f"(MAX_ASPECT_RATIO): resized for CLIP it would take {224 * max(width, height) // min(width, height)}x224 "
            f"pixels"
        )
    return image


def open_image_bytes(data: bytes, where: str, *, max_bytes: int = MAX_IMAGE_BYTES,
                     max_pixels: int = MAX_IMAGE_PIXELS, draft_size=DRAFT_SIZE):
    """
    A lazily opened PIL image of the bytes, nothing decoded yet: an allowed format, at most max_bytes of input and
    max_pixels pixels by its header (check_opened_image), a JPEG then put in draft mode. ImageInputError starting
    with `where` otherwise.
    """
    import io
    import re

    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageInputError(f"{where}: the image is empty (0 bytes)")
    check_size(len(data), where, max_bytes)
    buffer = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own, higher limit; the check below refuses with a message instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(buffer, formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as err:
        raise ImageInputError(
            f"{where}: not a readable image (none of the formats read: {', '.join(ALLOWED_FORMATS)})"
        ) from err
    except Image.DecompressionBombError as err:  # a process that lowered Pillow's limit (the endpoint handler's)
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "the image"
        raise ImageInputError(f"{where}: {size} is over the {min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS) / 1e6:g} "
                              f"megapixel limit (MAX_IMAGE_PIXELS), refused before decoding as a possible "
                              f"decompression bomb") from err
    except Exception as err:  # broken headers
        reason = str(err).replace(repr(buffer), "the data")  # PIL names the buffer: an address, other every run
        raise ImageInputError(f"{where}: not a readable image ({type(err).__name__}: {reason})") from err
    try:
        # The header's size, before draft(): a progressive JPEG keeps full-size coefficient buffers (a 13300x13300
        # one of 2 MB took 1 GB) whatever scale it is drafted to.
        check_opened_image(image, where, max_pixels=max_pixels)
    except ImageInputError:
        image.close()
        raise
    if draft_size and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (draft_size, draft_size))  # a speed-up: 1/2, 1/4 or 1/8 scale, never below draft_size
    return image


def decode_image(data: bytes, where: str, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS,
                 draft_size=DRAFT_SIZE):
    """Image bytes -> an RGB PIL image under the decoding policy; ImageInputError starting with `where` otherwise."""
    image = open_image_bytes(data, where, max_bytes=max_bytes, max_pixels=max_pixels, draft_size=draft_size)
    try:
        return to_rgb(image, where, max_pixels=max_pixels)
    except ImageInputError:
        raise
    except Exception as err:  # truncated or corrupt data surfaces only when the pixels are decoded
        raise ImageInputError(f"{where}: not a readable image ({type(err).__name__}: {err})") from err


def to_rgb(image, where: str = "An image", *, max_pixels: int = MAX_IMAGE_PIXELS):
    """
    A PIL image -> RGB: checked first (check_opened_image: its format, pixels and shape, before anything is decoded),
    then the first frame of an animation, EXIF orientation applied, transparency on white, and sides over
    MAX_DECODED_SHORT_SIDE (short) or MAX_DECODED_LONG_SIDE (long) shrunk to fit.
    """
    from PIL import Image, ImageOps

    check_opened_image(image, where, max_pixels=max_pixels)
    if getattr(image, "is_animated", False):
        image.seek(0)  # the first frame of an animation
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent product shots: composite on white, as catalogs show them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    elif image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray((array / max(array.max(), 1.0) * 255).round().astype(np.uint8))
    return shrink(image.convert("RGB"))


def shrink(image, short_side: int = MAX_DECODED_SHORT_SIDE, long_side: int = MAX_DECODED_LONG_SIDE):
    """The image itself when its short side is at most `short_side` and its long side at most `long_side` (every
    catalog photo: bit for bit the same); else a copy shrunk to fit both with a Lanczos filter, its aspect kept."""
    from PIL import Image

    width, height = image.size
    scale = min(short_side / min(width, height), long_side / max(width, height))
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def restrict_pillow(max_pixels: int = MAX_IMAGE_PIXELS, formats=ALLOWED_FORMATS) -> None:
    """
    Pillow's own limits, for this whole process: only for a process that is MODA's own (the endpoint handler calls it
    when imported, the app before it serves), where something else decodes requests with plain Pillow before MODA
    sees them (the serving toolkit's `Image.open(body).convert("RGB")`, Gradio's upload). Never called on import of
    this file: a library user's process is theirs, and the functions here pass their limits with each call.

    - Pillow warns (DecompressionBombWarning) above Image.MAX_IMAGE_PIXELS and raises DecompressionBombError above
      twice that: half of max_pixels makes every image over max_pixels an error when it is opened, before any pixel
      is decoded (one between half and all of max_pixels is warned about, and read).
    - Every opener but the allowed formats' is unregistered (Image.init() imports all plugins first, so none
      registers again later): EPS/PS never reach Ghostscript, nor any other plugin's parser.
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels // 2
    Image.init()
    for name in [name for name in Image.OPEN if name not in formats]:
        del Image.OPEN[name]
    Image.ID[:] = [name for name in Image.ID if name in formats]


def load_url_image(url: str, *, deadline: float = FETCH_DEADLINE_S, allow_private=None,
                   max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS, draft_size=DRAFT_SIZE):
    """An http(s) URL -> an RGB PIL image, under both policies."""
    data = fetch_url(url, deadline=deadline, allow_private=allow_private, max_bytes=max_bytes)
    return decode_image(data, f"Could not read image {describe_input(url)}", max_bytes=max_bytes,
                        max_pixels=max_pixels, draft_size=draft_size)


def load_image_file(path, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS,
                    draft_size=DRAFT_SIZE):
    """A local image file -> an RGB PIL image, under the decoding policy."""
    data = read_image_file(path, max_bytes)
    return decode_image(data, f"Could not read image {os.fspath(path)!r}", max_bytes=max_bytes,
                        max_pixels=max_pixels, draft_size=draft_size)


__all__ = [
    "ALLOWED_FORMATS", "ALLOW_PRIVATE_URLS_ENV", "CONNECT_TIMEOUT_S", "DRAFT_SIZE", "FETCH_DEADLINE_S",
    "MAX_ASPECT_RATIO", "MAX_DECODED_LONG_SIDE", "MAX_DECODED_SHORT_SIDE", "MAX_IMAGES_PER_REQUEST",
    "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "MAX_REDIRECTS", "MAX_URL_CHARACTERS", "READ_TIMEOUT_S",
    "SPECIAL_PURPOSE_NETWORKS", "ImageInputError",
    "PinnedHTTPConnection", "address_problem", "base64_image_bytes", "check_base64_length", "check_opened_image",
    "decode_image", "describe_input", "fetch_url", "is_url", "load_image_file", "load_url_image",
    "max_base64_characters", "open_image_bytes", "private_urls_allowed", "read_image_file", "resolve_url",
    "restrict_pillow", "shrink", "to_rgb",
]
