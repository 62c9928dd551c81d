#!/usr/bin/env python3
"""Pass/fail gate over an Autobahn|Testsuite report (wstest's index.json).

wstest itself exits 0 whatever the peer did, so this is what turns a report
into a verdict. A case passes only if both its `behavior` and its
`behaviorClose` are OK or INFORMATIONAL; anything else (NON-STRICT, FAILED,
WRONG CODE, UNCLEAN, UNIMPLEMENTED, a missing field) fails. Works for both
the fuzzingclient (our server) and the fuzzingserver (our client) reports.

Usage: check-report.py INDEX_JSON AGENT [--expect N] [--label NAME]

--expect N: the number of cases wstest said it would run. If the peer dies
mid-run, wstest still writes a report, just without the cases it never got
to, so a report can only be trusted as complete when its count matches.

Exit status: 0 all cases pass, 1 any case fails or is missing, 2 the report
cannot be read or has no such agent.
"""

import argparse
import json
import sys

PASSING = {"OK", "INFORMATIONAL"}


def case_key(case_id):
    # "9.10.2" sorts after "9.2.1": compare numerically, not as strings.
    return [int(p) if p.isdigit() else p for p in case_id.split(".")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index", help="path to wstest's index.json")
    ap.add_argument("agent", help="agent name the report is keyed by")
    ap.add_argument("--expect", type=int, help="number of cases that must be in the report")
    ap.add_argument("--label", help="name for the summary line (default: the agent)")
    args = ap.parse_args()
    label = args.label or args.agent

    try:
        with open(args.index, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        print(f"autobahn {label}: cannot read report {args.index}: {e}", file=sys.stderr)
        return 2
    cases = report.get(args.agent) if isinstance(report, dict) else None
    if not isinstance(cases, dict):
        agents = ", ".join(sorted(report)) if isinstance(report, dict) else "none"
        print(f"autobahn {label}: no agent {args.agent!r} in {args.index} (agents: {agents})",
              file=sys.stderr)
        return 2

    failed = []
    for case_id in sorted(cases, key=case_key):
        result = cases[case_id] if isinstance(cases[case_id], dict) else {}
        behavior = result.get("behavior", "<missing>")
        close = result.get("behaviorClose", "<missing>")
        if behavior not in PASSING or close not in PASSING:
            failed.append((case_id, behavior, close, result))

    summary = f"autobahn {label}: {len(cases)} cases, {len(cases) - len(failed)} OK/INFORMATIONAL, {len(failed)} failed"
    # An empty report means wstest never got through to the peer.
    incomplete = not cases or (args.expect is not None and len(cases) != args.expect)
    if args.expect is not None and len(cases) < args.expect:
        summary += f", {args.expect - len(cases)} missing"
    elif incomplete:
        summary += f", expected {args.expect or 'some'}"
    for case_id, behavior, close, result in failed:
        print(f"  FAIL {case_id}: behavior={behavior} behaviorClose={close}"
              f" remoteCloseCode={result.get('remoteCloseCode')} ({result.get('reportfile', '?')})")
    print(summary)
    return 1 if failed or incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
