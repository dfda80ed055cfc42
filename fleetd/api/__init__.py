"""fleet API v1 (fleet 1.0's documented HTTP API) served by every fleetd.

`schema` validates what clients send, `encode` shapes what they get back (both
pure), `handlers` does each route against the registry and this machine's
runner, `server` speaks HTTP on a unix socket and, optionally, TCP.
"""

from fleetd.api.errors import ApiError
from fleetd.api.handlers import Api, Response
from fleetd.api.server import ApiServer

__all__ = ["Api", "ApiError", "ApiServer", "Response"]
