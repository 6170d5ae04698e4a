"""A failure nobody mapped is a bare 500 for the client and a traceback for the operator; a mapped one logs nothing."""

from __future__ import annotations

import logging

import pytest

from gateway.errors import InvalidRequestError, to_gateway_error


def test_an_unmapped_exception_is_a_bare_500_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    try:
        {}["missing"]  # raise a real exception with a traceback
    except KeyError as exc:
        with caplog.at_level(logging.ERROR, logger="gateway.errors"):
            error = to_gateway_error(exc)
    assert (error.status, error.code) == (500, "internal_error")
    assert error.message == "The gateway failed to handle the request."
    assert "missing" not in error.message
    [record] = caplog.records
    assert record.getMessage() == "unexpected KeyError while handling a request"
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_a_mapped_exception_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="gateway.errors"):
        error = to_gateway_error(InvalidRequestError("bad", param="model"))
    assert error.status == 400
    assert not caplog.records
