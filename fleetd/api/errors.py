"""The one error type of the API: an HTTP status and a message the client can act on."""

from __future__ import annotations


class ApiError(Exception):
    """Refuse a request; the server sends `{"error": {"code": status, "message": message}}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
