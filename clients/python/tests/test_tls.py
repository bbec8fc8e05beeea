"""HTTPS and WSS through a TLS-terminating proxy whose certificate a private
CA signed: ``verify=`` with the CA's path or an SSLContext is trusted, the
system roots are not."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

import jobwire
from harness import Proxy, Server, make_ca


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    return make_ca(str(tmp_path_factory.mktemp("ca")))


@pytest.fixture
def tls_proxy(server: Server, ca: Dict[str, str]) -> Iterator[Proxy]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca["cert"], ca["key"])
    proxy = Proxy(server.port, tls=context)
    yield proxy
    proxy.close()


def test_https_and_wss_with_a_private_ca(tls_proxy: Proxy, ca: Dict[str, str], tok: str) -> None:
    assert tls_proxy.url.startswith("https://")
    with jobwire.Client(tls_proxy.url, token=tok, verify=ca["ca"]) as c:
        job = c.create_external_job("py.tls")
        assert c.get_job(job["id"])["id"] == job["id"]
        with c.external_job("py.tls_report") as reporter:
            reporter.progress(1, 1)
        items: List[jobwire.WatchItem] = list(c.watch(reporter.id))
    states = [i for i in items if isinstance(i, jobwire.State)]
    assert states and states[0].job["status"] == "completed"


async def test_async_https_and_wss_with_an_ssl_context(
    tls_proxy: Proxy, ca: Dict[str, str], tok: str
) -> None:
    context = ssl.create_default_context(cafile=ca["ca"])
    async with jobwire.AsyncClient(tls_proxy.url, token=tok, verify=context) as c:
        job = await c.create_external_job("py.tls_async")
        await c.cancel(job["id"])
        async with c.watch(job["id"]) as w:
            items = [i async for i in w]
    assert any(isinstance(i, jobwire.State) and i.job["status"] == "cancelled" for i in items)


def test_the_system_roots_refuse_a_private_ca(tls_proxy: Proxy, tok: str) -> None:
    with jobwire.Client(tls_proxy.url, token=tok) as c:
        with pytest.raises(jobwire.Unreachable) as e:
            c.get_job("x")
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value) or "certificate" in str(e.value).lower()


def test_a_ca_directory_is_accepted(tmp_path: Path, ca: Dict[str, str]) -> None:
    # capath needs hashed names; an empty directory is still a valid setting.
    jobwire.Client("https://127.0.0.1:1", token="t", verify=str(tmp_path)).close()
