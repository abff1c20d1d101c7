"""Tests of sdxl_dist_log.faults: the ``on_logging_fault`` policy, how a failed wait is classified, the messages."""

from __future__ import annotations

import logging

import pytest

from sdxl_dist_log.errors import (
    CollectiveError,
    CollectiveTimeoutError,
    ImageInputError,
    MetricKeyMismatchError,
    MetricValueError,
    RanksOutOfStepError,
)
from sdxl_dist_log.faults import FaultPolicy, Notices, collective_failure, fault_advice, peer_lost, waiting_message


# -- collective_failure: a dead peer is a timeout's kind ------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "kind", "words"),
    [
        ("Wait timeout after 3000 ms: timed out", CollectiveTimeoutError, "timed out after 3 s"),
        ("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500", CollectiveTimeoutError,
         "a peer's connection closed"),
        ("[gloo/transport/tcp/pair.cc:590] Read error [127.0.0.1]:1234: Connection reset by peer",
         CollectiveTimeoutError, "a peer's connection closed"),
        ("write: Broken pipe", CollectiveTimeoutError, "its process died or was killed"),
        ("some other gloo failure", CollectiveError, "failed (some other gloo failure)"),
    ],
)
def test_collective_failure_gives_the_documented_type(text: str, kind: type, words: str) -> None:
    got, what = collective_failure(text, 3.0)
    assert got is kind and words in what


def test_peer_lost_reads_gloo_s_words_case_blind() -> None:
    assert peer_lost("CONNECTION CLOSED BY PEER")
    assert not peer_lost("timed out")


# -- messages -------------------------------------------------------------------------------------------------------
def test_waiting_message_names_the_call_the_ranks_and_the_likely_cause() -> None:
    text = waiting_message("log_images at step 0", 0, [1, 3], 5.2, 300.0)
    assert text.startswith("log_images at step 0 on rank 0: waiting 5 s for ranks [1, 3]")
    assert "gives up after 300 s" in text
    assert "is_main_process" in text and "wb.main_process" in text


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (CollectiveTimeoutError("ranks [1] did not reach it"), "wb.main_process"),
        (CollectiveTimeoutError("failed: a peer's connection closed (Connection closed by peer)"),
         "died or was killed"),
        (RanksOutOfStepError("x"), "same step="),
        (MetricValueError("ranks [1] passed invalid metric values"), "fix the value there"),
        (ImageInputError("ranks [2] passed invalid images"), "fix the value there"),
    ],
)
def test_fault_advice_fits_the_fault(error: Exception, words: str) -> None:
    assert words in fault_advice(error)


# -- FaultPolicy ----------------------------------------------------------------------------------------------------
def _failing(error: Exception):
    def job() -> None:
        raise error

    return job


def test_continue_logs_one_error_per_kind_naming_ranks_and_fix_and_returns_the_fallback() -> None:
    reports: list[str] = []
    policy = FaultPolicy("continue", reports.append)
    timeout = CollectiveTimeoutError("log_metrics at step 3 on rank 0: ... ranks [1] did not reach it.", ranks=[1])
    assert policy.run(_failing(timeout), "fallback") == "fallback"
    assert policy.run(_failing(timeout), 0) == 0  # the same kind again: counted, not repeated
    assert policy.run(_failing(MetricValueError("ranks [2] passed invalid metric values")), None) is None
    assert len(reports) == 2
    assert reports[0].startswith("CollectiveTimeoutError: log_metrics at step 3") and "ranks [1]" in reports[0]
    assert "Fix: " in reports[0] and "on_logging_fault='raise'" in reports[0]
    assert "ranks [2]" in reports[1]
    assert policy.counts == {"CollectiveTimeoutError": 2, "MetricValueError": 1}


def test_raise_raises_the_fault() -> None:
    policy = FaultPolicy("raise", pytest.fail)
    with pytest.raises(RanksOutOfStepError):
        policy.run(_failing(RanksOutOfStepError("x")), None)
    with pytest.raises(MetricValueError):
        policy.run(_failing(MetricValueError("ranks [1] passed invalid metric values")), None)


def test_the_other_ranks_view_of_this_rank_s_own_error_is_never_raised_over_it() -> None:
    """The caller raises this rank's own input error; the collective's view of it (naming this rank) is swallowed,
    and a collective failure in the same call is reported instead of raised, under either policy."""
    own = MetricValueError("metric 'loss' has a value of type str")
    for mode in ("continue", "raise"):
        reports: list[str] = []
        policy = FaultPolicy(mode, reports.append)
        assert policy.run(_failing(MetricValueError("ranks [1] passed invalid metric values")), None, own) is None
        assert reports == []
        assert policy.run(_failing(CollectiveTimeoutError("ranks [0] did not reach it")), None, own) is None
        assert len(reports) == 1


@pytest.mark.parametrize("mode", ["continue", "raise"])
def test_errors_that_are_not_faults_always_raise(mode: str) -> None:
    policy = FaultPolicy(mode, pytest.fail)
    with pytest.raises(MetricKeyMismatchError):  # strict_keys: the user asked for it
        policy.run(_failing(MetricKeyMismatchError("keys differ")), None)
    with pytest.raises(ZeroDivisionError):  # a defect, not a fault of the logging link
        policy.run(lambda: 1 / 0, None)


def test_a_good_job_s_value_passes_through() -> None:
    assert FaultPolicy("continue", pytest.fail).run(lambda: {"loss": 1.0}, None) == {"loss": 1.0}


# -- Notices --------------------------------------------------------------------------------------------------------
def test_notices_scrub_secrets_and_give_keyed_warnings_once(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test_faults.notices")
    notices = Notices(log)
    with caplog.at_level(logging.INFO, logger=log.name):
        notices.warn("fell back: postgres://u:hunter2@db/x", once_key="k")
        notices.warn("again", once_key="k")
        notices.info("token=abc123")
        notices.error("Authorization: Bearer abcdefgh12345678")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and "again" not in messages
    assert not any(s in m for m in messages for s in ("hunter2", "abc123", "abcdefgh12345678"))
