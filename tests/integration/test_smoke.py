import httpx

from tests.support.processes import sidecar


def test_proxies_a_request_and_counts_it(upstream_port, tmp_path):
    with sidecar(upstream_port, tmp_path=tmp_path) as sc:
        response = httpx.get(sc.url + "/echo")
        assert response.status_code == 200
        assert response.json() == {"size": 0, "start": ""}
        assert response.headers["connection"] == "keep-alive"
        assert sc.metric("asgi_requests_total", 'code="200"') == 1
