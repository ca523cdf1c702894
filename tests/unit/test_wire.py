"""The wire's fast paths say and send exactly what http.client and urllib3 would."""

from __future__ import annotations

import http.client
import io
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

from cms_shipper._engine.deadline import _Pool
from cms_shipper._engine.wire import read_head

_LATIN1 = st.one_of(
    st.sampled_from(" \t\r:ab\x80\xe9"),  # what a parser may trip on, drawn often
    st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\n"),
)
_NAMES = st.one_of(
    st.sampled_from(["Content-Length", "Retry-After", "X-A", "Date", "Connection"]),
    st.text(_LATIN1, max_size=8),  # spaces, colons, controls, nothing at all
)
_PLAIN_LINES = st.builds(  # mostly lines the fast path takes, so that it is what runs
    lambda name, sep, value, end: f"{name}:{sep}{value}{end}",
    st.sampled_from(["Content-Length", "Retry-After", "X-A", "Date", "x", "X:Y"]),
    st.sampled_from(["", " ", "  ", "\t"]),
    st.text(st.sampled_from(" \tab:1\xe9"), max_size=6),
    st.sampled_from(["\r\n", "\n"]),
)
_ODD_LINES = st.one_of(
    st.builds(
        lambda name, sep, value, end: f"{name}:{sep}{value}{end}",
        _NAMES,
        st.sampled_from(["", " ", "\t"]),
        st.text(_LATIN1, max_size=12),
        st.sampled_from(["\r\n", "\n"]),
    ),
    st.builds(lambda text: f"{text}\r\n", st.text(_LATIN1, max_size=12)),  # folds, stray text
)
_LINES = st.one_of(_PLAIN_LINES, _PLAIN_LINES, _PLAIN_LINES, _ODD_LINES)


@settings(max_examples=400)
@given(
    st.lists(_LINES, max_size=8),
    st.sampled_from(["\r\n", "\n", ""]),
    st.binary(max_size=8),
)
def test_read_head_reads_what_http_client_reads(lines: list[str], end: str, rest: bytes) -> None:
    if end == "":
        rest = b""  # the head ended with the input: nothing follows
    data = "".join(lines).encode("iso-8859-1") + end.encode() + rest
    ours, theirs = io.BytesIO(data), io.BytesIO(data)
    try:
        expected = http.client.parse_headers(theirs)
    except http.client.HTTPException as exc:
        with pytest.raises(type(exc)):
            read_head(ours)
        return
    got = read_head(ours)
    assert isinstance(got, http.client.HTTPMessage)
    assert got.items() == expected.items()
    assert [type(d) for d in got.defects] == [type(d) for d in expected.defects]
    assert bool(got.get_payload()) == bool(expected.get_payload())
    assert got.get("content-length") == expected.get("content-length")
    assert ours.read() == theirs.read()  # the body starts where it did


def test_read_head_keeps_http_clients_limits() -> None:
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        read_head(io.BytesIO(b"X-A: 1\r\n" * 101 + b"\r\n"))
    with pytest.raises(http.client.LineTooLong):
        read_head(io.BytesIO(b"X-A: " + b"a" * 70_000 + b"\r\n\r\n"))


class _Recorder:
    """A raw keep-alive server that records each request's bytes and answers 200."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        with conn, reader:
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + reader.read(length))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Odd:  v \r\n\r\nok")


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    yield server
    server.sock.close()


class _Stock(HTTPConnectionPool):
    ConnectionCls = HTTPConnection


def test_kept_header_lines_send_the_same_bytes(recorder: _Recorder) -> None:
    headers = {"Content-Type": "application/json", "Authorization": "Bearer t", "X-E": "é"}
    bodies = [b'{"a":1}', b'{"a":22}', b'{"a":1}', b'{"a":333}']
    for pool_cls in (_Stock, _Pool):
        with pool_cls("127.0.0.1", recorder.port, maxsize=1) as pool:
            for body in bodies:
                reply = pool.urlopen("POST", "/track/lead", body=body, headers=headers)
                assert (reply.status, reply.data) == (200, b"ok")
                assert reply.headers["X-Odd"] == "v "  # as http.client reads it
    stock, ours = recorder.requests[:4], recorder.requests[4:]
    assert ours == stock
    with _Pool("127.0.0.1", recorder.port, maxsize=1) as pool:
        pool.urlopen("POST", "/", body=b"{}", headers={"X-A": "1"})
        for _ in range(2):  # refused every time, not only before a line is kept
            with pytest.raises(ValueError, match="Invalid header value"):
                pool.urlopen("POST", "/", body=b"{}", headers={"X-A": "1\r\nX-B: 2"})
