"""PII scrubbing: e-mail addresses, phone numbers, IP addresses and API-key-like strings
become placeholders ([EMAIL], [PHONE], [IP], [API_KEY]), counted per kind.

Patterns err on the side of recall for shapes that are almost never innocent (keys,
e-mails, dotted quads) and on precision for phone numbers, which look like other
numbers: a phone needs 9-15 digits and a leading + or separators, so tool arguments
(`layers 52`, `1.5`), dates and times stay.
"""
from __future__ import annotations

import re
from collections import Counter

KINDS = ("api_key", "email", "ip", "phone")
PLACEHOLDER = {"api_key": "[API_KEY]", "email": "[EMAIL]", "ip": "[IP]", "phone": "[PHONE]"}

_API_KEY = re.compile(
    r"\b(?:"
    r"sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}"           # OpenAI / Anthropic
    r"|(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}"      # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|AKIA[0-9A-Z]{16}"                               # AWS access key id
    r"|AIza[0-9A-Za-z_-]{35}"                          # Google API key
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"                   # Slack
    r"|hf_[A-Za-z0-9]{30,}"                            # Hugging Face
    r"|(?=[A-Za-z0-9]*\d)(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{32,}"  # any long mixed token
    r")"
    r"|(?<=Bearer )[A-Za-z0-9._~+/-]{16,}=*")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.]*\d)"
_IPV6 = r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])" \
        r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*)?(?![\w:])"
_IP = re.compile(f"{_IPV4}|{_IPV6}")
_PHONE = re.compile(r"(?<![\w+.])(?:\+\d[\d ().-]{7,20}\d|\(?\d{2,4}\)?[ .-]\d[\d ().-]{5,18}\d)(?![\w.]*\d)")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$|^\d{2}[./-]\d{2}[./-]\d{4}$")


def _is_phone(match: str) -> bool:
    digits = sum(c.isdigit() for c in match)
    return 9 <= digits <= 15 and not _DATE.match(match.strip())


# Cheap tests first: most text has no long token, no "@", no ":" and no digit run, and
# then none of the slower patterns has to scan it.
_DIGIT_RUN = re.compile(r"\d[\d ().-]{5,}\d")


def _has_long_word(text: str) -> bool:
    return any(len(w) >= 16 for w in text.split())


def scrub_text(text: str, counts: Counter) -> str:
    """The text with PII replaced; `counts` gains one per replacement, by kind."""
    if not text:
        return text
    long_word, at, colon = _has_long_word(text), "@" in text, ":" in text
    digits = _DIGIT_RUN.search(text) is not None
    if not (long_word or at or colon or digits):
        return text

    def sub(kind: str, pattern: re.Pattern, s: str, keep=None) -> str:
        def repl(m: re.Match) -> str:
            if keep is not None and not keep(m.group(0)):
                return m.group(0)
            counts[kind] += 1
            return PLACEHOLDER[kind]
        return pattern.sub(repl, s)

    # Keys first: a key can contain what looks like an e-mail's or a phone's digits.
    if long_word:
        text = sub("api_key", _API_KEY, text)
    if at:
        text = sub("email", _EMAIL, text)
    if digits or colon:
        text = sub("ip", _IP, text)
    if digits:
        text = sub("phone", _PHONE, text, keep=_is_phone)
    return text
