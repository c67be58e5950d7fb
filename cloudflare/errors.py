"""What calling Cloudflare's API can fail with, under one base class."""

from __future__ import annotations


class CloudflareError(Exception):
    """A call to Cloudflare's API, or a step of connect / rotate / reconcile, failed.

    The message names the call and Cloudflare's own error codes and messages; it never holds an
    API token or a webhook secret.

    Attributes:
        retriable: whether the same call may succeed later unchanged (429, 5xx, the network).
    """

    retriable = False


class ApiError(CloudflareError):
    """Cloudflare answered a call with an error.

    Attributes:
        status: the HTTP status.
        codes: Cloudflare's error codes from the answer's `errors`.
    """

    def __init__(self, what: str, status: int, codes: tuple[int, ...], detail: str) -> None:
        self.status = status
        self.codes = codes
        self.retriable = status == 429 or status >= 500
        super().__init__(f"{what}: HTTP {status}{': ' + detail if detail else ''}")


class PermissionDenied(ApiError):
    """The API token was refused: missing, expired, or without the permission the call needs.

    Attributes:
        permission: the token permission the call needs ("Notifications Read" or "Notifications
            Write").
    """

    def __init__(
        self, what: str, status: int, codes: tuple[int, ...], detail: str, permission: str
    ) -> None:
        self.permission = permission
        super().__init__(what, status, codes, detail)
        self.args = (
            f"{self.args[0]}; the API token needs the '{permission}' permission on this account "
            "(My Profile > API Tokens in the Cloudflare dashboard)",
        )


class Unreachable(CloudflareError):
    """The API did not answer (connection refused or reset, a timeout)."""

    retriable = True
