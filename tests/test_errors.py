"""API errors: their shape, and the Retry-After a `retry_after` brings."""

from __future__ import annotations

from chat.errors import ApiError, InvalidFields, KeyReused, RateLimited, ServiceUnavailable


def test_an_error_renders_its_type_message_and_fields() -> None:
    error = InvalidFields({"message": "required", "model": "must be a string"})
    assert (error.status, error.headers()) == (422, {})
    assert error.as_dict() == {
        "error": {
            "type": "invalid_request",
            "message": "message: required; model: must be a string",
            "fields": {"message": "required", "model": "must be a string"},
        }
    }


def test_retry_after_is_a_field_and_a_header_rounded_up() -> None:
    limited, stopping = (
        RateLimited("slow down", retry_after=1.2),
        ServiceUnavailable("stopping", retry_after=5),
    )
    assert (limited.headers(), stopping.headers()) == ({"Retry-After": "2"}, {"Retry-After": "5"})
    assert limited.as_dict()["error"] == {"type": "rate_limited", "message": "slow down", "retry_after": 1.2}


def test_the_tree_is_what_the_docstring_draws() -> None:
    assert not issubclass(ServiceUnavailable, RateLimited)
    assert all(issubclass(kind, ApiError) for kind in (RateLimited, ServiceUnavailable, KeyReused))
    assert (ServiceUnavailable.status, ServiceUnavailable.type) == (503, "shutting_down")
    assert (KeyReused.status, KeyReused.type) == (422, "idempotency_key_reused")
