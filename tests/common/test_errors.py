"""Service errors cross process boundaries intact (the llm service's llama.cpp child sends them to its parent)."""

from __future__ import annotations

import pickle

from services.common.errors import BusyError, InvalidRequestError, UpstreamFailedError


def test_a_pickled_error_keeps_its_param_headers_and_instance_overrides():
    err = InvalidRequestError("max_tokens is 900; ask for 1..512", param="max_tokens", headers={"X-A": "1"})
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is InvalidRequestError and str(back) == err.message == back.message
    assert back.param == "max_tokens" and back.headers == {"X-A": "1"} and back.http_status == 422

    busy = pickle.loads(pickle.dumps(BusyError(retry_after_s=3)))
    assert busy.headers["Retry-After"] == "3" and busy.retryable and busy.body()["error"]["code"] == "busy"

    up = pickle.loads(pickle.dumps(UpstreamFailedError("llm said 503", retryable=True, upstream_status=503)))
    assert up.retryable is True and up.upstream_status == 503  # the instance override survives
