"""Errors the emulator answers with: an HTTP status, AWS's error name and a message.

Handlers raise `ApiError`; one function in the app turns it into AWS's error shape (JSON body
`{"message": ...}`, the name in `x-amzn-ErrorType`).
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidArgumentException", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "ResourceNotFoundException", message)


def in_use(message: str) -> ApiError:
    return ApiError(400, "ResourceInUseException", message)


def throttled(message: str = "Rate exceeded") -> ApiError:
    return ApiError(400, "ClientLimitExceededException", message)


class IngestError(Exception):
    """The PutMedia body broke a KVS rule: answer with an ERROR ack carrying `error_id`."""

    def __init__(self, error_id: int, message: str) -> None:
        super().__init__(f"{error_id}: {message}")
        self.error_id = error_id
        self.message = message
