#!/usr/bin/env python3
"""Run SQL steps on an in-process current ClickHouse engine (chdb) for kcaudit's tests.

Reads a JSON object on stdin: {"path": DIR, "steps": [{"sql": "...", "format": "JSONEachRow"}, ...]}
and writes a JSON array on stdout with one result per step: {"ok": true, "output": "..."} or
{"ok": false, "error": "..."}. Steps run in order in one session whose databases live in DIR, so a
test can create tables, load RowBinary files (INSERT ... FROM INFILE), and query them in one process.
A failed step does not stop the others: the test decides what a failure means.
"""
import json
import sys

from chdb import session


def main() -> int:
    job = json.load(sys.stdin)
    s = session.Session(job["path"])
    results = []
    for step in job["steps"]:
        fmt = step.get("format") or "TabSeparated"
        try:
            out = s.query(step["sql"], fmt)
            results.append({"ok": True, "output": out.bytes().decode("utf-8", "replace")})
        except Exception as e:  # chdb raises RuntimeError-like errors carrying the server text
            results.append({"ok": False, "error": str(e)})
    s.close()
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
