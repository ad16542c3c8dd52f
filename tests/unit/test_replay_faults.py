"""Injected faults of the replay server over real HTTP (requests), and the SPEC language."""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime

import pytest
import requests

from functions.common.errors import ValidationError
from local_mode import faults
from local_mode.faults import CATALOGUE, Fault, parse
from local_mode.replay_server import ReplayServer, Scripted

PER_PAGE = 100


@pytest.fixture
def server():
    with ReplayServer.synthetic(coins=300, seed=9) as srv:
        yield srv


def page(server: ReplayServer, number: int, timeout: float = 5) -> requests.Response:
    params = {"vs_currency": "usd", "page": number, "per_page": PER_PAGE}
    return requests.get(f"{server.base_url}/coins/markets", params=params, timeout=timeout)


def glob(server: ReplayServer, timeout: float = 5) -> requests.Response:
    return requests.get(f"{server.base_url}/global", timeout=timeout)


@pytest.fixture
def clean(server) -> dict[int, list[dict]]:
    """The unfaulted pages 1-3 (fetched before any fault is injected)."""
    pages = {n: page(server, n).json() for n in (1, 2, 3)}
    server.clear_requests()
    return pages


# -- error faults: status, headers, body ------------------------------------------------------


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_a_status_burst_answers_n_times_then_the_source(server, clean, code):
    server.inject(f"markets:page=2:{code}x2")
    for _ in range(2):
        resp = page(server, 2)
        assert resp.status_code == code
        assert resp.json()["status"]["error_code"] == code
    assert page(server, 2).json() == clean[2]
    assert page(server, 1).json() == clean[1]  # other pages untouched
    assert [r.status for r in server.requests_to("/coins/markets")] == [code, code, 200, 200]
    assert server.requests[0].fault == f"markets:page=2:{code}:x2"
    assert server.faults_fired() == {f"markets:page=2:{code}:x2": 2}
    assert server.pending_faults() == 0


@pytest.mark.parametrize(
    ("option", "header"),
    [("", None), (":retry-after=0", "0"), (":retry-after=7", "7"), (":retry-after=none", None)],
)
def test_429_retry_after_in_seconds_zero_or_absent(server, option, header):
    server.inject(f"global:429{option}")
    resp = glob(server)
    assert resp.status_code == 429
    assert resp.headers.get("Retry-After") == header
    assert resp.json()["status"]["error_code"] == 429
    assert glob(server).status_code == 200
    assert server.rate_limited == 0  # an injected 429 is not the rate limit's


def test_429_retry_after_as_an_http_date_a_second_ahead(server):
    server.inject(Fault("429", "global", retry_after="date"))
    before = time.time()
    resp = glob(server)
    when = parsedate_to_datetime(resp.headers["Retry-After"]).timestamp()
    assert before - 1 <= when <= time.time() + 1


def test_html_page_with_status_200(server):
    server.inject("markets:page=2:html")
    resp = page(server, 2)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    assert b"Just a moment..." in resp.content and b"Cloudflare" in resp.content
    with pytest.raises(requests.JSONDecodeError):
        resp.json()


@pytest.mark.parametrize(("spec", "code"), [("error-object", 429), ("error-object=500", 500)])
def test_error_object_with_status_200(server, spec, code):
    server.inject(f"global:{spec}")
    resp = glob(server)
    assert resp.status_code == 200
    assert resp.json()["status"]["error_code"] == code
    assert resp.json()["status"]["error_message"]


# -- transport faults -----------------------------------------------------------------------


def test_reset_before_the_answer_raises_connection_error(server, clean):
    server.inject("markets:page=3:reset")
    with pytest.raises(requests.ConnectionError, match="reset"):
        page(server, 3)
    assert server.requests[0].status is None
    assert page(server, 3).json() == clean[3]


def test_reset_mid_body_breaks_the_body(server):
    server.inject("markets:page=1:reset=mid-body")
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="reset"):
        page(server, 1)


def test_slow_answer_times_the_client_out_then_serves(server, clean):
    server.inject("markets:page=2:slow=2")
    with pytest.raises(requests.Timeout):
        page(server, 2, timeout=0.2)
    assert page(server, 2, timeout=0.2).json() == clean[2]  # once: the next one is at once


def test_trickle_sends_headers_at_once_then_the_body_byte_by_byte(server, clean):
    server.inject("markets:page=2:trickle=0.6:every=0.1")
    params = {"vs_currency": "usd", "page": 2, "per_page": PER_PAGE}
    url = f"{server.base_url}/coins/markets"
    with requests.get(url, params=params, timeout=2, stream=True) as resp:
        assert resp.status_code == 200  # the headers came before the trickle
        first = [resp.raw.read(1) for _ in range(6)]
        assert b"".join(first) == json.dumps(clean[2], separators=(",", ":")).encode()[:6]
        assert json.loads(b"".join(first) + resp.raw.read()) == clean[2]
    # a read timeout shorter than the gap between bytes fires; the whole body is not bounded
    server.inject("markets:page=2:trickle=2:every=1")
    with pytest.raises(requests.exceptions.ConnectionError, match="timed out"):
        page(server, 2, timeout=0.3)


def test_truncated_json_is_a_complete_http_message_with_half_the_body(server, clean):
    server.inject("markets:page=1:truncated")
    resp = page(server, 1)
    whole = json.dumps(clean[1], separators=(",", ":"), ensure_ascii=False).encode()
    assert resp.status_code == 200
    assert resp.content == whole[: len(whole) // 2]
    assert int(resp.headers["Content-Length"]) == len(resp.content)
    with pytest.raises(requests.JSONDecodeError):
        resp.json()


def test_gzip_corrupt_raises_content_decoding_error(server):
    server.inject("markets:page=1:gzip-corrupt")
    with pytest.raises(requests.exceptions.ContentDecodingError):
        page(server, 1)


# -- data-shape faults: the real pages, reshaped ---------------------------------------------


def test_empty_page_in_the_middle(server, clean):
    server.inject("markets:page=2:empty")
    assert page(server, 2).json() == []
    assert page(server, 2).json() == []  # always, by default
    assert page(server, 3).json() == clean[3]


def test_rank_shift_repeats_a_coin_and_pushes_another_onto_no_page(server, clean):
    server.inject("markets:page=2:rank-shift")
    shifted = page(server, 2).json()
    assert shifted == [clean[1][-1], *clean[2][:-1]]
    seen = [c["id"] for c in clean[1] + shifted + page(server, 3).json()]
    assert seen.count(clean[1][-1]["id"]) == 2
    assert clean[2][-1]["id"] not in seen
    assert len(seen) == 300  # same row count: one coin twice, one on none


def test_field_faults_apply_to_every_coin_of_every_page(server, clean):
    server.inject("markets:extra-field", "markets:missing", "markets:numbers-as-strings")
    for number in (1, 3):
        for got, want in zip(page(server, number).json(), clean[number], strict=True):
            assert got["unexpected_field"] == "injected"
            assert "max_supply" not in got
            for key, value in want.items():
                if key == "max_supply":
                    continue
                if isinstance(value, int | float) and not isinstance(value, bool):
                    assert got[key] == json.dumps(value)  # e.g. "123.4"
                    assert float(got[key]) == value
                elif key != "unexpected_field":
                    assert got[key] == value


def test_one_field_as_a_string_and_a_named_missing_field(server, clean):
    server.inject("markets:page=1:numbers-as-strings=current_price,markets:page=1:missing=ath")
    got = page(server, 1).json()[0]
    want = clean[1][0]
    assert got["current_price"] == json.dumps(want["current_price"])
    assert got["market_cap"] == want["market_cap"]
    assert "ath" not in got and "max_supply" in got


def test_global_shape_faults(server):
    want = glob(server).json()["data"]
    server.inject("global:missing,global:numbers-as-strings,global:extra-field=x")
    data = glob(server).json()["data"]
    assert "total_market_cap" not in data
    assert data["x"] == "injected"
    assert data["active_cryptocurrencies"] == str(want["active_cryptocurrencies"])
    assert data["total_volume"] == {k: json.dumps(v) for k, v in want["total_volume"].items()}
    server.clear_faults()
    server.inject("global:empty")
    assert glob(server).json() == {}


def test_directory_source_pages_are_reshaped_too(tmp_path):
    for n, ids in ((1, ["a", "b"]), (2, ["c", "d"])):
        rows = [{"id": i, "current_price": 1.5} for i in ids]
        (tmp_path / f"markets-page-000{n}.json").write_text(json.dumps(rows))
    with ReplayServer.from_directory(tmp_path) as srv:
        srv.inject("markets:page=2:rank-shift")
        assert [c["id"] for c in page(srv, 2).json()] == ["b", "c"]


# -- counts and precedence ---------------------------------------------------------------------


def test_counts_once_n_times_always_and_per_page(server):
    server.inject("markets:page=1:500", "markets:page=2-3:503x2", "global:502:always")
    statuses = [page(server, n).status_code for n in (1, 1, 2, 3, 2, 3, 2, 3)]
    assert statuses == [500, 200, 503, 503, 503, 503, 200, 200]
    assert [glob(server).status_code for _ in range(4)] == [502] * 4
    assert server.pending_faults() == 0  # "always" is never pending


def test_a_fault_without_page_counts_the_endpoints_requests(server):
    server.inject("markets:503x2")
    assert [page(server, n).status_code for n in (3, 1, 2)] == [503, 503, 200]


def test_scripts_come_before_faults_and_the_rate_limit_does_not_use_up_a_fault(server):
    server.script("/coins/markets", Scripted.error(418))
    server.inject("markets:page=1:gzip-corrupt")
    assert page(server, 1).status_code == 418
    server.rate_limit(1, 60, mode="fixed")
    assert page(server, 2).status_code == 200  # the window's one request
    assert page(server, 1).status_code == 429  # refused before the fault could fire
    assert server.pending_faults() == 1
    server.rate_limit(None)
    with pytest.raises(requests.exceptions.ContentDecodingError):
        page(server, 1)


def test_first_error_fault_wins_and_shapes_still_apply(server, clean):
    server.inject("markets:page=1:slow=0.1", "markets:page=1:503", "markets:page=1:missing")
    resp = page(server, 1)  # slow fires first (listed first), then 503
    assert resp.status_code == 200 and "max_supply" not in resp.json()[0]
    assert page(server, 1).status_code == 503
    assert server.requests[0].fault == "markets:page=1:slow=0.1+markets:page=1:missing=max_supply"


# -- the SPEC language ------------------------------------------------------------------------

GOOD_SPECS = {
    "markets:page=2:503x3": Fault("503", "markets", pages=2, times=3),
    "global:429:retry-after=date": Fault("429", "global", retry_after="date"),
    "markets:page=3:reset": Fault("reset", pages=3),
    "markets:page=2:slow=40": Fault("slow", pages=2, seconds=40),
    "markets:page=2:trickle": Fault("trickle", pages=2, seconds=31, every=1),
    "markets:page=1:truncated": Fault("truncated", pages=1),
    "markets:page=1:gzip-corrupt": Fault("gzip-corrupt", pages=1),
    "markets:page=2:html": Fault("html", pages=2),
    "global:error-object=500": Fault("error-object", "global", code=500),
    "markets:page=3:empty": Fault("empty", pages=3),
    "markets:page=2:rank-shift": Fault("rank-shift", pages=2),
    "markets:extra-field": Fault("extra-field", name="unexpected_field"),
    "markets:missing=max_supply": Fault("missing", name="max_supply"),
    "markets:numbers-as-strings": Fault("numbers-as-strings"),
    "markets:page=2-4:reset=mid-body:always": Fault(
        "reset", pages=(2, 4), mid_body=True, times=None
    ),
    "markets:503:x3": Fault("503", times=3),
    "global:429:retry-after=0:once": Fault("429", "global", retry_after="0"),
}


@pytest.mark.parametrize("spec", GOOD_SPECS)
def test_good_specs_parse_and_round_trip(spec):
    (fault,) = parse(spec)
    assert fault == GOOD_SPECS[spec]
    assert parse(fault.spec) == [fault]


def test_a_list_of_clauses_and_defaults():
    got = parse(" markets:page=2:503x3 , global:html,markets:missing")
    assert [f.kind for f in got] == ["503", "html", "missing"]
    assert (got[1].times, got[2].times, got[2].name) == (1, None, "max_supply")
    assert parse("global:missing")[0].name == "total_market_cap"


@pytest.mark.parametrize(
    ("spec", "token"),
    [
        ("markets:503y3", "503y3"),
        ("coins:503", "coins"),
        ("markets:bogus", "bogus"),
        ("markets:page=0:503", "page=0"),
        ("markets:page=3-2:503", "page=3-2"),
        ("markets:page=two:503", "page=two"),
        ("markets:page=1:page=2:503", "page=2"),
        ("markets:503:html", "html"),
        ("markets:truncated=3", "truncated=3"),
        ("markets:slow=-1", "slow=-1"),
        ("markets:slow=1e10", "slow=1e10"),  # an hour at most: time_t would overflow
        ("markets:slow=nan", "slow=nan"),
        ("markets:503x0", "503x0"),
        ("markets:503:x0", "x0"),
        ("markets:503x2:once", "once"),
        ("markets:429:retry-after=soon", "retry-after=soon"),
        ("markets:reset=later", "reset=later"),
        ("markets:error-object=abc", "error-object=abc"),
        ("markets:trickle:every=-1", "every=-1"),
        ("markets::503", "''"),
        ("markets", "markets"),
        ("markets:x2", "markets:x2"),
    ],
)
def test_bad_tokens_are_refused_naming_them(spec, token):
    with pytest.raises(ValidationError) as err:
        parse(spec, field="--faults")
    message = str(err.value)
    assert message.startswith("invalid --faults: ")
    assert token in message
    assert "\n" not in message


def test_unknown_names_list_the_valid_faults():
    with pytest.raises(ValidationError, match="faults: 429, 500, 502, 503, 504, slow") as err:
        parse("markets:page=2:teapot")
    assert all(name in str(err.value) for name in CATALOGUE)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("", "is empty"),
        ("markets:503,", "empty clause"),
        ("global:page=2:503", "markets only"),
        ("global:rank-shift", "markets pages only"),
        ("markets:page=1:rank-shift", "previous page"),
        ("markets:html:retry-after=5", "retry-after applies to 429"),
        ("markets:html:every=1", "every does not apply"),
        ("markets:trickle:every=0", "more than 0"),
    ],
)
def test_combinations_that_make_no_sense_are_refused(spec, why):
    with pytest.raises(ValidationError, match=why):
        parse(spec)


def test_the_python_api_validates_too():
    with pytest.raises(ValidationError, match="unknown fault"):
        Fault("418")
    with pytest.raises(ValidationError, match="times"):
        Fault("503", times=0)
    assert faults.with_times(Fault("503"), None).times is None


def test_catalogue_describes_every_fault_and_its_outcomes():
    rows = faults.describe()
    assert [r["fault"] for r in rows] == list(CATALOGUE)
    for row in rows:
        assert row["description"] and row["markets"]
    assert CATALOGUE["rank-shift"].global_outcome is None  # markets only
    assert set(CATALOGUE) >= {"429", "500", "502", "503", "504", "slow", "trickle", "reset"}
