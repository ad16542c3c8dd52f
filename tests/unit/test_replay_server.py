"""The CoinGecko replay server (real HTTP on 127.0.0.1) and the synthetic market behind it."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import requests

from functions.common.errors import ValidationError
from local_mode import synthetic
from local_mode.replay_server import MarketSource, ReplayServer, Scripted, main

REPO_ROOT = Path(__file__).resolve().parents[2]
ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def get(server: ReplayServer, path: str, timeout: float = 5, **params) -> requests.Response:
    return requests.get(f"{server.base_url}{path}", params=params, timeout=timeout)


@pytest.fixture
def server():
    with ReplayServer.synthetic(coins=520, seed=9) as srv:
        yield srv


# -- synthetic source: CoinGecko's paging semantics ------------------------------------------


def test_base_url_is_loopback_api_v3(server):
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/v3", server.base_url)
    assert get(server, "/ping").json() == {"gecko_says": "(V3) To the Moon!"}


def test_pages_slice_the_market(server):
    market = synthetic.generate_markets(520, seed=9)
    page2 = get(server, "/coins/markets", vs_currency="usd", per_page=200, page=2)
    assert page2.status_code == 200
    assert page2.headers["Content-Type"].startswith("application/json")
    assert page2.json() == market[200:400]
    last = get(server, "/coins/markets", vs_currency="usd", per_page=200, page=3).json()
    assert last == market[400:]
    assert get(server, "/coins/markets", vs_currency="usd", per_page=200, page=4).json() == []
    assert get(server, "/coins/markets", vs_currency="usd", per_page=200, page=99).json() == []


def test_defaults_and_clamping(server):
    assert len(get(server, "/coins/markets", vs_currency="usd").json()) == 100
    assert len(get(server, "/coins/markets", vs_currency="usd", per_page=1000).json()) == 250
    assert len(get(server, "/coins/markets", vs_currency="usd", per_page=0).json()) == 1


def test_missing_vs_currency_is_422_like_coingecko(server, shared_coingecko_dir: Path):
    resp = get(server, "/coins/markets", per_page=10)
    assert resp.status_code == 422
    recorded = json.loads(
        (shared_coingecko_dir / "errors_julianfssen_coingecko_ruby_1.json").read_text()
    )
    assert resp.json() == recorded == {"error": "Missing parameter vs_currency"}


def test_other_currencies_are_quoted_consistently(server):
    usd = get(server, "/coins/markets", vs_currency="usd", per_page=5).json()
    eur = get(server, "/coins/markets", vs_currency="EUR", per_page=5).json()
    assert [c["id"] for c in usd] == [c["id"] for c in eur]
    assert eur[0]["market_cap"] == pytest.approx(usd[0]["market_cap"] * 0.91, rel=1e-6)
    assert get(server, "/coins/markets", vs_currency="xyz").status_code == 400


def test_ids_filter(server):
    market = synthetic.generate_markets(520, seed=9)
    wanted = [market[3]["id"], market[0]["id"]]
    got = get(server, "/coins/markets", vs_currency="usd", ids=",".join(wanted)).json()
    assert [c["id"] for c in got] == [market[0]["id"], market[3]["id"]]


def test_unknown_path_is_404(server):
    resp = get(server, "/coins/list/nope")
    assert resp.status_code == 404
    assert "Incorrect path" in resp.json()["error"]


def test_global_matches_the_market(server):
    body = get(server, "/global").json()
    market = synthetic.generate_markets(520, seed=9)
    assert body == synthetic.generate_global(market, seed=9)


def test_every_request_is_recorded(server):
    requests.get(
        f"{server.base_url}/coins/markets",
        params={"vs_currency": "usd", "page": 2, "per_page": 3},
        headers={"x-cg-demo-api-key": "k1"},
        timeout=5,
    )
    get(server, "/global")
    first, second = server.requests
    assert (first.endpoint, first.page, first.status) == ("/coins/markets", 2, 200)
    assert first.path == "/api/v3/coins/markets"
    assert first.query == {"vs_currency": "usd", "page": "2", "per_page": "3"}
    assert first.headers["x-cg-demo-api-key"] == "k1"
    assert (second.endpoint, second.page) == ("/global", None)
    assert server.requests_to("/global") == [second]


# -- fault injection ----------------------------------------------------------------------------


def test_scripted_responses_come_first_then_normal_serving(server):
    server.script("/coins/markets", Scripted.error(429, "slow down", retry_after=3), page=2)
    server.script("/coins/markets", Scripted.error(500, "boom"))
    r1 = get(server, "/coins/markets", vs_currency="usd", page=2)
    assert r1.status_code == 429  # the page-specific queue first
    assert r1.headers["Retry-After"] == "3"
    assert r1.json() == {"status": {"error_code": 429, "error_message": "slow down"}}
    r2 = get(server, "/coins/markets", vs_currency="usd", page=2)
    assert r2.status_code == 500  # then the endpoint-wide one
    r3 = get(server, "/coins/markets", vs_currency="usd", page=2)
    assert r3.status_code == 200 and len(r3.json()) == 100
    assert server.pending_scripts() == 0


def test_scripted_page_faults_do_not_touch_other_pages(server):
    server.script("/coins/markets", Scripted.error(503), page=3)
    assert get(server, "/coins/markets", vs_currency="usd", page=1).status_code == 200
    assert get(server, "/coins/markets", vs_currency="usd", page=3).status_code == 503


def test_scripted_raw_bodies_and_error_style(server):
    server.script("/global", Scripted(status=200, body=b"<html>oops"))
    server.script("/global", Scripted.error(404, "coin not found", style="error"))
    assert get(server, "/global").content == b"<html>oops"
    resp = get(server, "/global")
    assert (resp.status_code, resp.json()) == (404, {"error": "coin not found"})


def test_dropped_connection(server):
    server.script("/ping", Scripted.drop())
    with pytest.raises(requests.ConnectionError):
        get(server, "/ping")
    assert server.requests[0].status is None
    assert get(server, "/ping").status_code == 200


def test_slow_response_times_out_the_client(server):
    server.script("/ping", Scripted.slow(2.0))
    with pytest.raises(requests.Timeout):
        get(server, "/ping", timeout=0.2)


def test_scripted_headers_replace_the_defaults(server):
    server.script("/ping", Scripted(status=200, body=b"<html>hi</html>",
                                    headers={"Content-Type": "text/html"}))  # fmt: skip
    resp = get(server, "/ping")
    assert resp.headers["Content-Type"] == "text/html"  # once, not joined with the default
    assert resp.content == b"<html>hi</html>"


def test_scripted_content_length_cuts_the_body_off(server):
    server.script("/ping", Scripted(status=200, body=b'{"gecko', headers={"Content-Length": "500"}))
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        get(server, "/ping")
    assert get(server, "/ping").json() == {"gecko_says": "(V3) To the Moon!"}


def test_scripted_content_encoding_goes_out_as_given(server):
    server.script("/ping", Scripted(status=200, body=b"[]", headers={"Content-Encoding": "gzip"}))
    with pytest.raises(requests.exceptions.ContentDecodingError):
        get(server, "/ping")


class BrokenSource(MarketSource):
    kind = "broken"

    def markets(self, query, page, per_page):
        raise RuntimeError(f"no page {page} here")

    def global_data(self):
        raise KeyError("last_updated")


def test_an_exception_while_answering_is_a_500_not_a_dropped_connection():
    with ReplayServer(BrokenSource()) as srv:
        resp = get(srv, "/coins/markets", vs_currency="usd", page=2)
        assert resp.status_code == 500
        assert resp.json() == {"error": "replay server: RuntimeError: no page 2 here"}
        assert get(srv, "/global").status_code == 500
        assert get(srv, "/ping").status_code == 200  # still serving
        assert [r.status for r in srv.requests] == [500, 500, 200]


def test_rate_limit_with_retry_after():
    clock = [100.0]
    with ReplayServer.synthetic(coins=50, seed=1, clock=lambda: clock[0]) as srv:
        srv.rate_limit(2, window_seconds=10)
        assert get(srv, "/ping").status_code == 200
        clock[0] += 4
        assert get(srv, "/ping").status_code == 200
        limited = get(srv, "/ping")
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "6"
        assert limited.json()["status"]["error_code"] == 429
        clock[0] += 6
        assert get(srv, "/ping").status_code == 200
        srv.rate_limit(None)
        assert all(get(srv, "/ping").status_code == 200 for _ in range(5))


def test_fixed_window_opens_at_the_first_request_and_answers_until_it_ends():
    clock = [100.0]
    with ReplayServer.synthetic(coins=50, seed=1, clock=lambda: clock[0]) as srv:
        srv.rate_limit(2, window_seconds=10, mode="fixed")
        clock[0] += 3  # nothing counts before the first request
        assert get(srv, "/ping").status_code == 200  # opens [103, 113)
        clock[0] += 9
        assert get(srv, "/ping").status_code == 200
        limited = get(srv, "/ping")
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "1"  # until 113, not until a slot slides free
        assert limited.json() == {
            "status": {
                "error_code": 429,
                "error_message": limited.json()["status"]["error_message"],
            }
        }
        clock[0] += 0.5
        assert get(srv, "/ping").headers["Retry-After"] == "1"
        clock[0] += 0.5  # 113: a new window, with a full budget
        assert [get(srv, "/ping").status_code for _ in range(3)] == [200, 200, 429]
        assert srv.rate_limited == 3
        recorded = srv.requests
    assert [r.rate_limited for r in recorded] == [False, False, True, True, False, False, True]
    assert all(r.status == 429 for r in recorded if r.rate_limited)


def test_sliding_window_counts_differently_from_fixed():
    """Requests at 0 s and 5 s, then two at 10.5 s: the fixed window (0-10 s) has reset, the
    sliding one still holds the 5 s request."""
    for mode, expected in (("fixed", [200, 200, 200, 200]), ("sliding", [200, 200, 200, 429])):
        clock = [0.0]
        with ReplayServer.synthetic(coins=5, clock=lambda c=clock: c[0]) as srv:
            srv.rate_limit(2, window_seconds=10, mode=mode)
            statuses = [get(srv, "/ping").status_code]
            clock[0] = 5.0
            statuses.append(get(srv, "/ping").status_code)
            clock[0] = 10.5
            statuses += [get(srv, "/ping").status_code for _ in range(2)]
        assert statuses == expected, mode


def test_scripted_429s_are_not_counted_as_rate_limited(server):
    server.rate_limit(5, window_seconds=60, mode="fixed")
    server.script("/ping", Scripted.error(429, retry_after=1))
    assert get(server, "/ping").status_code == 429
    assert server.rate_limited == 0 and not server.requests[0].rate_limited


def test_an_unknown_rate_limit_mode_is_refused(server):
    with pytest.raises(ValueError, match="mode 'token'"):
        server.rate_limit(5, 60, mode="token")


def test_main_accepts_a_rate_limit_mode(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--coins", "5", "--rate-limit", "3/1", "--rate-limit-mode", "bucket"])
    assert info.value.code == 2
    assert "invalid choice: 'bucket'" in capsys.readouterr().err


def test_the_module_serves_a_fixed_window_rate_limit(tmp_path):
    """``python -m local_mode.replay_server --rate-limit 2/60 --rate-limit-mode fixed``."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "local_mode.replay_server", "--coins", "5"),
            *("--rate-limit", "2/60", "--rate-limit-mode", "fixed"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        base_url = re.search(r"at (http://\S+)", line).group(1)
        statuses = [requests.get(f"{base_url}/ping", timeout=5) for _ in range(3)]
        assert [r.status_code for r in statuses] == [200, 200, 429]
        assert 1 <= int(statuses[2].headers["Retry-After"]) <= 60
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_server_stops_when_the_block_ends():
    with ReplayServer.synthetic(coins=10) as srv:
        port = srv.port
        assert get(srv, "/ping").status_code == 200
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_port_is_only_known_while_running():
    srv = ReplayServer.synthetic(coins=10)
    with pytest.raises(RuntimeError):
        _ = srv.base_url


# -- recorded directory ------------------------------------------------------------------------


def test_directory_pages_are_served_byte_for_byte(tmp_path, shared_coingecko_dir):
    replay = tmp_path / "replay"
    replay.mkdir()
    for n in (1, 2):
        shutil.copy(
            shared_coingecko_dir / f"markets_khooihzhz_coingecko-python_2_page{n}.json",
            replay / f"markets-page-{n:04d}.json",
        )
    shutil.copy(
        shared_coingecko_dir / "global_khooihzhz_coingecko-python_1.json", replay / "global.json"
    )
    with ReplayServer.from_directory(replay) as srv:
        for n in (1, 2):
            # served at its page number whatever per_page asks
            resp = get(srv, "/coins/markets", vs_currency="usd", per_page=250, page=n)
            assert resp.status_code == 200
            assert resp.content == (replay / f"markets-page-{n:04d}.json").read_bytes()
        assert get(srv, "/coins/markets", vs_currency="usd", page=3).content == b"[]"
        assert get(srv, "/global").content == (replay / "global.json").read_bytes()
        assert get(srv, "/coins/markets", page=1).status_code == 422
        assert srv.requests[0].headers.get("x-replay-source") is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"status": {"error_code": 429, "error_message": "rate limited"}}, 429),
        ({"status": {"error_code": 500, "error_message": "Internal server error"}}, 500),
        ({"status": {"error_code": 10002, "error_message": "API Key Missing"}}, 401),
        ({"status": {"error_code": 10005, "error_message": "upgrade"}}, 403),
        ({"status": {"error_code": 7, "error_message": "weird"}}, 400),
        ({"error": "Missing parameter vs_currency"}, 422),
        ({"error": "coin not found"}, 404),
        ({"error": "something else"}, 400),
    ],
)
def test_directory_error_objects_are_served_with_their_status(tmp_path, body, status):
    (tmp_path / "markets-page-0001.json").write_text(json.dumps(body))
    with ReplayServer.from_directory(tmp_path) as srv:
        resp = get(srv, "/coins/markets", vs_currency="usd")
    assert resp.status_code == status
    assert resp.json() == body


def test_directory_broken_body_is_served_as_is(tmp_path):
    (tmp_path / "markets-page-0001.json").write_bytes(b'[{"id": "bitc')
    with ReplayServer.from_directory(tmp_path) as srv:
        resp = get(srv, "/coins/markets", vs_currency="usd")
    assert (resp.status_code, resp.content) == (200, b'[{"id": "bitc')


def test_directory_gaps_are_empty_pages(tmp_path):
    (tmp_path / "markets-page-0001.json").write_text('[{"id": "a"}]')
    (tmp_path / "markets-page-0003.json").write_text('[{"id": "c"}]')
    (tmp_path / "notes.txt").write_text("ignored")
    with ReplayServer.from_directory(tmp_path) as srv:
        pages = [get(srv, "/coins/markets", vs_currency="usd", page=n).json() for n in (1, 2, 3, 4)]
    assert pages == [[{"id": "a"}], [], [{"id": "c"}], []]


def test_directory_without_global_serves_a_body_without_totals(tmp_path, shared_coingecko_dir):
    shutil.copy(
        shared_coingecko_dir / "markets_madjin_daily-crypto_15.json",
        tmp_path / "markets-page-0001.json",
    )
    with ReplayServer.from_directory(tmp_path) as srv:
        resp = get(srv, "/global")
    assert resp.status_code == 200
    assert resp.headers["X-Replay-Synthesized"] == "global"
    data = resp.json()["data"]
    assert data["total_market_cap"] == data["total_volume"] == data["market_cap_percentage"] == {}
    assert data["active_cryptocurrencies"] == 100
    assert data["updated_at"] > 1_700_000_000


def test_directory_rows_without_last_updated_are_served_as_recorded(tmp_path):
    coins = synthetic.generate_markets(4, seed=2)
    del coins[1]["last_updated"]
    coins[2]["last_updated"] = None
    coins[3]["id"] = ["not", "a", "string"]
    page = json.dumps(coins).encode()
    (tmp_path / "markets-page-0001.json").write_bytes(page)
    with ReplayServer.from_directory(tmp_path) as srv:
        assert get(srv, "/coins/markets", vs_currency="usd").content == page
        resp = get(srv, "/global")
    assert resp.status_code == 200
    assert resp.headers["X-Replay-Synthesized"] == "global"
    data = resp.json()["data"]
    stamps = [c["last_updated"] for c in (coins[0], coins[3])]
    expected = max(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in stamps)
    assert data["updated_at"] == int(expected)
    assert data["active_cryptocurrencies"] == 3  # the ids that are strings


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        ReplayServer.from_directory(tmp_path / "nope")


def test_an_unreadable_page_file_is_an_error_not_a_silent_gap(tmp_path):
    (tmp_path / "markets-page-0001.json").write_text("[]")
    (tmp_path / "markets-page-0002.json").symlink_to(tmp_path / "gone.json")
    with pytest.raises(ValidationError, match=r"markets-page-0002\.json is a broken link"):
        ReplayServer.from_directory(tmp_path)
    (tmp_path / "markets-page-0002.json").unlink()
    (tmp_path / "markets-page-0002.json").mkdir()
    with pytest.raises(ValidationError, match="is not a regular file"):
        ReplayServer.from_directory(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_a_page_file_without_read_permission_is_an_error(tmp_path):
    page = tmp_path / "markets-page-0001.json"
    page.write_text("[]")
    page.chmod(0)
    with pytest.raises(ValidationError, match=r"cannot read .*Permission denied"):
        ReplayServer.from_directory(tmp_path)


def test_an_unreadable_global_json_is_an_error(tmp_path):
    (tmp_path / "markets-page-0001.json").write_text("[]")
    (tmp_path / "global.json").symlink_to(tmp_path / "gone.json")
    with pytest.raises(ValidationError, match=r"global\.json is a broken link"):
        ReplayServer.from_directory(tmp_path)


def test_two_files_for_one_page_are_an_error(tmp_path):
    (tmp_path / "markets-page-0001.json").write_text('[{"id": "a"}]')
    (tmp_path / "markets-page-1.json").write_text('[{"id": "b"}]')
    with pytest.raises(ValidationError, match="both page 1"):
        ReplayServer.from_directory(tmp_path)


def test_unserved_pages_name_the_recorded_pages_no_request_got(tmp_path):
    """A gap (pages 1 and 3): paging stops at the empty page 2 and never asks for page 3."""
    for n in (1, 3):
        (tmp_path / f"markets-page-{n:04d}.json").write_text(f'[{{"id": "c{n}"}}]')
    with ReplayServer.from_directory(tmp_path) as srv:
        assert srv.unserved_pages() == [1, 3]
        get(srv, "/coins/markets", vs_currency="usd", page=1)
        get(srv, "/coins/markets", vs_currency="usd", page=2)
        assert (srv.served_pages(), srv.unserved_pages()) == ([1, 2], [3])
        srv.script("/coins/markets", Scripted.error(500), page=3)
        get(srv, "/coins/markets", vs_currency="usd", page=3)  # a scripted reply is not page 3
        assert srv.unserved_pages() == [3]
        get(srv, "/coins/markets", vs_currency="usd", page=3)
        assert srv.unserved_pages() == []


def test_main_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["--coins", "5", "--replay", "x"])
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replay", "{missing}"], "invalid --replay: {missing} does not exist"),
        (["--replay", "{broken}"], "markets-page-0002.json is a broken link"),
        (["--rate-limit", "abc"], "argument --rate-limit: 'abc' is not N/SECONDS"),
        (["--rate-limit", "0/60"], "N must be at least 1"),
        (["--rate-limit", "5/0"], "SECONDS must be a number > 0"),
        (["--rate-limit", "5/-1"], "SECONDS must be a number > 0"),
        (["--port", "99999"], "argument --port: 99999 is not in 0-65535"),
        (["--port", "-1"], "argument --port: -1 is not in 0-65535"),
        (["--coins", "0"], "argument --coins: 0 is not in 1-100000"),
        (["--coins", "-5"], "argument --coins: -5 is not in 1-100000"),
        (["--coins", "many"], "argument --coins: 'many' is not an integer"),
        (["--faults", "markets:teapot"], "invalid --faults: 'teapot' in 'markets:teapot'"),
    ],
)
def test_main_refuses_bad_arguments_in_one_line(tmp_path, capsys, args, message):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "markets-page-0001.json").write_text("[]")
    (broken / "markets-page-0002.json").symlink_to(broken / "gone.json")
    paths = {"missing": tmp_path / "missing", "broken": broken}
    with pytest.raises(SystemExit) as info:
        main([a.format(**paths) for a in args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert message.format(**paths) in err


def test_main_refuses_a_port_in_use_in_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            main(["--coins", "5", "--port", str(port)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err


def test_the_module_prints_no_traceback_for_bad_arguments(tmp_path):
    """``python -m local_mode.replay_server`` as a user runs it."""
    for args in (["--replay", str(tmp_path / "nope")], ["--rate-limit", "0/60"]):
        proc = subprocess.run(
            [sys.executable, "-m", "local_mode.replay_server", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            check=False,
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert proc.stdout == ""


# -- the synthetic market ------------------------------------------------------------------------


def test_synthetic_market_is_deterministic():
    a = json.dumps(synthetic.generate_markets(300, seed=4)).encode()
    b = json.dumps(synthetic.generate_markets(300, seed=4)).encode()
    c = json.dumps(synthetic.generate_markets(300, seed=5)).encode()
    assert a == b != c
    market = synthetic.generate_markets(300, seed=4)
    assert synthetic.generate_global(market, seed=4) == synthetic.generate_global(market, seed=4)


def test_synthetic_market_shape():
    market = synthetic.generate_markets(1000, seed=42)
    assert len(market) == 1000
    assert all(tuple(c) == synthetic.FIELDS for c in market)
    assert len({c["id"] for c in market}) == 1000
    caps = [c["market_cap"] for c in market]
    assert caps == sorted(caps, reverse=True)
    ranked = [c for c in market if c["market_cap"] > 0]
    assert [c["market_cap_rank"] for c in ranked] == list(range(1, len(ranked) + 1))
    unranked = [c for c in market if c["market_cap"] == 0]
    assert unranked and all(c["market_cap_rank"] is None for c in unranked)
    # heavy tail: the top coin dwarfs the median by orders of magnitude
    assert caps[0] > 1000 * caps[len(ranked) // 2]
    assert sum(caps[:10]) > 0.6 * sum(caps)

    null_max = sum(c["max_supply"] is None for c in market) / len(market)
    assert null_max == pytest.approx(0.45, abs=0.01)
    assert 0 < sum(c["price_change_percentage_24h"] is None for c in market) < 100
    assert 0 < sum(c["high_24h"] is None for c in market) < 100

    by_symbol = collections.defaultdict(set)
    for c in market:
        by_symbol[c["symbol"]].add(c["id"])
    collisions = [ids for ids in by_symbol.values() if len(ids) > 1]
    assert 3 <= len(collisions) <= 30

    assert {type(c["market_cap"]) for c in market} == {int}
    assert {type(c["current_price"]) for c in market} == {int, float}
    assert {type(c["total_volume"]) for c in market} == {int, float}
    assert any("e-" in json.dumps(c["current_price"]) for c in market)  # exponent notation

    rois = [c["roi"] for c in market if c["roi"] is not None]
    assert 0.03 < len(rois) / len(market) < 0.2
    assert all(set(r) == {"times", "currency", "percentage"} for r in rois)
    for c in market:
        for key in ("ath_date", "atl_date", "last_updated"):
            assert ISO_RE.match(c[key]), (key, c[key])
        assert c["image"].startswith("https://coin-images.coingecko.com/coins/images/")
        assert c["ath"] >= c["current_price"] >= c["atl"] > 0
        if c["max_supply"] is not None and c["total_supply"] is not None:
            assert c["max_supply"] >= c["total_supply"] >= c["circulating_supply"]


def test_synthetic_fields_match_the_recorded_bodies(shared_coingecko_dir):
    recorded = json.loads(
        (shared_coingecko_dir / "markets_madjin_daily-crypto_15.json").read_text()
    )
    assert tuple(recorded[0]) == synthetic.FIELDS
    for path in sorted(shared_coingecko_dir.glob("markets_*.json")):
        body = json.loads(path.read_text())
        assert set(body[0]) == set(synthetic.FIELDS), path.name


@pytest.mark.parametrize("coins", [1, 10, 600])
def test_synthetic_global_exceeds_the_listed_coins(coins):
    market = synthetic.generate_markets(coins, seed=8)
    data = synthetic.generate_global(market, seed=8)["data"]
    for currency in ("usd", "eur", "btc"):
        quoted = synthetic.generate_markets(coins, seed=8, vs_currency=currency)
        assert data["total_market_cap"][currency] > sum(c["market_cap"] for c in quoted)
        assert data["total_volume"][currency] > sum(c["total_volume"] for c in quoted)
    pct = data["market_cap_percentage"]
    assert 0 < sum(pct.values()) < 100
    top = market[0]
    assert pct[top["symbol"]] == pytest.approx(
        top["market_cap"] / data["total_market_cap"]["usd"] * 100
    )


def test_synthetic_global_shape_matches_the_recorded_one(shared_coingecko_dir):
    recorded = json.loads((shared_coingecko_dir / "global_JKorf_CoinGecko.Net_2.json").read_text())
    ours = synthetic.generate_global(synthetic.generate_markets(50))
    assert set(ours["data"]) == set(recorded["data"])


def test_synthetic_rejects_unknown_currency():
    with pytest.raises(ValueError, match="vs_currency"):
        synthetic.generate_markets(5, vs_currency="doge")
