"""The benchmarks' own correctness checks: they must hold whatever the load, and still catch a wrong answer."""

from bench.dns import rcode_mix_problem

FILE = ["NOERROR"] * 16 + ["NXDOMAIN"] * 4  # bench/dns.py's query file: 80% / 20%


def run(sent: int, lost: int, **rcodes: int) -> dict:
    return {"sent": sent, "lost": lost, "rcodes": rcodes}


def test_a_run_that_stops_inside_a_cycle_fits():
    # 80.01% / 19.99%: the run stopped after 13 queries of the last cycle (the failure seen on a fresh machine)
    assert rcode_mix_problem(run(200013, 0, NOERROR=160013, NXDOMAIN=40000), FILE) is None


def test_lost_queries_widen_the_slack_by_exactly_their_number():
    assert rcode_mix_problem(run(1000, 30, NOERROR=770, NXDOMAIN=200), FILE) is None
    assert rcode_mix_problem(run(1000, 0, NOERROR=770, NXDOMAIN=200), FILE) is not None


def test_a_wrong_rcode_or_a_shifted_mix_is_caught():
    assert "SERVFAIL" in rcode_mix_problem(run(1000, 0, NOERROR=800, NXDOMAIN=195, SERVFAIL=5), FILE)
    assert rcode_mix_problem(run(1000, 0, NOERROR=900, NXDOMAIN=100), FILE) is not None
