#!/usr/bin/python3
"""Generates protocol/fixtures/amqp-tables.json: AMQP 0-9-1 field tables as
py-amqp (Debian python3-amqp 5.1.1) writes them, for tests/unit/test_amqptable.c.

Regenerate from the repo root (Debian's python3-amqp must be installed; use
/usr/bin/python3 so that it is the one imported):

    /usr/bin/python3 protocol/amqp_tables.py

The output is deterministic (fixed inputs, insertion-ordered dicts, ASCII JSON).

Each fixture is {"name", "hex", "json", "roundtrip", "py_amqp"[, "note"]}:

  hex        the encoded table -- the 4-byte length and the entries, exactly
             what amqp_decode_table() reads.  For most cases it is
             amqp.serialization.dumps('F', [table]) itself.
  json       what cel_amqp_table_to_json() must return.  For every case
             py-amqp can read, it is py-amqp's own loads() result made JSON
             (see as_json(): bytes and lone surrogates -> str with invalid
             UTF-8 replaced by U+FFFD, Decimal -> float, datetime ->
             isoformat(), NaN/inf -> null).  Cases where celeriac must differ
             from py-amqp give it explicitly and say why in "note".
  roundtrip  true when py-amqp encodes "json" back to exactly "hex": the C
             encoder (cel_json_to_amqp_table + amqp_encode_table) must then
             produce the same bytes.
  py_amqp    repr() of what py-amqp's loads() returns for "hex" (or the
             exception it raises): the evidence for "json".

Hand-built cases cover the tags py-amqp never writes but RabbitMQ and other
clients may: b B s u i l f D x (built with struct below).  py-amqp 5.1.1 and
librabbitmq-c (which does the decoding in C) read some of them differently:

  b  librabbitmq: int8.   py-amqp: UNSIGNED byte ('>B').  celeriac: py-amqp's.
  B  librabbitmq: uint8.  py-amqp: SIGNED byte ('>b').    celeriac: py-amqp's.
  s  librabbitmq: int16 (RabbitMQ's meaning).  py-amqp: a short string (1-byte
     length + bytes), so it misreads the rest of the table.  celeriac: int16.
  u  uint16 in both.      i  uint32 in both.
  l  librabbitmq: int64.  py-amqp: UNSIGNED 64 ('>Q').  Equal below 2**63;
     a negative 'l' is 2**64 + v to py-amqp, which JSON integers (int64)
     cannot hold: celeriac keeps librabbitmq's signed value.
  f  float32 in both (widened to double).
  D  1-byte scale + 4-byte value; py-amqp reads the value signed ('>i'),
     librabbitmq stores it as uint32: celeriac reads it signed, like py-amqp,
     and returns value / 10**scale as a real.
  x  byte array: py-amqp returns bytes; celeriac a string, invalid UTF-8
     replaced by U+FFFD.
"""
import datetime
import decimal
import json
import math
import os
import struct

from amqp.serialization import dumps, loads

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'amqp-tables.json')


def table(entries):
    """Hand-built table bytes from (key, tag, payload bytes) triples."""
    body = b''.join(struct.pack('B', len(k)) + k + tag + payload for k, tag, payload in entries)
    return struct.pack('>I', len(body)) + body


def as_json(v):
    """A py-amqp loads() value as celeriac's decoder returns it."""
    if isinstance(v, bytes):
        return v.decode('utf-8', 'replace')
    if isinstance(v, str):  # may hold lone surrogates (py-amqp uses surrogatepass)
        return v.encode('utf-8', 'surrogatepass').decode('utf-8', 'replace')
    if isinstance(v, bool) or v is None or isinstance(v, int):
        return v
    if isinstance(v, (float, decimal.Decimal)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, datetime.datetime):
        return v.isoformat()
    if isinstance(v, list):
        return [as_json(x) for x in v]
    if isinstance(v, dict):
        return {as_json(k): as_json(x) for k, x in v.items()}
    raise TypeError(type(v))


def py_amqp_reads(raw):
    try:
        return repr(loads('F', raw, 0)[0][0])
    except Exception as e:  # noqa: BLE001 -- the exception is the evidence
        return 'raises %s: %s' % (type(e).__name__, e)


def same_bytes_again(js, raw):
    try:
        return dumps('F', [js]) == raw
    except Exception:  # noqa: BLE001
        return False


fixtures = []


def add(name, raw, js=None, note=None):
    if js is None:
        js = as_json(loads('F', raw, 0)[0][0])
    fx = {'name': name, 'hex': raw.hex(), 'json': js,
          'roundtrip': same_bytes_again(js, raw), 'py_amqp': py_amqp_reads(raw)}
    if note:
        fx['note'] = note
    fixtures.append(fx)


def written(name, tbl, note=None):
    add(name, dumps('F', [tbl]), note=note)


# --- Tables py-amqp writes ----------------------------------------------------

# Celery 5.2 protocol v2 task headers, as apply_async() builds them.
celery = {
    'lang': 'py',
    'task': 'tasks.add',
    'id': '9b1c3d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e',
    'shadow': None,
    'eta': None,
    'expires': None,
    'group': None,
    'group_index': None,
    'retries': 0,
    'timelimit': [None, None],
    'root_id': '9b1c3d2e-5f6a-4b7c-8d9e-0f1a2b3c4d5e',
    'parent_id': None,
    'argsrepr': '(2, 3)',
    'kwargsrepr': '{}',
    'origin': 'gen4242@host.example',
    'ignore_result': False,
}
written('celery-headers-plain', celery)
written('celery-headers-options', dict(
    celery, shadow='add-shadow', eta='2024-05-01T12:00:00+00:00',
    expires='2024-05-01T13:00:00.123456+00:00', group='5e1f0c4b-1a2b-4c3d-8e9f-a0b1c2d3e4f5',
    group_index=3, retries=2, timelimit=[10, 5.5],
    parent_id='0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d', kwargsrepr="{'x': 'caf\xe9'}",
    ignore_result=True))

written('int-boundaries', {
    'max32': 2**31 - 1, 'max32+1': 2**31, 'min32+1': -2**31 + 1, 'min32': -2**31,
    'min32-1': -2**31 - 1, 'zero': 0, 'one': 1, 'minus1': -1,
    'p40': 2**40, 'm40': -2**40, 'max64': 2**63 - 1, 'min64': -2**63},
    note="py-amqp writes I only for -2**31+1..2**31-1: -2**31 goes out as L")
written('floats', {'tenth': 0.1, 'big-neg': -1e300, 'one-and-half': 1.5, 'neg-zero': -0.0,
                   'tiny': 5e-324, 'whole': 2.0})
written('float-nonfinite', {'nan': float('nan'), 'inf': float('inf'), 'ninf': float('-inf')},
        note='py-amqp writes d NaN/inf; JSON cannot hold them: null')
written('unicode', {'e-acute': 'caf\xe9', 'emoji': '\U0001F600', 'cjk': '\u4e2d\u6587\u5b57',
                    'key-\xe9': 'v', 'mixed': 'a\xe9\u4e2d\U0001F600z'})
written('strings-nul-empty', {'nul': 'a\x00b', 'only-nul': '\x00', 'empty': '', '': 'empty key'})
written('nested', {'list': [1, 'two', [3, [4.5, None]], {'k': [True, False]}],
                   'dict': {'a': {'b': {'c': 'deep', 'l': [{}]}}, 'n': None},
                   'empty-list': [], 'empty-dict': {}})
written('none-bools', {'none': None, 'true': True, 'false': False, 'list': [None, True, False]})
written('empty-table', {})
written('datetime', {'when': datetime.datetime(2024, 5, 1, 12, 30, 45),
                     'epoch': datetime.datetime(1970, 1, 1)},
        note='py-amqp writes T (seconds since the epoch); read back as a naive UTC datetime')
written('decimal', {'d1': decimal.Decimal('1.5'), 'd2': decimal.Decimal('-2.50'),
                    'd3': decimal.Decimal('7'), 'd4': decimal.Decimal('0.001')},
        note='py-amqp writes D for Decimal; celeriac reads a real')
written('bytes', {'utf8': b'abc', 'bad': b'\xff\xfeab', 'empty': b''},
        note='py-amqp writes bytes as S and reads invalid UTF-8 back as bytes')
written('bad-utf8', {
    'truncated': b'a\xe2\x82',           # one U+FFFD for the maximal subpart
    'overlong': b'\xc0\xaf',             # C0 never valid: two
    'surrogate': b'\xed\xa0\x80',        # py-amqp: lone surrogate (surrogatepass); JSON: three
    'too-big': b'\xf4\x90\x80\x80',      # above U+10FFFF: four
    'five-byte': b'\xf8\x88\x80\x80\x80',
    'lone-cont': b'x\x80y',
    'e0-overlong': b'\xe0\x80\xaf',
    'f0-overlong': b'\xf0\x8f\xbf\xbf',
    'max': b'\xf4\x8f\xbf\xbf',          # U+10FFFF: valid
    'nul-and-bad': b'\x00\xff\x00',
    'ok-then-cut': b'\xf0\x9f\x98\x80\xf0\x9f\x98'})

# --- Hand-built: tags py-amqp never writes ------------------------------------

add('tag-b', table([(b'zero', b'b', b'\x00'), (b'max', b'b', b'\x7f'), (b'ff', b'b', b'\xff'),
                    (b'80', b'b', b'\x80')]),
    note="librabbitmq reads 'b' as int8; py-amqp as unsigned: 0xff -> 255 (celeriac follows py-amqp)")
add('tag-B', table([(b'zero', b'B', b'\x00'), (b'max', b'B', b'\x7f'), (b'ff', b'B', b'\xff'),
                    (b'80', b'B', b'\x80')]),
    note="librabbitmq reads 'B' as uint8; py-amqp as signed: 0xff -> -1 (celeriac follows py-amqp)")
add('tag-s', table([(b'pos', b's', struct.pack('>h', 1234)), (b'neg', b's', struct.pack('>h', -2)),
                    (b'min', b's', struct.pack('>h', -32768))]),
    js={'pos': 1234, 'neg': -2, 'min': -32768},
    note="'s' is a signed 16-bit int to RabbitMQ and librabbitmq; py-amqp reads a short "
         "string and misparses the rest of the table")
add('tag-u', table([(b'max', b'u', struct.pack('>H', 65535)), (b'one', b'u', struct.pack('>H', 1))]))
add('tag-i', table([(b'max', b'i', struct.pack('>I', 2**32 - 1)), (b'one', b'i', struct.pack('>I', 1))]))
add('tag-l', table([(b'p', b'l', struct.pack('>q', 2**40)), (b'max', b'l', struct.pack('>q', 2**63 - 1))]),
    note="librabbitmq: int64; py-amqp: unsigned; the same below 2**63")
add('tag-l-negative', table([(b'neg', b'l', struct.pack('>q', -5))]),
    js={'neg': -5},
    note="py-amqp reads 2**64-5 (unsigned), beyond a JSON int64; celeriac keeps librabbitmq's -5")
add('tag-f', table([(b'half', b'f', struct.pack('>f', 0.5)), (b'tenth', b'f', struct.pack('>f', 0.1)),
                    (b'nan', b'f', struct.pack('>f', float('nan'))),
                    (b'inf', b'f', struct.pack('>f', float('inf')))]),
    note='float32 widened to double; NaN/inf -> null')
add('tag-D', table([(b'pos', b'D', struct.pack('>Bi', 2, 12345)), (b'neg', b'D', struct.pack('>Bi', 1, -15)),
                    (b'int', b'D', struct.pack('>Bi', 0, 42)), (b'min', b'D', struct.pack('>Bi', 3, -2**31))]),
    note="value read signed ('>i'), as py-amqp; value / 10**scale")
add('tag-x', table([(b'utf8', b'x', struct.pack('>I', 3) + b'abc'),
                    (b'bin', b'x', struct.pack('>I', 4) + b'\x00\xff\x01\xfe'),
                    (b'empty', b'x', struct.pack('>I', 0))]),
    note='py-amqp returns bytes; celeriac a string with U+FFFD for invalid UTF-8')
add('tag-T-max', table([(b'last', b'T', struct.pack('>Q', 253402300799)),
                        (b'leap', b'T', struct.pack('>Q', 951782400))]),
    note='9999-12-31T23:59:59, the last second Python can represent; 2000-02-29')
add('tag-T-out-of-range', table([(b'big', b'T', struct.pack('>Q', 253402300800))]),
    js={'big': None},
    note='beyond year 9999 py-amqp raises; celeriac returns null')
add('repeated-key', table([(b'k', b'I', struct.pack('>i', 1)), (b'other', b'V', b''),
                           (b'k', b'S', struct.pack('>I', 4) + b'last')]),
    note='a repeated key: the last value wins, in the first position (a Python dict)')
add('bad-utf8-key', table([(b'k\xff', b'V', b''), (b'\xc3\xa9', b't', b'\x01')]),
    js={'k\ufffd': None, '\xe9': True},
    note='py-amqp decodes keys strictly and raises; celeriac replaces with U+FFFD')
add('bool-nonzero', table([(b't2', b't', b'\x02')]),
    note="any non-zero 't' byte is true")

with open(OUT, 'w', encoding='ascii') as f:
    json.dump(fixtures, f, indent=1, ensure_ascii=True)
    f.write('\n')
print('wrote %d fixtures to %s' % (len(fixtures), OUT))
