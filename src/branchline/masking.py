"""Every redaction rule in one place: secret values in log lines and error texts
(masked before anything is stored, also when a value arrives split across two
chunks of output), and passwords inside connection URIs and key=value strings."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
SEALED_PREFIX = "sealed:"  # a value stored encrypted (secrets.ValueSealer): never shown
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words everywhere
MAX_LINE = 16 * 1024  # a line longer than this is stored in pieces


def mask(text: str, secrets: Iterable[str]) -> str:
    # Longest first, so a secret containing another is masked whole.
    values = [v for v in sorted(set(secrets), key=len, reverse=True) if len(v) >= MIN_SECRET_LENGTH]
    # Until nothing changes: a secret containing "*" can reappear around an
    # inserted MASK. Every change shortens the text, so this ends.
    while True:
        before = text
        for value in values:
            text = text.replace(value, MASK)
        if text == before:
            return text


def by_line(secrets: Iterable[str]) -> list[str]:
    """Each secret, plus each line of a multi-line one (a PEM key, say): output is
    masked line by line, so a secret spanning lines is masked one line at a time."""
    out = []
    for secret in secrets:
        out.append(secret)
        if "\n" in secret:
            out.extend(line.rstrip("\r") for line in secret.split("\n"))
    return out


class LineMasker:
    """Turns a stream of chunks into masked lines.

    Only complete lines are released, so a secret split across two writes is
    whole again before it is masked. A line longer than MAX_LINE is released in
    pieces, holding back enough of its end that no secret can straddle a cut.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s for s in set(by_line(secrets)) if len(s) >= MIN_SECRET_LENGTH]
        self._hold = max((len(s) for s in self.secrets), default=1) - 1
        self._buffer = ""

    def feed(self, chunk: str) -> list[str]:
        self._buffer += chunk
        lines: list[str] = []
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            lines.extend(_pieces(mask(line.rstrip("\r"), self.secrets)))
        if len(self._buffer) > MAX_LINE + self._hold:
            # Mask first, then cut in pieces of MAX_LINE where no secret can
            # continue past a cut: more than _hold characters stay behind each.
            masked = mask(self._buffer, self.secrets)
            cut = 0
            while len(masked) - cut > MAX_LINE + self._hold:
                lines.append(masked[cut : cut + MAX_LINE])
                cut += MAX_LINE
            self._buffer = masked[cut:]
        return lines

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer, ""
        return _pieces(mask(rest, self.secrets)) if rest else []


def _pieces(line: str) -> list[str]:
    """A masked line in pieces of at most MAX_LINE (an empty line stays one line)."""
    return [line[i : i + MAX_LINE] for i in range(0, len(line) or 1, MAX_LINE)]


def mask_url(url: str) -> str:
    """Text fit for output: any connection password in it replaced by ***. Handles
    URLs (`postgresql://u:pw@h/db`, `?password=`) and key=value strings."""
    masked = re.sub(r"(://[^:/@\s]*:)[^/\s]*@", r"\1***@", url)
    masked = re.sub(r"([?&]password=)[^&\s]*", r"\1***", masked)
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", masked)


def mask_all(text: str, secrets: Iterable[str] = ()) -> str:
    """Both rules at once: connection passwords and the given secret values."""
    return mask(mask_url(text), secrets)
