"""``input_file`` for Chat backends: ``file_data`` (text and PDF) and ``file_url`` under
``file_url_allowed_hosts``, over the Ollama-protocol server and a file server on real sockets;
on the native path the parts go upstream untouched."""

from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conformance import Backend, assert_openai_error, file_data_url


def make_pdf(*pages: str) -> bytes:
    """A small, valid PDF with one line of Helvetica text per page."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        page_no, content_no = len(objects) + 1, len(objects) + 2
        kids.append(f"{page_no} 0 R")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_no} 0 R "
                       f"/Resources << /Font << /F1 {len(pages) * 2 + 3} 0 R >> >> >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


class FileServer:
    """Files on 127.0.0.1: ``/notes.txt``, ``/report.pdf``, ``/big.txt``, ``/moved`` (a redirect), else 404."""

    def __init__(self):
        files = {"/notes.txt": (b"remember the milk", "text/plain; charset=utf-8"),
                 "/report.pdf": (make_pdf("Quarterly revenue rose."), "application/pdf"),
                 "/big.txt": (b"x" * 5000, "text/plain")}
        self.hits: list[tuple[str, str]] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                hits.append((self.path, self.headers.get("Host")))
                if self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", "/notes.txt")
                    self.end_headers()
                    return
                body, kind = files.get(self.path, (None, None))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def files():
    with FileServer() as server:
        yield server


def file_message(part: dict, text: str = "What does the file say?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "input_text", "text": text}, {"type": "input_file", **part}]}]


def sent_text(ollama) -> str:
    content = ollama.requests[-1]["messages"][-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


@pytest.mark.parametrize("part, expected", [
    ({"filename": "notes.txt", "file_data": file_data_url("buy bread")}, "notes.txt:\nbuy bread"),
    ({"filename": "data.json", "file_data": file_data_url('{"a": 1}', "application/json")}, 'data.json:\n{"a": 1}'),
    ({"filename": "plan.md", "file_data": base64.b64encode(b"# Plan\nship it").decode()}, "plan.md:\n# Plan\nship it"),
    ({"filename": "report.pdf", "file_data": "data:application/pdf;base64,"
      + base64.b64encode(make_pdf("First page here.", "Second page here.")).decode()},
     "report.pdf:\nFirst page here.\n\nSecond page here."),
])
async def test_file_data_reaches_a_chat_model_as_text(gateway_factory, ollama, part, expected):
    async with gateway_factory(endpoints=[ollama.url]) as http:
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": file_message(part)})
        assert reply.status_code == 200, reply.text
        assert expected in sent_text(ollama)
        # the stored input keeps the file as it came
        items = (await http.get(f"/v1/responses/{reply.json()['id']}/input_items")).json()["data"]
        assert items[0]["content"][1] == {"type": "input_file", **part}


@pytest.mark.parametrize("part, code", [
    ({"filename": "photo.png", "file_data": "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()},
     "unsupported_file"),
    ({"filename": "blob", "file_data": base64.b64encode(b"\x00\x01").decode()}, "unsupported_file"),
    ({"filename": "bad.txt", "file_data": "data:text/plain;base64,@@@"}, None),
    ({"filename": "broken.pdf", "file_data": "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4 no").decode()},
     "unsupported_file"),
    ({"filename": "latin1.txt", "file_data": "data:text/plain;base64," + base64.b64encode("caf\xe9".encode("latin-1")).decode()},
     "unsupported_file"),
    ({"file_id": "file-abc"}, "unsupported_file"),
])
async def test_a_file_a_chat_model_cannot_take_is_a_400(gateway_factory, ollama, part, code):
    async with gateway_factory(endpoints=[ollama.url]) as http:
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": file_message(part)})
        error = assert_openai_error(reply, 400)
        assert error["param"].startswith("input") and (code is None or error["code"] == code)
        assert ollama.requests == []


async def test_file_url_is_fetched_only_from_allowed_hosts(gateway_factory, ollama, files):
    url = f"http://127.0.0.1:{files.port}/notes.txt"
    async with gateway_factory(endpoints=[ollama.url]) as http:  # default: no host
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": file_message({"file_url": url})})
        error = assert_openai_error(reply, 400)
        assert error["code"] == "file_url_not_allowed" and error["param"].endswith("file_url")
    async with gateway_factory(endpoints=[ollama.url], file_url_allowed_hosts=["localhost", "example.com"]) as http:
        # a name that resolves to loopback does not open loopback
        local = f"http://localhost:{files.port}/notes.txt"
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": file_message({"file_url": local})})
        assert assert_openai_error(reply, 400)["code"] == "file_url_not_allowed"
        reply = await http.post("/v1/responses", json={"model": "tiny", "input": file_message({"file_url": url})})
        assert assert_openai_error(reply, 400)["code"] == "file_url_not_allowed"
    assert files.hits == [] and ollama.requests == []


async def test_file_url_from_a_listed_address(gateway_factory, ollama, files):
    base = f"http://127.0.0.1:{files.port}"
    async with gateway_factory(endpoints=[ollama.url], file_url_allowed_hosts=["127.0.0.0/8"],
                               file_url_max_bytes=1000) as http:
        for path, expected in (("/notes.txt", "notes.txt:\nremember the milk"),
                               ("/report.pdf", "report.pdf:\nQuarterly revenue rose.")):
            reply = await http.post("/v1/responses", json={"model": "tiny",
                                                           "input": file_message({"file_url": base + path})})
            assert reply.status_code == 200, reply.text
            assert expected in sent_text(ollama)
        assert files.hits[0] == ("/notes.txt", f"127.0.0.1:{files.port}")
        for path in ("/big.txt", "/missing.txt", "/moved"):
            reply = await http.post("/v1/responses", json={"model": "tiny",
                                                           "input": file_message({"file_url": base + path})})
            assert assert_openai_error(reply, 400)["code"] == "file_url_fetch_failed", path
        for url in ("ftp://127.0.0.1/x", "file:///etc/passwd"):
            reply = await http.post("/v1/responses", json={"model": "tiny", "input": file_message({"file_url": url})})
            assert assert_openai_error(reply, 400)["code"] == "file_url_not_allowed"
        assert [hit[0] for hit in files.hits] == ["/notes.txt", "/report.pdf", "/big.txt", "/missing.txt", "/moved"]


async def test_the_native_path_sends_files_untouched(client, files):
    from tests.test_conformance_native import upstream_response, message
    part = {"type": "input_file", "file_url": f"http://127.0.0.1:{files.port}/notes.txt"}
    with Backend(upstream_response([message("Read it.")]), native=True) as backend:
        reply = await client.post("/v1/responses", json={"model": "gpt-x", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "read"}, part]}]})
    assert reply.status_code == 200, reply.text
    assert backend.native_params[0]["input"][0]["content"][1] == part
    assert files.hits == []
