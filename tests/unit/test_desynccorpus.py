"""How ``hack.desynccorpus`` reads the crate's YAML and turns a case into request bytes."""

import pytest

from hack.desynccorpus import parse, unescape

CASES = r"""
- name: 'Escapes in a single-quoted value'
  uri: /foo/bar\t/baz
  method: POST
  version: HTTP/1.1
  headers:
    - name: Content-Length
      value: 1000
      tier: Bad
    - name: 'X-A'
      value: 'a\x01b\xff'
      tier: NonCompliant
  expected:
    tier: Severe
    reason: BadContentLength
- name: "Double-quoted, unescaped twice"
  uri: /
  method: GET
  version: ""
  headers:
    - name: "Tran\u017Ffer-Encoding"
      value: "yes"
      tier: Compliant
  expected:
    tier: Ambiguous
    reason: BadHeader
"""


def test_unescape_is_the_crates():
    assert unescape(r"a\tb\x01\xffc\"d\qe") == 'a\tb\x01\xffc"dqe'
    with pytest.raises(ValueError, match="malformed escape"):
        unescape("ends with \\")


def test_cases_become_the_bytes_the_crates_test_builds():
    first, second = parse("x.yaml", CASES)
    assert (first.tier, first.reason, first.ident) == (
        "Severe",
        "BadContentLength",
        "x.yaml:" + first.name,
    )
    assert first.head() == (
        b"POST /foo/bar\t/baz HTTP/1.1\r\nContent-Length: 1000\r\nX-A: a\x01b\xff\r\n\r\n"
    )
    # Scalars stay text (BaseLoader: no YAML 1.1 "yes" -> True); a name outside Latin-1
    # is written as UTF-8; an empty version leaves the HTTP/0.9 request line's space.
    assert second.headers[0].value == "yes"
    assert second.head() == b"GET / \r\nTran\xc5\xbffer-Encoding: yes\r\n\r\n"


def test_an_unknown_tier_is_an_error():
    with pytest.raises(ValueError, match="unknown tier"):
        parse("x.yaml", CASES.replace("tier: Severe", "tier: Fatal"))
