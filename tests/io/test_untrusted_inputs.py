"""An adversarial corpus for image_io_moda's URL and decoding policies, through every entry point that reads images:
the processor, the Inference Endpoints handler, moda.io.images (moda caption, eval, search, build-dataset, app).

All traffic stays on 127.0.0.1: a loopback HTTP server started here (reachable only through the private-address
opt-in), and a simulated public host, images.example.com, whose resolver answer and route the `network` fixture
patches to reach that server. Any connection to another address fails the test.
"""

import base64
import http.server
import importlib.util
import io
import json
import shutil
import socket
import ssl
import struct
import threading
import time
import urllib.parse
import warnings
import zlib

import pytest
from PIL import Image

import image_io_moda
from hub_card import prepare_model_folder
from image_io_moda import (MAX_IMAGES_PER_REQUEST, ImageInputError, PinnedHTTPConnection, decode_image, fetch_url,
                           load_url_image, read_image_file)

PUBLIC_HOST = "images.example.com"
REBINDING_HOST = "rebind.example.com"
PUBLIC_ADDRESS = "93.184.216.34"  # a global address; the `network` fixture routes it to the loopback server
TRICKLE_INTERVAL_S = 0.3
TRICKLE_MAX_BYTES = 30  # a trickling answer ends by itself within ~9 s, whatever the client does


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width x height pixels, all black, written by hand: tens of KB that decode to
    width*height bytes and more (Pillow only warns below 179 megapixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + the packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


RED_PNG = png_bytes(Image.new("RGB", (24, 16), (220, 20, 20)))
EPS_BYTES = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
             b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")


# ---------------------------------------------------------------------------------------------------------------
# The loopback server
# ---------------------------------------------------------------------------------------------------------------

class Routes(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.seen.append({"path": self.path, "host": self.headers.get("Host")})
        route, _, query = self.path.partition("?")
        target = urllib.parse.parse_qs(query).get("to", [""])[0]
        self.close_connection = True
        try:
            if route == "/ok.png":
                self.send(200, RED_PNG, [("Content-Type", "image/png")])
            elif route == "/redirect":
                self.send(302, headers=[("Location", target)])
            elif route.startswith("/loop"):
                self.send(302, headers=[("Location", f"/loop{len(route)}")])
            elif route == "/big-length":  # announces 10 MB; the client must not wait for them
                self.send_response(200)
                self.send_header("Content-Length", str(10 * 1024 * 1024))
                self.end_headers()
                self.wfile.write(b"\0" * 1024)
            elif route == "/big-chunked":  # no length: 64 KB chunks until the client hangs up (at most 4 MB)
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(b"10000\r\n" + b"\0" * 0x10000 + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            elif route == "/trickle-body":  # each read answered in time; the whole never arrives
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(TRICKLE_MAX_BYTES):
                    self.wfile.write(b"\0")
                    time.sleep(TRICKLE_INTERVAL_S)
            elif route == "/trickle-headers":
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * TRICKLE_MAX_BYTES:
                    self.wfile.write(bytes([byte]))
                    time.sleep(TRICKLE_INTERVAL_S if byte == ord("a") else 0)
            else:
                self.send(404, b"not here")
        except OSError:  # the client hung up, as it should on these
            pass


def start_server(tls_context=None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Routes)
    server.daemon_threads = True
    server.seen = []
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def server():
    server, thread = start_server()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def base(server):
    server.seen.clear()
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(autouse=True)
def network(monkeypatch):
    """The resolver answers PUBLIC_HOST with PUBLIC_ADDRESS (and REBINDING_HOST with it once, then 127.0.0.1); a
    connection to PUBLIC_ADDRESS goes to 127.0.0.1 on the same port; one to any other non-loopback address fails the
    test. Records lookups and connections."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, PinnedHTTPConnection.connect
    record = {"lookups": [], "connections": []}

    def resolve(host, port, *args, **kwargs):
        record["lookups"].append(host)
        if host == PUBLIC_HOST or (host == REBINDING_HOST and record["lookups"].count(host) == 1):
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (PUBLIC_ADDRESS, port))]
        if host == REBINDING_HOST:
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    def route(connection):
        record["connections"].append(connection.sockaddr[0])
        if connection.sockaddr[0] == PUBLIC_ADDRESS:
            connection.sockaddr = ("127.0.0.1", connection.sockaddr[1])
        elif connection.sockaddr[0] not in ("127.0.0.1", "::1"):
            raise AssertionError(f"a connection to {connection.sockaddr} was attempted")
        return real_connect(connection)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(PinnedHTTPConnection, "connect", route)
    monkeypatch.delenv(image_io_moda.ALLOW_PRIVATE_URLS_ENV, raising=False)
    return record


# Pillow's own default (89 megapixels warn, 179 refuse). Importing an endpoint handler.py lowers it for its whole
# process (restrict_pillow, tested in a fresh process in test_untrusted_inputs_more.py); here, image_io_moda's own
# checks are tested as a library user's process has them.
PILLOW_DEFAULT_MAX_IMAGE_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)


@pytest.fixture(autouse=True)
def pillow_defaults(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PILLOW_DEFAULT_MAX_IMAGE_PIXELS)


def public(base: str, path: str) -> str:
    """The URL of `path` on the loopback server, as the simulated public host."""
    return base.replace("127.0.0.1", PUBLIC_HOST) + path


# ---------------------------------------------------------------------------------------------------------------
# Addresses, schemes, user info
# ---------------------------------------------------------------------------------------------------------------

def test_the_loopback_server_is_reachable_only_through_the_opt_in(base, server, monkeypatch):
    with pytest.raises(ImageInputError, match=r"127\.0\.0\.1 is a loopback address; set MODA_ALLOW_PRIVATE_URLS=1"):
        fetch_url(base + "/ok.png")
    assert server.seen == []  # refused before any request
    assert fetch_url(base + "/ok.png", allow_private=True) == RED_PNG
    monkeypatch.setenv("MODA_ALLOW_PRIVATE_URLS", "1")
    assert fetch_url(base + "/ok.png") == RED_PNG
    with pytest.raises(ImageInputError, match="loopback"):  # the caller's keyword wins over the environment
        fetch_url(base + "/ok.png", allow_private=False)


@pytest.mark.parametrize("url, problem", [
    ("http://127.0.0.1/x.jpg", r"127\.0\.0\.1 is a loopback address"),
    ("http://[::1]:8080/x.jpg", r"::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]/x.jpg", r"a loopback address \(127\.0\.0\.1\)"),
    ("http://169.254.169.254/latest/meta-data/", r"169\.254\.169\.254 is a link-local address"),
    ("http://10.0.0.1/x.jpg", r"10\.0\.0\.1 is a private address"),
    ("http://192.168.1.20/x.jpg", "a private address"),
    ("http://100.64.0.1/x.jpg", "shared"),
    ("http://0.0.0.0:8080/x.jpg", "an unspecified address"),
    ("http://[::]/x.jpg", "an unspecified address"),
    ("http://224.0.0.1/x.jpg", "a multicast address"),
    ("http://2130706433/x.jpg", r"resolves to 127\.0\.0\.1, a loopback address"),  # 127.0.0.1 as one number
    ("http://localhost/x.jpg", r"localhost resolves to (127\.0\.0\.1|::1), a loopback address"),
])
def test_private_and_special_addresses_are_refused_without_connecting(url, problem, network):
    with pytest.raises(ImageInputError, match=problem) as info:
        fetch_url(url)
    assert str(info.value).startswith(f"Could not load image {url!r}: ")
    assert network["connections"] == []


@pytest.mark.parametrize("url, problem", [
    ("file:///etc/passwd", "only http and https URLs are fetched, not 'file'"),
    ("ftp://example.com/x.jpg", "only http and https URLs are fetched, not 'ftp'"),
    ("gopher://example.com/x", "not 'gopher'"),
    ("http://user:secret@images.example.com/x.jpg", "user name or password"),
    ("http://user@images.example.com/x.jpg", "user name or password"),
    ("http://images.example.com\r\nX-Injected: 1/x.jpg", "control characters"),
    ("http:///x.jpg", "no host"),
])
def test_other_schemes_user_info_and_malformed_urls_are_refused(url, problem, network):
    with pytest.raises(ImageInputError, match=problem):
        fetch_url(url)
    assert network["connections"] == [] and network["lookups"] == []


def test_the_opt_in_never_allows_unspecified_or_multicast_addresses():
    for url in ("http://0.0.0.0/x.jpg", "http://[::ffff:0.0.0.0]/x.jpg", "http://239.1.1.1/x.jpg"):
        with pytest.raises(ImageInputError, match="unspecified|multicast") as info:
            fetch_url(url, allow_private=True)
        assert "MODA_ALLOW_PRIVATE_URLS" not in str(info.value)  # the opt-in would not help: not offered


def test_a_public_host_is_fetched_from_the_address_checked_with_its_own_host_header(base, server, network):
    url = public(base, "/ok.png")
    assert fetch_url(url) == RED_PNG
    assert server.seen == [{"path": "/ok.png", "host": f"{PUBLIC_HOST}:{server.server_address[1]}"}]
    assert network["connections"] == [PUBLIC_ADDRESS]


def test_dns_rebinding_cannot_switch_the_address_after_the_check(base, server, network):
    """The host resolves to a public address once, then to 127.0.0.1: the fetch looks it up once and connects to
    the address it checked."""
    url = base.replace("127.0.0.1", REBINDING_HOST) + "/ok.png"
    assert fetch_url(url) == RED_PNG
    assert network["lookups"].count(REBINDING_HOST) == 1 and network["connections"] == [PUBLIC_ADDRESS]


# ---------------------------------------------------------------------------------------------------------------
# Redirects
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, problem", [
    ("http://127.0.0.1:{port}/ok.png", r"127\.0\.0\.1 is a loopback address"),
    ("http://10.0.0.1/ok.png", r"10\.0\.0\.1 is a private address"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://localhost:{port}/ok.png", "loopback"),
    ("file:///etc/passwd", "only http and https"),
])
def test_each_redirect_hop_is_checked_like_the_first(base, server, network, target, problem):
    target = target.format(port=server.server_address[1])
    url = public(base, "/redirect?to=" + urllib.parse.quote(target, safe=""))
    with pytest.raises(ImageInputError, match=problem):
        fetch_url(url)
    assert network["connections"] == [PUBLIC_ADDRESS]  # the first hop only
    assert [request["path"] for request in server.seen] == [urllib.parse.urlsplit(url).path + "?" +
                                                            urllib.parse.urlsplit(url).query]


def test_the_opt_in_still_checks_redirects_to_addresses_that_are_never_servers(base, server):
    """0.0.0.0 reaches this machine's own servers: a redirect there is refused even with private addresses allowed."""
    url = base + "/redirect?to=" + urllib.parse.quote(f"http://0.0.0.0:{server.server_address[1]}/ok.png")
    with pytest.raises(ImageInputError, match="0.0.0.0 is an unspecified address"):
        fetch_url(url, allow_private=True)


def test_redirects_are_followed_within_the_limit_and_a_loop_is_cut_off(base, server):
    target = public(base, "/ok.png")
    once = public(base, "/redirect?to=" + urllib.parse.quote(target, safe=""))
    twice = public(base, "/redirect?to=" + urllib.parse.quote(once, safe=""))
    assert fetch_url(twice) == RED_PNG
    server.seen.clear()
    with pytest.raises(ImageInputError, match=r"more than 3 redirects"):
        fetch_url(public(base, "/loop"))
    assert len(server.seen) == 4  # the URL and three redirects, then no more requests
    with pytest.raises(ImageInputError, match="more than 1 redirects"):
        fetch_url(twice, max_redirects=1)


def test_an_error_status_names_the_url_and_the_status(base):
    with pytest.raises(ImageInputError, match=r"images\.example\.com.*/missing\.png'.*HTTP 404"):
        fetch_url(public(base, "/missing.png"))


# ---------------------------------------------------------------------------------------------------------------
# Size and time
# ---------------------------------------------------------------------------------------------------------------

def test_a_body_over_the_byte_cap_is_refused_by_its_length_or_while_it_streams(base):
    with pytest.raises(ImageInputError, match=r"announces 10\.0 MB, over the 1\.0 MB limit"):
        fetch_url(public(base, "/big-length"), max_bytes=1024 * 1024)
    started = time.monotonic()
    with pytest.raises(ImageInputError, match=r"the body is over the 1\.0 MB limit"):
        fetch_url(public(base, "/big-chunked"), max_bytes=1024 * 1024)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("path", ["/trickle-body", "/trickle-headers"])
def test_a_trickling_server_is_cut_off_at_the_deadline(base, path):
    """One byte every 0.3 s answers every read in time: only the deadline of the whole fetch stops it."""
    started = time.monotonic()
    with pytest.raises(ImageInputError, match=r"took longer than the 1 s the whole fetch may take"):
        fetch_url(public(base, path), deadline=1.0)
    assert time.monotonic() - started < 3  # the whole answer would take TRICKLE_MAX_BYTES * 0.3 s = 9 s


def test_https_checks_the_certificate_against_the_url_host_while_connecting_to_the_checked_address(
        tmp_path, monkeypatch, network):
    """SNI and the host-name check use the URL's host, though the connection goes to the pinned address."""
    pytest.importorskip("cryptography")
    authority, certificate_for = certificate_maker(tmp_path)
    real_default_context = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *args, **kwargs: real_default_context(
        cafile=str(authority)))  # this test's authority, as a system's would be
    for names, expected in (([PUBLIC_HOST], RED_PNG), (["other.example.com"], "CERTIFICATE_VERIFY_FAILED|match")):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*certificate_for(names))
        server, thread = start_server(context)
        try:
            url = f"https://{PUBLIC_HOST}:{server.server_address[1]}/ok.png"
            if isinstance(expected, bytes):
                assert fetch_url(url) == expected
            else:
                with pytest.raises(ImageInputError, match=expected):
                    fetch_url(url, deadline=5)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
    assert set(network["connections"]) == {PUBLIC_ADDRESS}


def certificate_maker(tmp_path):
    """A certificate authority (its PEM file) and a function names -> (certificate file, key file) it signs."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MODA test authority")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    authority = tmp_path / "authority.pem"
    authority.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def certificate_for(names):
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(len(names) + 1)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
        certificate_file, key_file = tmp_path / f"{names[0]}.pem", tmp_path / f"{names[0]}.key"
        certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return str(certificate_file), str(key_file)

    return authority, certificate_for


# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bomb():
    """A PNG of 13000x13000 pixels in ~20 KB: under Pillow's own error threshold (only a warning), it used to cost
    11 s and 2.9 GB to decode."""
    return png_declaring(13000, 13000)


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding(bomb):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Pillow's: it would decode it
        assert len(bomb) < 100_000 and Image.open(io.BytesIO(bomb)).size == (13000, 13000)
    started = time.monotonic()
    with pytest.raises(ImageInputError, match=r"^item 7: 13000x13000 pixels is over the 40 megapixel limit "
                                              r"\(MAX_IMAGE_PIXELS\), refused before decoding"):
        decode_image(bomb, "item 7")
    assert time.monotonic() - started < 1.0
    # the limit is the caller's to lower (or raise): a small image over a lowered limit is refused the same way
    with pytest.raises(ImageInputError, match=r"24x16 pixels is over the 0\.0001 megapixel limit"):
        decode_image(RED_PNG, "small", max_pixels=100)


def test_eps_and_other_formats_are_never_handed_to_their_decoders():
    from PIL import EpsImagePlugin  # (its opener, not Image.open: an endpoint handler imported earlier removes it)

    assert EpsImagePlugin.EpsImageFile(io.BytesIO(EPS_BYTES)).format == "EPS"  # what Pillow would do: Ghostscript
    with pytest.raises(ImageInputError, match=r"^upload: not a readable image \(none of the formats read: JPEG, "
                                              r"PNG, WEBP, GIF, BMP, TIFF\)"):
        decode_image(EPS_BYTES, "upload")
    icon = io.BytesIO()
    Image.new("RGB", (16, 16)).save(icon, format="ICO")
    with pytest.raises(ImageInputError, match="none of the formats read"):
        decode_image(icon.getvalue(), "icon")


def test_oversized_bytes_files_and_base64_are_refused_before_decoding(tmp_path):
    with pytest.raises(ImageInputError, match=rf"^upload: {len(RED_PNG)} bytes is over the {len(RED_PNG) - 1} bytes "
                                              r"limit \(MAX_IMAGE_BYTES\)"):
        decode_image(RED_PNG, "upload", max_bytes=len(RED_PNG) - 1)
    path = tmp_path / "big.png"
    path.write_bytes(RED_PNG + b"\0" * (2 * 1024 * 1024))
    with pytest.raises(ImageInputError, match=r"^Image file '.*big\.png': 2\.0 MB is over the 1\.0 MB limit"):
        read_image_file(path, max_bytes=1024 * 1024)
    encoded = base64.b64encode(RED_PNG + b"\0" * (2 * 1024 * 1024)).decode()
    with pytest.raises(ImageInputError, match=r"The base64 input .* is over the 1\.0 MB limit"):
        image_io_moda.base64_image_bytes(encoded, max_bytes=1024 * 1024)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale():
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 1500), (30, 120, 200)).save(buffer, format="JPEG", quality=90)
    reduced = decode_image(buffer.getvalue(), "photo")
    assert reduced.size == (1000, 750)  # 1/2 scale: both sides stay at least DRAFT_SIZE (448)
    assert min(reduced.size) >= image_io_moda.DRAFT_SIZE
    # without draft mode it is decoded whole, then shrunk to MAX_DECODED_SHORT_SIDE (896) on its short side
    assert decode_image(buffer.getvalue(), "photo", draft_size=None).size == (1195, 896)
    r, g, b = reduced.getpixel((500, 375))
    assert abs(r - 30) < 8 and abs(g - 120) < 8 and abs(b - 200) < 8


def test_an_animation_gives_its_first_frame_and_transparency_goes_on_white():
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((200, 0, 0), (0, 200, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    r, g, _ = decode_image(buffer.getvalue(), "animation").getpixel((5, 5))
    assert r > 150 and g < 60
    clear = png_bytes(Image.new("RGBA", (8, 8), (0, 0, 255, 0)))
    assert decode_image(clear, "transparent").getpixel((4, 4)) == (255, 255, 255)


def test_a_url_image_is_decoded_under_the_same_policy(base, server, monkeypatch):
    """Fetched bytes go through the decoding policy too: a bomb served from a URL is refused by its header."""
    assert load_url_image(public(base, "/ok.png")).size == (24, 16)
    monkeypatch.setattr(image_io_moda, "fetch_url", lambda url, **kwargs: png_declaring(13000, 13000))
    with pytest.raises(ImageInputError, match=r"^Could not read image 'http://images\.example\.com.*13000x13000"):
        load_url_image(public(base, "/bomb.png"))


# ---------------------------------------------------------------------------------------------------------------
# The entry points: processor, moda.io.images (moda caption), the Inference Endpoints handler
# ---------------------------------------------------------------------------------------------------------------

def test_the_processor_reads_urls_files_and_base64_under_the_policies(base, tmp_path, bomb, tiny_model_and_processor,
                                                                      monkeypatch):
    _, processor = tiny_model_and_processor
    with pytest.raises(ValueError, match=r"Could not load image 'http://127\.0\.0\.1:\d+/ok\.png': .*loopback"):
        processor(images=base + "/ok.png")
    assert processor(images=public(base, "/ok.png"))["pixel_values"].shape == (1, 3, 32, 32)
    monkeypatch.setenv("MODA_ALLOW_PRIVATE_URLS", "1")  # an intranet catalog's opt-in
    assert processor(images=base + "/ok.png")["pixel_values"].shape == (1, 3, 32, 32)
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(ValueError, match=r"bomb\.png'.*13000x13000 pixels is over the 40 megapixel limit"):
        processor(images=str(path))
    with pytest.raises(ValueError, match="13000x13000"):
        processor(images="data:image/png;base64," + base64.b64encode(bomb).decode())
    (tmp_path / "image.eps").write_bytes(EPS_BYTES)
    with pytest.raises(ValueError, match=r"image\.eps'.*none of the formats read"):
        processor(images=str(tmp_path / "image.eps"))


def test_moda_features_names_the_item_for_bombs_and_private_urls(base, tmp_path, bomb):
    from moda.io.images import load_image

    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(ValueError, match=r"^catalog\.csv row 3: 13000x13000 pixels"):
        load_image(str(path), "catalog.csv row 3")
    with pytest.raises(ValueError, match=r"^catalog\.csv row 4: Could not load image .*loopback"):
        load_image(base + "/ok.png", "catalog.csv row 4")
    assert load_image(public(base, "/ok.png"), "catalog.csv row 5").size == (24, 16)


def test_moda_caption_reports_each_bomb_as_a_bad_item_and_captions_the_others(tiny_moda_dir, tmp_path, bomb,
                                                                              product_images, capsys):
    from moda.catalog.caption import read_output
    from moda.cli.caption import main

    folder = tmp_path / "catalog"
    folder.mkdir()
    for i in range(3):
        product_images[i].save(folder / f"good{i}.png")
    for i in range(3):  # a batch of bombs would be gigabytes decoded
        (folder / f"bomb{i}.png").write_bytes(bomb)
    (folder / "poster.png").write_bytes(EPS_BYTES)  # EPS named .png
    output = tmp_path / "captions.jsonl"
    assert main(["--model", str(tiny_moda_dir), "--images", str(folder), "--output", str(output),
                 "--batch_size", "7", "--max_new_tokens", "4"]) == 0
    rows = {row["id"]: row for row in read_output(output)}
    for i in range(3):
        assert "13000x13000 pixels is over the 40 megapixel limit" in rows[f"bomb{i}.png"]["error"]
        assert f"bomb{i}.png" in rows[f"bomb{i}.png"]["error"]
        assert rows[f"good{i}.png"]["description"] and "error" not in rows[f"good{i}.png"]
    assert "none of the formats read" in rows["poster.png"]["error"]


@pytest.fixture(scope="module")
def handler(tiny_moda_dir, tmp_path_factory):
    """EndpointHandler imported from the handler.py inside a model folder, as Inference Endpoints does."""
    folder = shutil.copytree(tiny_moda_dir, tmp_path_factory.mktemp("endpoint") / "model")
    prepare_model_folder(folder)
    spec = importlib.util.spec_from_file_location("untrusted_inputs_handler", folder / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(folder))


def test_the_handler_refuses_a_request_with_too_many_images(handler, network):
    too_many = [RED_PNG] * (MAX_IMAGES_PER_REQUEST + 1)
    with pytest.raises(ValueError, match=rf'"inputs" holds {MAX_IMAGES_PER_REQUEST + 1} images, more than the '
                                         rf'{MAX_IMAGES_PER_REQUEST} one request may hold'):
        handler({"inputs": too_many})
    assert len(handler({"inputs": [RED_PNG] * 2})) == 2


def test_the_handler_refuses_private_urls_bombs_and_eps(handler, base, bomb, network):
    for url in (base + "/ok.png", "http://169.254.169.254/latest/meta-data/iam/", "http://[::ffff:10.0.0.1]/x"):
        with pytest.raises(ValueError, match="loopback|link-local|private") as info:
            handler({"inputs": url})
        assert url[:30] in str(info.value)
    assert network["connections"] == []
    with pytest.raises(ValueError, match=r"Could not read the image bytes \(\d+ bytes\): 13000x13000 pixels"):
        handler({"inputs": bomb})
    with pytest.raises(ValueError, match=r"Could not read the base64 input .*13000x13000"):
        handler({"inputs": base64.b64encode(bomb).decode()})
    with pytest.raises(ValueError, match="none of the formats read"):
        handler({"inputs": EPS_BYTES})
    described = handler({"inputs": public(base, "/ok.png")})
    assert isinstance(described[0]["generated_text"], str)
    assert network["connections"] == [PUBLIC_ADDRESS]
    assert json.dumps(described)  # an endpoint's answer
