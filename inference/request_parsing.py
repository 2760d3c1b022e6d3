"""The HTTP server's request parsing and client errors (inference/server.py).

Every client mistake becomes a `ClientError`: an HTTP status, a stable `code` for
clients to branch on, and a message that names the field and the fix. Malformed
bodies are caught here, before any work: invalid JSON or UTF-8, nesting too deep for
the parser, integers too long to convert, lone surrogates, numbers out of range.
"""
import json

from aiohttp import web
from aiohttp import web_protocol


class ClientError(Exception):
  """A client-facing error: HTTP status, stable `code`, message naming the fix."""

  def __init__(self, status: int, code: str, message: str,
               retry_after: int | None = None):
    super().__init__(message)
    self.status, self.code, self.retry_after = status, code, retry_after


# Stable codes of aiohttp's own errors (routing, body size).
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def error_response(status: int, code: str, message: str, headers=None) -> web.Response:
  return web.json_response({"error": message, "code": code}, status=status,
                           headers=headers)


async def json_body(request: web.Request, allowed: set[str]) -> dict:
  """The request's JSON object; 400 unless it is one with only `allowed` fields."""
  charset = request.charset or "utf-8"
  try:
    text = (await request.read()).decode(charset)
  except LookupError:
    raise ClientError(400, "invalid_body", f"unknown charset {charset[:40]!r} in"
                      " Content-Type; send UTF-8.") from None
  except UnicodeDecodeError:
    raise ClientError(400, "invalid_json",
                      f"body is not {charset[:40].upper()}.") from None
  except web_protocol.RequestPayloadError as e:  # E.g. a gzip body that is not gzip.
    raise ClientError(400, "invalid_body", f"body cannot be read: {e}; send it as"
                      " plain UTF-8 JSON or check its Content-Encoding.") from None
  try:
    body = json.loads(text)
  except RecursionError:
    raise ClientError(400, "invalid_json",
                      "body is not valid JSON: nested too deep.") from None
  except ValueError as e:  # JSONDecodeError, and integers of over 4300 digits.
    raise ClientError(400, "invalid_json", f"body is not valid JSON: {e}") from None
  if not isinstance(body, dict):
    raise ClientError(400, "invalid_body",
                      f"body must be a JSON object, not {type(body).__name__}.")
  if unknown := set(body) - allowed:
    raise ClientError(400, "unknown_field", f"unknown fields {sorted(unknown)};"
                      f" allowed: {sorted(allowed)}.")
  return body


def texts(body: dict, field: str, limit: int) -> list[str]:
  """body[field] as a list of at most `limit` sentences that encode as UTF-8."""
  values = body.get(field)
  if not isinstance(values, list) or not all(isinstance(t, str) for t in values):
    raise ClientError(400, "invalid_field", f'"{field}" must be a list of strings.')
  if len(values) > limit:
    raise ClientError(400, "too_many_sentences", f'"{field}" has {len(values)}'
                      f" sentences; at most {limit} per request.")
  for i, text in enumerate(values):
    try:
      text.encode("utf-8")
    except UnicodeEncodeError as e:  # A lone surrogate such as "\\ud800".
      raise ClientError(400, "invalid_field", f'"{field}"[{i}] holds a lone surrogate'
                        f" (\\u{ord(text[e.start]):04x}): send UTF-16 pairs whole."
                        ) from None
  return values


def number(body: dict, field: str, kind: type, limit: float) -> int | float | None:
  """body[field] as `kind` (int, or float accepting ints) up to `limit`, or None."""
  value = body.get(field)
  if value is None:
    return None
  accepted = int if kind is int else (int, float)
  if isinstance(value, bool) or not isinstance(value, accepted):
    raise ClientError(400, "invalid_field", f'"{field}" must be'
                      f' {"an integer" if kind is int else "a number"},'
                      f" not {json.dumps(value)[:40]}.")
  if value > limit:  # Before float(): a 400-digit integer does not fit in one.
    raise ClientError(400, "invalid_field", f'"{field}" {str(value)[:40]} is over'
                      f" the limit of {limit}.")
  return kind(value)


def boolean(body: dict, field: str) -> bool | None:
  """body[field] as a JSON true/false, or None when absent."""
  value = body.get(field)
  if value is None or isinstance(value, bool):
    return value
  raise ClientError(400, "invalid_field", f'"{field}" must be true or false,'
                    f" not {json.dumps(value)[:40]}.")


def prefixes(body: dict, field: str, count: int) -> list[str | None] | None:
  """body[field] as `count` target prefixes (strings or null), or None when absent."""
  values = body.get(field)
  if values is None:
    return None
  if (not isinstance(values, list) or len(values) != count
      or not all(v is None or isinstance(v, str) for v in values)):
    raise ClientError(400, "invalid_field", f'"{field}" must be a list of {count}'
                      ' strings or nulls, one per "text".')
  for i, text in enumerate(values):
    try:
      (text or "").encode("utf-8")
    except UnicodeEncodeError:
      raise ClientError(400, "invalid_field", f'"{field}"[{i}] holds a lone'
                        " surrogate: send UTF-16 pairs whole.") from None
  return values
