"""The transparent mode's rules, its command line, and that what does not
match stays on the kernel unchanged (no device needed)."""
import asyncio
import http.server
import socket
import threading
import urllib.request

import pytest

import rdmamsg
from rdmamsg.channel.tcp import KernelSocket
from rdmamsg.run import _split
from rdmamsg.transparent import Matcher, Rule, TransparentSocket


def test_rules_parse_hosts_networks_and_ports():
    assert Rule.parse("10.0.0.0/24").matches("10.0.0.7", 1)
    assert not Rule.parse("10.0.0.0/24").matches("10.0.1.7", 1)
    r = Rule.parse("10.0.0.1:80")
    assert r.matches("10.0.0.1", 80) and not r.matches("10.0.0.1", 81)
    assert not r.matches("10.0.0.2", 80)
    assert Rule.parse("*:80").matches("192.0.2.1", 80)
    assert Rule.parse("localhost").matches("127.0.0.1", 5)
    assert str(Rule.parse("10.0.0.0/24:7")) == "10.0.0.0/24:7"


@pytest.mark.parametrize("bad", ["*", "10.0.0.1:0", "10.0.0.1:x", "fe80::1", "no-such-host.invalid"])
def test_bad_rules_say_what_is_wrong(bad):
    with pytest.raises(ValueError, match="match rule"):
        Rule.parse(bad)


def test_listening_matches_the_bound_address_or_a_wildcard_by_port():
    m = Matcher.parse(["10.0.0.0/24", "*:9000"])
    assert m.listens("10.0.0.1", 5) and m.listens("0.0.0.0", 9000) and m.listens("", 5)
    assert m.listens("10.0.0.1", 0)          # an ephemeral port
    assert not m.listens("127.0.0.1", 5) and not m.listens("127.0.0.1", 9001)
    assert m.connects("127.0.0.1", 9000) and not m.connects("127.0.0.1", 9001)
    assert not m.connects("not-an-ip", 9001)


def test_run_keeps_the_programs_own_options():
    assert _split(["--match", "10.0.0.1", "-v", "-m", "http.server", "--bind", "x", "8000"]) == (
        ["--match", "10.0.0.1", "-v"], "http.server", ["--bind", "x", "8000"])
    assert _split(["-mjson.tool", "-h"]) == ([], "json.tool", ["-h"])
    assert _split(["--channel", "write", "s.py", "-v"]) == (["--channel", "write"], None, ["s.py", "-v"])
    assert _split(["-v"]) == (["-v"], None, [])


@pytest.fixture
def patched():
    p = rdmamsg.patch(match=["10.99.0.0/24"])
    try:
        yield p
    finally:
        p.undo()
    assert socket.socket is KernelSocket


def test_patch_installs_and_undoes(patched):
    assert socket.socket is TransparentSocket
    s = socket.socket()
    assert isinstance(s, KernelSocket) and s.rdma is None
    s.close()


def test_what_does_not_match_stays_on_tcp_http(patched, tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 300_000)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet) as srv:
        assert srv.socket.rdma is None
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{srv.server_address[1]}/f"
        assert urllib.request.urlopen(url, timeout=10).read() == b"x" * 300_000
        srv.shutdown()


def test_what_does_not_match_stays_on_tcp_asyncio(patched):
    async def main():
        async def echo(r, w):
            w.write(await r.readline())
            await w.drain()
            w.close()

        srv = await asyncio.start_server(echo, "127.0.0.1", 0)
        assert isinstance(srv, asyncio.base_events.Server)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"hi\n")
        assert await r.readline() == b"hi\n"
        w.close()
        srv.close()

    asyncio.run(main())
