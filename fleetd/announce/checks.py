"""Health checks for `fleetd announce`: one attempt each, bounded by a timeout."""

from __future__ import annotations

import http.client
import socket


def tcp_check(ip: str, port: int, timeout: float) -> bool:
    """True when something accepts a TCP connection on ip:port."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_check(ip: str, port: int, path: str, timeout: float) -> bool:
    """True when `GET path` answers 2xx or 3xx."""
    connection = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"User-Agent": "fleetd-announce"})
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
    return 200 <= status < 400
