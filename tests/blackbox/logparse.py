"""Strict readers of ringmx's two log formats (src/log/log.h), for tests that
must prove a log line is exactly what the server meant to write.

  parse_kv(line)    key=value: `ts=... level=... event=... key=value ...`; a
                    value is bare (printable ASCII without space, quotes,
                    '=', '\\') or "quoted" with \\" \\\\ \\n \\r \\t \\xNN.
                    Returns [(key, value bytes)].
  parse_json(line)  one JSON object (strict UTF-8).  Returns [(key, value)].
  read_log(path, fmt, since)
                    every line of a log file, each checked: it parses, its
                    first keys are ts, level, event, no key repeats, ts is a
                    time between since and now, level is a level name.
                    Returns [(pairs, dict)].

Any deviation is an AssertionError naming the line."""

import calendar
import json
import re
import time

KEY_RE = re.compile(rb"[a-z0-9_]{1,20}")
TS_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z$")
LEVELS = ("error", "warn", "info", "debug")
BARE = frozenset(range(0x21, 0x7f)) - frozenset(b"\"'=\\")
ESCAPES = {ord('"'): 0x22, ord("\\"): 0x5C, ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09}
HEX = frozenset(b"0123456789abcdef")


def _quoted(line, i):
    """The quoted value starting after the quote at line[i - 1]: (bytes, end)."""
    val = bytearray()
    while True:
        assert i < len(line), "unterminated quoted value in %r" % line
        c = line[i]
        if c == 0x22:
            return bytes(val), i + 1
        assert 0x20 <= c < 0x7F, "raw byte 0x%02x inside a quoted value in %r" % (c, line)
        if c != 0x5C:
            val.append(c)
            i += 1
            continue
        e = line[i + 1] if i + 1 < len(line) else None
        if e == ord("x"):
            hx = line[i + 2:i + 4]
            assert len(hx) == 2 and all(h in HEX for h in hx), "bad \\x escape in %r" % line
            val.append(int(hx, 16))
            i += 4
        else:
            assert e in ESCAPES, "bad escape \\%r in %r" % (chr(e) if e else "", line)
            val.append(ESCAPES[e])
            i += 2


def parse_kv(line):
    if isinstance(line, str):
        line = line.encode("latin-1")
    pairs = []
    i = 0
    while i < len(line):
        if pairs:
            assert line[i] == 0x20, "expected one space between fields at %d in %r" % (i, line)
            i += 1
        m = KEY_RE.match(line, i)
        assert m and line[m.end():m.end() + 1] == b"=", "expected key= at %d in %r" % (i, line)
        key = m.group().decode()
        i = m.end() + 1
        if line[i:i + 1] == b'"':
            val, i = _quoted(line, i + 1)
        else:
            j = i
            while j < len(line) and line[j] != 0x20:
                assert line[j] in BARE, "byte 0x%02x in a bare value in %r" % (line[j], line)
                j += 1
            assert j > i, "empty bare value at %d in %r" % (i, line)
            val, i = line[i:j], j
        pairs.append((key, val))
    return pairs


def parse_json(line):
    text = line.decode("utf-8") if isinstance(line, bytes) else line
    pairs = json.loads(text, object_pairs_hook=lambda p: p)
    assert isinstance(pairs, list), "not a JSON object: %r" % line
    return pairs


def _ts_seconds(ts):
    m = TS_RE.match(ts)
    assert m, "bad ts %r" % ts
    y, mo, d, h, mi, s, ms = (int(x) for x in m.groups())
    return calendar.timegm((y, mo, d, h, mi, s)) + ms / 1000.0


def check_record(pairs, since, line):
    keys = [k for k, _ in pairs]
    assert keys[:3] == ["ts", "level", "event"], "line does not start ts level event: %r" % line
    assert len(set(keys)) == len(keys), "a key repeats in %r" % line
    rec = dict(pairs)
    ts = rec["ts"].decode() if isinstance(rec["ts"], bytes) else rec["ts"]
    t = _ts_seconds(ts)
    # a forged line carries a time the attacker chose; a real one is now
    assert since - 60 <= t <= time.time() + 60, "ts %s is not the time of this test: %r" % (ts, line)
    lvl = rec["level"].decode() if isinstance(rec["level"], bytes) else rec["level"]
    assert lvl in LEVELS, "bad level in %r" % line
    return rec


def read_log(path, fmt, since):
    with open(path, "rb") as f:
        data = f.read()
    assert data == b"" or data.endswith(b"\n"), "log does not end with a newline: %r" % data[-200:]
    out = []
    for line in data.split(b"\n")[:-1]:
        if fmt == "kv":
            assert all(c < 0x80 for c in line), "non-ASCII byte in a kv line: %r" % line
            pairs = parse_kv(line)
        else:
            pairs = parse_json(line)
        out.append((pairs, check_record(pairs, since, line)))
    return out


def text(v):
    """A kv value (bytes) or JSON value as str, for comparisons of ASCII text."""
    return v.decode("latin-1") if isinstance(v, bytes) else v
