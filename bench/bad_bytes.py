"""`python -m bench.bad_bytes [--code DIR]`: send a corpus of badly encoded bodies to every
write endpoint of a real service and count what must never happen: 5xx answers, ERROR log
lines, and task ids consumed by refused requests.

`--code` runs another checkout's service (`--code /path/to/main` measures the code before a
change); the corpus is bounded (a few dozen requests) and the service is stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from harness.processes import ROOT, SECRET, ServiceProcess, as_service

MARK = "@@"
# Per write endpoint, a body that is valid except for what replaces MARK.
TEMPLATES: dict[str, dict[str, object]] = {
    "POST /api/tasks": {"title": f"a{MARK}b", "taskType": "daily"},
    "PATCH /api/tasks/{task}": {"title": f"a{MARK}b"},
    "POST /api/tasks/{task}/execute": {"resultStatus": "completed", "note": f"a{MARK}b"},
    "POST /api/schedules": {"name": f"a{MARK}b", "cron": "0 9 * * 1", "taskType": "daily"},
    "PATCH /api/schedules/{schedule}": {"name": f"a{MARK}b"},
    "POST /api/events": {"type": "note", "text": [f"a{MARK}b"]},
    "POST /api/realtime/ticket": {"note": f"a{MARK}b"},
}
# What replaces MARK in the body's UTF-8 bytes: each is something only a broken or hostile client sends.
INSERTS: dict[str, bytes] = {
    "raw-high-surrogate": b"\xed\xa0\x80",
    "raw-low-surrogate": b"\xed\xbf\xbf",
    "raw-surrogate-pair": b"\xed\xa0\xbd\xed\xb8\x80",
    "escaped-high-surrogate": b"\\ud800",
    "escaped-low-surrogate": b"\\udfff",
    "invalid-byte": b"\xff",
    "overlong": b"\xc0\xaf",
    "truncated-sequence": b"\xe2\x82",
}
# Whole bodies in another encoding (MARK replaced by plain text first).
ENCODINGS: dict[str, tuple[str, bytes]] = {
    "utf-16-le-bom": ("utf-16-le", b"\xff\xfe"),
    "utf-16-be": ("utf-16-be", b""),
    "utf-32-le": ("utf-32-le", b""),
    "utf-32-be-bom": ("utf-32-be", b"\x00\x00\xfe\xff"),
}
CHARSETS = ("latin-1", "utf-16", "shift_jis")


def corpus(template: dict[str, object]) -> list[tuple[str, bytes, dict[str, str]]]:
    """Every bad variant of one endpoint's body: (name, bytes, extra headers)."""
    text = json.dumps(template, ensure_ascii=False)
    utf8 = text.encode()
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        (name, utf8.replace(MARK.encode(), insert), {}) for name, insert in INSERTS.items()
    ]
    key = dict(template)
    key["k\ud800"] = 1
    cases.append(("escaped-surrogate-in-key", json.dumps(key).encode(), {}))
    cases.append(("raw-surrogate-in-key", json.dumps(key).encode().replace(b"\\ud800", b"\xed\xa0\x80"), {}))
    plain = text.replace(MARK, "x")
    cases += [(name, bom + plain.encode(codec), {}) for name, (codec, bom) in ENCODINGS.items()]
    cases += [
        (f"charset-{charset}", plain.encode(), {"Content-Type": f"application/json; charset={charset}"})
        for charset in CHARSETS
    ]
    return cases


def request(url: str, method: str, token: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    for name, value in headers.items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bad_bytes", description=__doc__)
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose service runs")
    parser.add_argument("--verbose", action="store_true", help="print every answer")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bad-bytes-") as tmp:
        process = ServiceProcess(Path(tmp), {"JWT_SECRET": SECRET, "DEV_MODE": "0"}, code=args.code).start()
        try:
            url = process.url
            token = as_service(process).token(sub=1, roles=("user", "publisher"))
            good = json.dumps({"title": "t", "taskType": "daily"}).encode()
            status, answer = request(url + "/api/tasks", "POST", token, good, {})
            first_id = json.loads(answer)["id"]
            schedule = json.dumps({"name": "s", "cron": "0 9 * * 1", "taskType": "daily"}).encode()
            schedule_id = json.loads(request(url + "/api/schedules", "POST", token, schedule, {})[1])["id"]
            server_errors = total = 0
            statuses: dict[int, int] = {}
            for endpoint, template in TEMPLATES.items():
                method, path = endpoint.split(" ")
                path = path.format(task=first_id, schedule=schedule_id)
                for name, body, headers in corpus(template):
                    status, answer = request(url + path, method, token, body, headers)
                    total += 1
                    statuses[status] = statuses.get(status, 0) + 1
                    server_errors += status >= 500
                    if args.verbose or status >= 500:
                        print(f"{status} {method} {path} {name}: {answer[:160]!r}")
            status, answer = request(url + "/api/tasks", "POST", token, good, {})
            ids_consumed = json.loads(answer)["id"] - first_id - 1
        finally:
            process.stop()
        errors = [line for line in process.output().splitlines() if re.search(r"\bERROR\b|Traceback", line)]
    print(f"code: {args.code}")
    print(f"requests: {total}, by status: {dict(sorted(statuses.items()))}")
    print(f"5xx answers: {server_errors}")
    print(f"ERROR/Traceback log lines: {len(errors)}")
    print(f"task ids consumed by refused requests: {ids_consumed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
