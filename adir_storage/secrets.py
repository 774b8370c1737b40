"""Credentials never written: storage options masked, and a URL's password or signed-query token redacted.

A URL is a credential carrier: `http://admin:PASS@host/x.png`, `https://acct.blob…/x?sig=…`,
`…?X-Amz-Signature=…`. The job keeps the real URL in memory (it must read it) and writes only
`redact_url(url)` — config.yaml, result rows, error messages, reports, file names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

# storage_options whose values are safe to write down (config.yaml, logs): where and how to
# connect, never who. Everything else — keys, secrets, tokens, connection strings, headers,
# auth tuples, unknown options of any backend — is masked at any depth.
SAFE_STORAGE_OPTIONS = frozenset(
    {
        "endpoint_url",
        "region_name",
        "anon",
        "use_ssl",
        "verify",
        "requester_pays",
        "version_aware",
        "default_block_size",
        "default_fill_cache",
        "default_cache_type",
        "cache_regions",
        "signature_version",
        "addressing_style",
        "s3",
        "client_kwargs",
        "config_kwargs",
        "project",
        "skip_instance_cache",
        "use_listings_cache",
        "listings_expiry_time",
        "max_concurrency",
        "retries",
        "timeout",
        "connect_timeout",
        "read_timeout",
        "consistency",
        "requests_timeout",
    }
)

# Query parameters that carry a secret: SAS `sig`, S3 presigned `X-Amz-Signature` / `-Credential` /
# `-Security-Token`, GCS `X-Goog-Signature`, OAuth `access_token`, API keys. Matched on the name.
_SECRET_PARAM = re.compile(r"(sig|signature|token|secret|passw|pwd|key|credential|auth|session|code)", re.I)
# scheme://userinfo@  — userinfo is everything up to the first '@' before the path.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s?#]+)@")
# name=value pairs of a query string inside any text (after '?' or '&').
_QUERY_PAIR = re.compile(r"(?P<sep>[?&;])(?P<name>[^=&#\s?;]+)=(?P<value>[^&#\s;'\"]*)")


def redact_url(url: str) -> str:
    """`url` with its userinfo (user:password@) and secret query values replaced by '***'.

    The user name is masked too: with a token as user name (`https://TOKEN@host`) it is the secret.
    Idempotent, and a URL with nothing secret comes back unchanged.
    """
    return redact_text(url)


def redact_text(text: str) -> str:
    """Every URL credential inside free text (an error message, a log line) redacted as redact_url does."""
    if "@" not in text and "=" not in text:
        return text  # the common case, cheap
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)

    def query(m: re.Match) -> str:
        if _SECRET_PARAM.search(m.group("name")) and m.group("value") not in ("", MASK):
            return f"{m.group('sep')}{m.group('name')}={MASK}"
        return m.group(0)

    return _QUERY_PAIR.sub(query, text)


def has_credentials(url: str) -> bool:
    return redact_url(url) != url


def redact_options(options: Any) -> Any:
    """storage_options with every value not known to be safe replaced by '***' (keys kept, so a reader sees what was set)."""
    if not isinstance(options, Mapping):
        return MASK
    redacted = {}
    for key, value in options.items():
        if str(key) not in SAFE_STORAGE_OPTIONS:
            redacted[key] = MASK
        elif isinstance(value, Mapping):
            redacted[key] = redact_options(value)
        elif value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and "@" not in value):
            # A URL with user:password@ in it is a credential even under a safe key.
            redacted[key] = redact_url(value) if isinstance(value, str) else value
        else:
            redacted[key] = MASK
    return redacted


MAX_SECRET_LEAVES = 10_000  # a config is a few dozen values; a YAML bomb is millions (never walk one whole)


def _secret_values(options: Any, safe: bool = False, budget: list[int] | None = None) -> list[str]:
    budget = budget if budget is not None else [MAX_SECRET_LEAVES]
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(
            f"storage_options holds more than {MAX_SECRET_LEAVES} values; a job's storage options are a few "
            "dozen (an expanded YAML alias?): write them out plainly"
        )
    if isinstance(options, Mapping):
        return [
            v for k, value in options.items() for v in _secret_values(value, str(k) in SAFE_STORAGE_OPTIONS, budget)
        ]
    if isinstance(options, (list, tuple)):
        return [v for value in options for v in _secret_values(value, False, budget)]
    if isinstance(options, str) and (not safe or "@" in options):
        return [options]
    return []


def scrub(text: str, storage_options: Mapping[str, Any] | None) -> str:
    """`text` (an error message, a log line) with every credential value of `storage_options` and every URL
    credential masked."""
    for secret in sorted(_secret_values(storage_options or {}), key=len, reverse=True):
        if len(secret) >= 4:  # masking "a" or "" would garble the message and hide nothing
            text = text.replace(secret, MASK)
    return redact_text(text)
