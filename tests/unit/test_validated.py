"""ValidSettings, what a serving process holds, mirrors the model field for field."""

import typing

import pytest

from asgi_sidecar import validated
from asgi_sidecar.settings import SidecarSettings
from asgi_sidecar.validated import ValidSettings


def test_its_attributes_are_the_models_fields_with_the_same_types():
    hints = typing.get_type_hints(ValidSettings, vars(validated))
    fields = {name: field.annotation for name, field in SidecarSettings.model_fields.items()}
    assert hints == fields


def test_it_holds_what_the_model_validated_and_dumps_it_back():
    model = SidecarSettings(limit_concurrency=None, timeout_keep_alive=90, upstream="http://a")
    settings = model.validated()
    assert settings.limit_concurrency is None
    assert settings.timeout_keep_alive == 90.0
    assert settings.dump() == model.model_dump()
    assert settings == SidecarSettings.model_validate(settings.dump()).validated()


def test_a_dump_with_missing_or_unknown_fields_is_refused():
    dump = SidecarSettings().model_dump()
    with pytest.raises(ValueError, match="missing \\['port'\\]"):
        ValidSettings({k: v for k, v in dump.items() if k != "port"})
    with pytest.raises(ValueError, match="unknown \\['portt'\\]"):
        ValidSettings({**dump, "portt": 1})


def test_upstream_address_defaults_port_80():
    assert SidecarSettings(upstream="http://app").validated().upstream_address == ("app", 80)
    assert SidecarSettings().validated().upstream_address == ("127.0.0.1", 8000)


def test_restart_only_changes_and_the_changes_are_reported():
    old = SidecarSettings().validated()
    new = SidecarSettings(port=8081, limit_concurrency=5).validated()
    assert old.restart_only_changes(new) == ["port"]
    assert old.changes(new) == "limit_concurrency 100 -> 5, port 8080 -> 8081"
    assert old.changes(old) == "no change"
    kept = new.replace({"port": old.port})
    assert (kept.port, kept.limit_concurrency) == (8080, 5)
    assert new.port == 8081  # replace makes a new one
