import pytest
from pydantic import ValidationError

from asgi_sidecar.settings import SidecarSettings


def test_defaults_are_safe_for_balancers_and_mobile_clients():
    settings = SidecarSettings()
    # Above a 60 s balancer idle timeout, and uvicorn's 5 s is far below it.
    assert settings.timeout_keep_alive > 60
    assert settings.limit_concurrency == 100
    assert settings.backlog == 2048
    # Pooled upstream connections close before uvicorn's own 5 s keep-alive does.
    assert settings.upstream_keep_alive < 5


def test_camel_case_and_snake_case_are_both_accepted():
    a = SidecarSettings.model_validate({"timeoutKeepAlive": 90, "limitConcurrency": 7})
    b = SidecarSettings.model_validate({"timeout_keep_alive": 90, "limit_concurrency": 7})
    assert a == b
    assert a.model_dump(by_alias=True)["timeoutKeepAlive"] == 90


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"timeoutKeepAlive": 0}, "timeoutKeepAlive"),
        ({"limitConcurrency": 0}, "limitConcurrency"),
        ({"backlog": -1}, "backlog"),
        ({"upstream": "https://example"}, "upstream"),
        ({"upstream": "http://127.0.0.1:8000/api"}, "upstream"),
        ({"upstream": "http://127.0.0.1:99999"}, "upstream"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_invalid_values_name_the_field(values, field):
    with pytest.raises(ValidationError) as info:
        SidecarSettings.model_validate(values)
    assert field in str(info.value)


def test_ports_must_differ():
    with pytest.raises(ValidationError, match="port and metrics_port must differ"):
        SidecarSettings(port=9000, metrics_port=9000)


def test_every_field_has_a_description():
    for name, field in SidecarSettings.model_fields.items():
        assert field.description, name
        assert len(field.description) > 20, name
