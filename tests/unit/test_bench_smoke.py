"""The benchmark's parsers read the real outputs of wrk, openssl speed, redis-benchmark and /metrics.

The benchmark itself is not run here (no timed assertions in CI); these samples were captured
from real runs of the tools on the project's Debian 12 machine.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "validate.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ostiary_bench_validate", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


bench = _load()

WRK_CLEAN = """\
Running 1s test @ http://127.0.0.1:56319/v1/validate
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   241.40us  789.32us  10.45ms   94.54%
    Req/Sec    35.83k    11.07k   58.95k    80.00%
  Latency Distribution
     50%   74.00us
     75%   90.00us
     90%  154.00us
     99%    4.49ms
  35539 requests in 1.00s, 5.08MB read
Requests/sec:  35390.29
Transfer/sec:      5.06MB
"""

WRK_REFUSED = """\
Running 2s test @ http://127.0.0.1:37227/v1/validate
  1 threads and 200 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    29.82ms   46.47ms 715.33ms   97.78%
    Req/Sec     8.22k   455.67     8.89k    65.00%
  Latency Distribution
     50%   23.40ms
     75%   24.01ms
     90%   25.64ms
     99%  294.73ms
  16372 requests in 2.01s, 2.33MB read
  Non-2xx or 3xx responses: 16372
Requests/sec:   8154.60
Transfer/sec:      1.16MB
"""

OPENSSL_PK = """\
+F2:2:2048:849.000000:31931.000000
+F4:3:256:33438.383838:11435.000000
+F6:0:253:Ed25519:18404.000000:6954.000000
"""

OPENSSL_HMAC = """\
+H:512
+F:9:hmac(sha256):808810264.15
"""

REDIS_CSV = """\
"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"GET ost:bench:__rand_int__","13462.57","2.462","0.184","1.231","7.983","12.407","20.015"
"""

METRICS = """\
# HELP ostiary_store_seconds Store round trips by store and operation
# TYPE ostiary_store_seconds histogram
ostiary_store_seconds_bucket{le="0.0001",op="mget",store="revocations"} 0.0
ostiary_store_seconds_bucket{le="0.00025",op="mget",store="revocations"} 40.0
ostiary_store_seconds_bucket{le="0.0005",op="mget",store="revocations"} 90.0
ostiary_store_seconds_bucket{le="0.001",op="mget",store="revocations"} 98.0
ostiary_store_seconds_bucket{le="0.002",op="mget",store="revocations"} 100.0
ostiary_store_seconds_bucket{le="+Inf",op="mget",store="revocations"} 100.0
ostiary_store_seconds_count{op="mget",store="revocations"} 100.0
ostiary_store_seconds_sum{op="mget",store="revocations"} 0.04
# HELP ostiary_validations Validations by result and fault code
# TYPE ostiary_validations counter
ostiary_validations_total{fault="MALFORMED",result="refused"} 7.0
ostiary_validations_total{fault="",result="ok"} 93.0
"""


def test_wrk_report_clean() -> None:
    r = bench.parse_wrk(WRK_CLEAN)
    assert (r.requests, r.rps, r.non_2xx, r.socket_errors) == (35539, 35390.29, 0, 0)
    assert r.seconds == pytest.approx(1.0)
    assert r.p50_ms == pytest.approx(0.074)
    assert r.p90_ms == pytest.approx(0.154)
    assert r.p99_ms == pytest.approx(4.49)


def test_wrk_report_counts_refusals() -> None:
    r = bench.parse_wrk(WRK_REFUSED)
    assert r.non_2xx == 16372
    assert r.p99_ms == pytest.approx(294.73)


def test_wrk_socket_errors_are_summed() -> None:
    text = WRK_CLEAN.replace("Requests/sec:", "  Socket errors: connect 1, read 2, write 0, timeout 4\nRequests/sec:")
    assert bench.parse_wrk(text).socket_errors == 7


def test_wrk_without_latency_distribution_is_refused() -> None:
    text = "\n".join(line for line in WRK_CLEAN.splitlines() if "%   " not in line)
    with pytest.raises(bench.BenchError):
        bench.parse_wrk(text)
    with pytest.raises(bench.BenchError):
        bench.parse_wrk("Usage: wrk <options> <url>")


def test_openssl_speed_machine_readable() -> None:
    limits = {**bench.parse_openssl_speed(OPENSSL_PK), **bench.parse_openssl_speed(OPENSSL_HMAC)}
    assert limits["ecdsa256_verify"] == 11435.0
    assert limits["rsa2048_verify"] == 31931.0
    assert limits["ed25519_verify"] == 6954.0
    assert limits["hmac(sha256)@512"] == pytest.approx(808810264.15 / 512)
    assert bench.verify_rate(limits, "ES256") == 11435.0
    assert bench.verify_rate(limits, "HS256") == pytest.approx(1_579_707, rel=1e-3)
    with pytest.raises(bench.BenchError):
        bench.parse_openssl_speed("openssl: unknown option")


def test_redis_benchmark_csv() -> None:
    rows = bench.parse_redis_benchmark_csv("WARNING: Could not fetch server CONFIG\n" + REDIS_CSV)
    row = rows["GET ost:bench:__rand_int__"]
    assert row["rps"] == 13462.57
    assert row["p99_latency_ms"] == 12.407
    with pytest.raises(bench.BenchError):
        bench.parse_redis_benchmark_csv("Could not connect to Redis")


def test_histogram_quantile_from_metrics_delta() -> None:
    after = bench.parse_prometheus(METRICS)
    before = {key: 0.0 for key in after}
    window = bench.delta(after, before)
    # 99th of 100 observations lies in the (1 ms, 2 ms] bucket, halfway: 98 below, 100 at its top.
    assert bench.histogram_quantile(window, "ostiary_store_seconds", 0.99) == pytest.approx(1.5)
    # The median: rank 50 is the 10th of the 50 observations in (0.25 ms, 0.5 ms], a fifth of the way.
    assert bench.histogram_quantile(window, "ostiary_store_seconds", 0.5) == pytest.approx(0.30)
    assert bench.histogram_quantile(window, "ostiary_store_seconds", 0.99, store="sessions") is None
    assert bench.counter_sum(window, "ostiary_validations_total", result="ok") == 93.0
    assert bench.counter_sum(window, "ostiary_validations_total") == 100.0
    # An unchanged histogram (empty window) has no quantile.
    assert bench.histogram_quantile(bench.delta(after, after), "ostiary_store_seconds", 0.99) is None


def test_results_section_is_replaced_and_text_around_it_kept(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\nintro\n{bench.BEGIN}\nold numbers\n{bench.END}\n## Analysis\nkept\n")
    report = bench.Report(started_utc="2026-01-01 00:00 UTC", machine={"nproc": 2, "cpu_model": "x",
                          "mem_gib": 1.0, "debian": "12", "kernel": "6"})  # fmt: skip
    report.settings = {"threads": 2, "connections": 64, "duration_s": 10, "warmup_s": 2, "tokens": 100,
                       "workers": 2}  # fmt: skip
    report.nginx = {"rps": 1000.0, "p50_ms": 1.0, "p99_ms": 2.0}
    bench.write_doc(report, doc)
    text = doc.read_text()
    assert "old numbers" not in text
    assert text.startswith("# B\nintro\n") and text.endswith("## Analysis\nkept\n")
    assert "1,000/s, P50 1.00 ms, P99 2.00 ms" in text
    doc.write_text("no markers")
    with pytest.raises(bench.BenchError):
        bench.write_doc(report, doc)
