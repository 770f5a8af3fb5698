#!/usr/bin/python3
"""make_seeds.py — seed corpora for the libFuzzer targets, from the protocol
captures (shared/protocol-captures) plus a few hand-written cases.

Why generated: the captures are the real bytes Celery 5.2.6 / kombu 5.2.4
put on the wire, which is the best starting point a mutation fuzzer can
have, but they are stored as readable JSON (envelopes inside MONITOR argv,
decoded bodies, AMQP header tables as {"@t": tag, "v": value}).  This
script turns them back into the bytes each target reads:

  message     kombu Redis envelopes (the exact LPUSH payload text where the
              capture kept it whole, else re-serialized)
  pidbox      remote-control request envelopes (body base64 of the request)
  amqp_table  basic.properties property lists as librabbitmq's
              amqp_decode_properties reads them (flags, then fields)
  config      .env files and URLs

    make_seeds.py CAPTURES_DIR OUT_DIR     writes OUT_DIR/<target>/seed-<hash>
    make_seeds.py --hand OUT_DIR           hand-written cases only

Small and deterministic: the same captures always give the same files.
"""
import base64
import hashlib
import json
import os
import struct
import sys

CAP_PER_TARGET = 300


class Seeds:
    def __init__(self, out):
        self.out = out
        self.count = {}

    def add(self, target, data):
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")
        if self.count.get(target, 0) >= CAP_PER_TARGET:
            return
        d = os.path.join(self.out, target)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "seed-" + hashlib.sha1(data).hexdigest()[:16])
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(data)
            self.count[target] = self.count.get(target, 0) + 1


# ---- AMQP encoding, as py-amqp writes it ---------------------------------

def shortstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">B", len(b)) + b


def longstr(s):
    b = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else s
    return struct.pack(">I", len(b)) + b


def typed_value(tag, v):
    """One field value from a capture's {"@t", "v"} pair (or a hand case)."""
    t = tag.encode()
    if tag == "S" or tag == "x":
        return t + longstr(v)
    if tag == "I":
        return t + struct.pack(">i", v)
    if tag == "L" or tag == "l":
        return t + struct.pack(">q", v)
    if tag == "u":
        return t + struct.pack(">I", v)
    if tag == "s":
        return t + struct.pack(">h", v)
    if tag == "b":
        return t + struct.pack(">B", v & 0xFF)
    if tag == "B":
        return t + struct.pack(">b", v)
    if tag == "t":
        return t + struct.pack(">B", 1 if v else 0)
    if tag == "d":
        return t + struct.pack(">d", v)
    if tag == "f":
        return t + struct.pack(">f", v)
    if tag == "D":
        return t + struct.pack(">Bi", v[0], v[1])
    if tag == "T":
        return t + struct.pack(">Q", v)
    if tag == "V":
        return t
    if tag == "A":
        inner = b"".join(typed(x) for x in v)
        return t + struct.pack(">I", len(inner)) + inner
    if tag == "F":
        return t + table(v)
    raise ValueError(tag)


def typed(x):
    return typed_value(x["@t"], x["v"])


def table(d):
    inner = b"".join(shortstr(k) + typed(x) for k, x in d.items())
    return struct.pack(">I", len(inner)) + inner


def plain_to_typed(v):
    """A JSON value as py-amqp would tag it (for headers captured on Redis)."""
    if v is None:
        return {"@t": "V", "v": None}
    if isinstance(v, bool):
        return {"@t": "t", "v": v}
    if isinstance(v, int):
        return {"@t": "I" if -2**31 < v < 2**31 else "L", "v": v}
    if isinstance(v, float):
        return {"@t": "d", "v": v}
    if isinstance(v, str):
        return {"@t": "S", "v": v}
    if isinstance(v, list):
        return {"@t": "A", "v": [plain_to_typed(x) for x in v]}
    if isinstance(v, dict):
        return {"@t": "F", "v": {k: plain_to_typed(x) for k, x in v.items()}}
    raise ValueError(v)


PROPS = [  # (name, flag, kind) in AMQP basic.properties order
    ("content_type", 0x8000, "s"), ("content_encoding", 0x4000, "s"),
    ("headers", 0x2000, "F"), ("delivery_mode", 0x1000, "o"),
    ("priority", 0x0800, "o"), ("correlation_id", 0x0400, "s"),
    ("reply_to", 0x0200, "s"), ("expiration", 0x0100, "s"),
    ("message_id", 0x0080, "s"), ("timestamp", 0x0040, "T"),
    ("type", 0x0020, "s"), ("user_id", 0x0010, "s"), ("app_id", 0x0008, "s"),
]


def properties(p):
    """A basic.properties list; `headers` is a typed table."""
    flags, out = 0, b""
    for name, flag, kind in PROPS:
        if name not in p or p[name] is None:
            continue
        v = p[name]
        flags |= flag
        if kind == "s":
            out += shortstr(str(v))
        elif kind == "o":
            out += struct.pack(">B", int(v) & 0xFF)
        elif kind == "T":
            out += struct.pack(">Q", int(v))
        else:
            out += table(v)
    return struct.pack(">H", flags) + out


# ---- walking the captures ------------------------------------------------

def walk(v):
    yield v
    if isinstance(v, dict):
        for x in v.values():
            yield from walk(x)
    elif isinstance(v, list):
        for x in v:
            yield from walk(x)


def load_all(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return [json.loads(text)]


def classify(env_obj):
    body = env_obj.get("body")
    try:
        req = json.loads(base64.b64decode(body)) if isinstance(body, str) else body
    except Exception:
        req = None
    if isinstance(req, dict) and "method" in req:
        return "pidbox"
    return "message"


def from_captures(cap, seeds):
    for name in sorted(os.listdir(cap)):
        if not (name.endswith(".json") or name.endswith(".jsonl")):
            continue
        for doc in load_all(os.path.join(cap, name)):
            for v in walk(doc):
                if isinstance(v, str) and v.startswith("{") and "trimmed>" not in v:
                    try:
                        obj = json.loads(v)
                    except ValueError:
                        continue
                    if isinstance(obj, dict) and "body" in obj and "headers" in obj:
                        seeds.add(classify(obj), v)  # the exact wire text
                elif isinstance(v, dict):
                    rebuild(v, seeds)


def rebuild(d, seeds):
    """A capture record holding an envelope's parts: re-serialize it."""
    headers, props = d.get("headers"), d.get("properties")
    if not isinstance(headers, dict) and not isinstance(props, dict):
        return
    if isinstance(props, dict) and isinstance(props.get("headers"), dict):
        # an AMQP record: typed headers
        hdrs = props["headers"]
        if all(isinstance(x, dict) and "@t" in x for x in hdrs.values()):
            try:
                seeds.add("amqp_table", properties(props))
            except (ValueError, struct.error, TypeError):
                pass
        return
    if "body_decoded" in d or "_body_decoded" in d:
        body = d.get("body_decoded", d.get("_body_decoded"))
        env = {"body": base64.b64encode(json.dumps(body).encode()).decode(),
               "content-encoding": "utf-8", "content-type": "application/json",
               "headers": headers or {}, "properties": props or {}}
    elif "body" in d and isinstance(headers, dict):
        env = d
    else:
        return
    text = json.dumps(env)
    seeds.add(classify(env), text)
    if isinstance(headers, dict) and headers:
        try:
            typed_h = {k: plain_to_typed(x) for k, x in headers.items()}
            seeds.add("amqp_table", properties({"content_type": "application/json",
                                                "headers": typed_h, "delivery_mode": 2}))
        except (ValueError, struct.error):
            pass


# ---- hand-written cases --------------------------------------------------

def hand(seeds):
    body = base64.b64encode(b'[[2, 3], {"x": 1.5}, {"callbacks": null, "errbacks": null, '
                            b'"chain": null, "chord": null}]').decode()
    env = {"body": body, "content-encoding": "utf-8", "content-type": "application/json",
           "headers": {"lang": "py", "task": "capapp.add", "id": "a1", "root_id": "a1",
                       "eta": "2026-11-28T10:00:00.123456+00:00", "expires": None,
                       "timelimit": [10, 5.5], "retries": 1, "group_index": 0,
                       "argsrepr": "(2, 3)", "kwargsrepr": "{}", "origin": "gen1@h"},
           "properties": {"correlation_id": "a1", "reply_to": "r", "delivery_mode": 2,
                          "delivery_info": {"exchange": "", "routing_key": "celery"},
                          "priority": 5, "body_encoding": "base64", "delivery_tag": "t1"}}
    seeds.add("message", json.dumps(env))
    seeds.add("message", json.dumps(dict(env, **{"content-type": "application/x-python-serialize"})))
    seeds.add("message", json.dumps(dict(env, body="eJyLjlYyMtJRUDKKrVUCABD6Ao0=",
                                         headers=dict(env["headers"],
                                                      compression="application/x-gzip"))))
    seeds.add("message", '{"body": "W10=", "headers": {"task": "t", "id": "\\ud83d\\ude00\\u0000"}, '
                         '"properties": {}}')

    def req(method, args, **kw):
        r = {"method": method, "arguments": args, "destination": None, "pattern": None,
             "matcher": None, "ticket": "tk", "reply_to": {"exchange": "reply.celery.pidbox",
                                                          "routing_key": "rk"}}
        r.update(kw)
        return json.dumps({"body": base64.b64encode(json.dumps(r).encode()).decode(),
                           "content-encoding": "utf-8", "content-type": "application/json",
                           "headers": {"clock": 7, "expires": 1e12},
                           "properties": {"delivery_mode": 2, "body_encoding": "base64"}})
    seeds.add("pidbox", req("revoke", {"task_id": ["a", "b"], "terminate": True,
                                       "signal": "SIGKILL"}))
    seeds.add("pidbox", req("terminate", {"task_id": "a", "signal": 9}))
    seeds.add("pidbox", req("hello", {"from_node": "w2@x", "revoked": {"a": 1.0}}))
    seeds.add("pidbox", req("ping", {}, pattern="celeriac@*", matcher="glob"))
    seeds.add("pidbox", req("shutdown", {}, destination=["celeriac@fuzz"]))
    seeds.add("pidbox", req("clock", {}))
    seeds.add("pidbox", req("stats", {}))
    seeds.add("pidbox", req("enable_events", {}))

    every_tag = {
        "S": {"@t": "S", "v": "caf\xe9"}, "x": {"@t": "x", "v": b"\xff\xfe\x00a"},
        "I": {"@t": "I", "v": -7}, "L": {"@t": "L", "v": -2**63}, "l": {"@t": "l", "v": 2**40},
        "u": {"@t": "u", "v": 2**32 - 1}, "s": {"@t": "s", "v": -2}, "b": {"@t": "b", "v": 200},
        "B": {"@t": "B", "v": -3}, "t": {"@t": "t", "v": True}, "d": {"@t": "d", "v": 0.1},
        "f": {"@t": "f", "v": 1.5}, "D": {"@t": "D", "v": (2, -12345)},
        "T": {"@t": "T", "v": 1795862940}, "V": {"@t": "V", "v": None},
        "A": {"@t": "A", "v": [{"@t": "I", "v": 1}, {"@t": "A", "v": []}]},
        "F": {"@t": "F", "v": {"k": {"@t": "V", "v": None}}},
    }
    seeds.add("amqp_table", properties({"content_type": "application/json",
                                        "headers": every_tag, "priority": 9,
                                        "timestamp": 1795862940, "app_id": "a"}))
    seeds.add("amqp_table", properties({"headers": {"dup": {"@t": "I", "v": 1},
                                                    "dup2": {"@t": "S", "v": "\xff"}}}))

    seeds.add("config", "CELERY_BROKER_URL=redis://:s3cret@host:6380/2\n"
                        "export CELERY_RESULT_BACKEND='rpc://'\n"
                        "CELERY_TASK_ACKS_LATE=yes # comment\n"
                        'CELERY_BROKER_TRANSPORT_OPTIONS="{\\"visibility_timeout\\": 30}"\n'
                        "CELERIAC_METRICS_PORT=9100\n")
    seeds.add("config", "amqp://guest:pa%40ss@[::1]:5672/vhost\nq1, q2 ,,q3\n%h-%n.%d%%\n")
    seeds.add("config", "redis+socket:///tmp/redis.sock?virtual_host=3\n"
                        "amqps://u:p@h/%2F?heartbeat=10\n{\"ca_certs\": \"/x\", \"cert_reqs\": 0}\n")
    seeds.add("config", "rediss://user:longpassword@example:1/15?ssl_cert_reqs=none\n1e999\n-5\n")


def main(argv):
    if len(argv) == 3 and argv[1] == "--hand":
        seeds = Seeds(argv[2])
    elif len(argv) == 3:
        seeds = Seeds(argv[2])
        from_captures(argv[1], seeds)
    else:
        sys.exit(__doc__)
    hand(seeds)
    for t in sorted(seeds.count):
        print(f"  seeds {t}: {seeds.count[t]} new")


if __name__ == "__main__":
    main(sys.argv)
