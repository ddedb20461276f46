#!/usr/bin/env python3
"""Scores one zmap or `natwarden audit` run against the population's truth file.

  check.py zmap  TRUTH RESULTS.csv [--cidr C --rate R --time TIMEFILE --zmap-log LOG]
  check.py audit TRUTH AUDIT.json [--cidr C] [--intrusive] [--leftover FILE] [--rate R --time TIMEFILE]
  check.py nmap  TRUTH NMAP.txt [--cidr 100.64.0.0/24 --time TIMEFILE]
  check.py table RESULTS.jsonl

Each check prints one JSON object (run.sh appends it to RESULTS.jsonl); `table` prints
the Markdown table. TIMEFILE is `/usr/bin/time -v -o` output. Standard library only.

zmap: "responders found" = distinct source addresses in zmap's output that are targets of
the truth's NAT-PMP-answering set (truth lines whose "protocols" contain "nat-pmp"; zmap
sends only NAT-PMP), over that set's size. The population's "other-source" gateways answer
from a sibling address (truth "reply_source", 100.65/16), never from the probed one; zmap
records that sibling address. Both counts are given: `found` (the literal definition, the
sibling does not count) and `found_attributed` (a sibling address counts for its target).
`found_direct` is over the set without the other-source gateways (the targets that
answer from the probed address, which zmap can match). `unknown_sources` are answering addresses that are neither (the "garbage" gateways: they
answer with bytes that are not NAT-PMP, which zmap does not parse).

audit: a target is right when its reported findings equal the truth's ("findings", or
"findings_intrusive" with --intrusive) as sets; also checks that the order is the truth's.
wrong = reported with other findings, missing = in the truth but not reported, extra =
reported but not in the truth. --leftover FILE: the population's leftover-mappings file
(JSON lines) after the run, which must be empty after an --intrusive run.
"""

import collections
import ipaddress
import json
import re
import sys


SCOPE = None  # --cidr: only truth lines of targets inside it count


def in_scope(t):
    return SCOPE is None or ipaddress.ip_address(t["target"]) in SCOPE


def read_jsonl(path):
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    sys.exit(f"check.py: {path}:{n}: not JSON: {e}")
    return out


def check_zmap(truth_path, csv_path):
    truth = [t for t in read_jsonl(truth_path) if in_scope(t)]
    natpmp = {t["target"]: t for t in truth if "nat-pmp" in t["protocols"]}
    by_sibling = {t["reply_source"]: t["target"] for t in natpmp.values() if t.get("reply_source")}
    all_truth = {t["target"] for t in truth}
    sources = set()
    lines = 0
    with open(csv_path) as f:
        for line in f:
            field = line.strip().split(",")[0]
            if not field or field == "saddr":
                continue
            lines += 1
            try:
                sources.add(str(ipaddress.ip_address(field)))
            except ValueError:
                sys.exit(f"check.py: {csv_path}: not an address: {field!r}")
    found = sources & natpmp.keys()
    attributed = set(found) | {by_sibling[s] for s in sources if s in by_sibling}
    unknown = sources - natpmp.keys() - by_sibling.keys()
    missed = collections.Counter(natpmp[t]["behaviour"] for t in natpmp.keys() - attributed)
    size = len(natpmp)
    direct_set = {a for a, t in natpmp.items() if not t.get("reply_source")}
    return {
        "tool": "zmap",
        "natpmp_set": size,
        "output_lines": lines,
        "distinct_sources": len(sources),
        "found": len(found),
        "found_pct": round(100.0 * len(found) / size, 3) if size else 0.0,
        "found_attributed": len(attributed),
        "found_attributed_pct": round(100.0 * len(attributed) / size, 3) if size else 0.0,
        "direct_set": len(direct_set),
        "found_direct": len(found & direct_set),
        "found_direct_pct": round(100.0 * len(found & direct_set) / len(direct_set), 3) if direct_set else 0.0,
        "sibling_sources": len(sources & by_sibling.keys()),
        "unknown_sources": len(unknown),
        "unknown_in_truth_pcp_only": len(unknown & all_truth),
        "missed_by_behaviour": dict(sorted(missed.items())),
    }


def check_audit(truth_path, out_path, intrusive, leftover):
    key = "findings_intrusive" if intrusive else "findings"
    truth = {t["target"]: t for t in read_jsonl(truth_path) if in_scope(t)}
    lines = read_jsonl(out_path)
    reports = {}
    duplicates = 0
    summary = None
    for obj in lines:
        if obj.get("type") == "target":
            if obj["target"] in reports:
                duplicates += 1
            reports[obj["target"]] = obj
        elif obj.get("type") == "summary":
            summary = obj
    right = order_differs = 0
    wrong, missing, extra = [], [], []
    for target, t in truth.items():
        r = reports.get(target)
        if r is None:
            missing.append(target)
        elif set(r["findings"]) == set(t[key]) and len(r["findings"]) == len(t[key]):
            right += 1
            if r["findings"] != t[key]:
                order_differs += 1
        else:
            wrong.append(target)
    extra = [a for a in reports if a not in truth]

    def by_behaviour(targets):
        return dict(sorted(collections.Counter(truth[a]["behaviour"] for a in targets).items()))

    def examples(targets, n=5):
        out = []
        for a in targets[:n]:
            item = {"target": a}
            if a in truth:
                item["behaviour"] = truth[a]["behaviour"]
                item["truth"] = truth[a][key]
            if a in reports:
                item["reported"] = reports[a]["findings"]
            out.append(item)
        return out

    result = {
        "tool": "natwarden",
        "intrusive": intrusive,
        "truth_targets": len(truth),
        "reported": len(reports),
        "duplicates": duplicates,
        "right": right,
        "right_pct": round(100.0 * right / len(truth), 3) if truth else 0.0,
        "order_differs": order_differs,
        "wrong": len(wrong),
        "missing": len(missing),
        "extra": len(extra),
        "wrong_by_behaviour": by_behaviour(wrong),
        "missing_by_behaviour": by_behaviour(missing),
        "wrong_examples": examples(wrong),
        "missing_examples": examples(missing),
        "extra_examples": [
            {"target": a, "reported": reports[a]["findings"]} for a in extra[:5]
        ],
        "summary": summary,
    }
    if leftover is not None:
        left = read_jsonl(leftover)
        result["leftover_mappings"] = len(left)
        result["leftover_examples"] = left[:5]
    return result


def read_time(path):
    """Wall seconds, max RSS (kB) and exit status from a `/usr/bin/time -v -o FILE` file."""
    wall = rss = status = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("Elapsed (wall clock) time"):
                parts = line.rsplit(" ", 1)[1].split(":")
                wall = 0.0
                for p in parts:
                    wall = wall * 60 + float(p)
            elif line.startswith("Maximum resident set size"):
                rss = int(line.rsplit(" ", 1)[1])
            elif line.startswith("Exit status"):
                status = int(line.rsplit(" ", 1)[1])
            elif line.startswith("Command terminated by signal"):
                status = 128 + int(line.rsplit(" ", 1)[1])
    return {"wall_s": wall, "max_rss_kb": rss, "exit_status": status}


def zmap_send_rate(path):
    """zmap's own average send rate from its last status line ("done (20.01 Kp/s avg)")."""
    rate = None
    unit = {"": 1, "K": 1e3, "M": 1e6}
    with open(path, errors="replace") as f:
        for line in f:
            m = re.search(r"send: \d+ done \(([\d.]+) ([KM]?)p/s avg\)", line)
            if m:
                rate = float(m.group(1)) * unit[m.group(2)]
    return rate


def table(path):
    rows = read_jsonl(path)
    runs = {(r["tool"], r.get("rate"), r.get("intrusive", False)): r for r in rows if "tool" in r}
    rates = sorted({r.get("rate") for r in rows if r.get("tool") == "zmap"})

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    head = ("| rate p/s | zmap sent p/s | zmap found (literal) | zmap found (sibling counted) | zmap found (answering from target) "
            "| zmap s | zmap MB | ours right | wrong/missing/extra | stray/malformed "
            "| ours s | ours MB | time ours/zmap | mem ours/zmap |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for rate in rates:
        z = runs.get(("zmap", rate, False), {})
        o = runs.get(("natwarden", rate, False), {})
        s = o.get("summary") or {}
        zt, ot = z.get("wall_s"), o.get("wall_s")
        zm, om = z.get("max_rss_kb"), o.get("max_rss_kb")
        print("| {} | {} | {}/{} ({}%) | {} ({}%) | {}/{} ({}%) | {} | {} | {}/{} ({}%) | {}/{}/{} | {}/{} | {} | {} | {} | {} |".format(
            rate, f(z.get("send_rate"), ".0f"),
            z.get("found", "-"), z.get("natpmp_set", "-"), z.get("found_pct", "-"),
            z.get("found_attributed", "-"), z.get("found_attributed_pct", "-"),
            z.get("found_direct", "-"), z.get("direct_set", "-"), z.get("found_direct_pct", "-"),
            f(zt, ".2f"), f(zm and zm / 1024, ".1f"),
            o.get("right", "-"), o.get("truth_targets", "-"), o.get("right_pct", "-"),
            o.get("wrong", "-"), o.get("missing", "-"), o.get("extra", "-"),
            s.get("stray_replies", "-"), s.get("malformed_replies", "-"),
            f(ot, ".2f"), f(om and om / 1024, ".1f"),
            f(ot / zt if ot and zt else None, ".2f"), f(om / zm if om and zm else None, ".2f")))
    for (tool, rate, intrusive), r in sorted(runs.items(), key=lambda kv: str(kv[0])):
        if tool == "natwarden" and intrusive:
            s = r.get("summary") or {}
            print()
            print("--intrusive at {} p/s: right {}/{} ({}%), wrong/missing/extra {}/{}/{}, "
                  "stray/malformed {}/{}, deletions unconfirmed {}, leftover mappings {}, "
                  "{} s, {:.1f} MB".format(
                      rate, r["right"], r["truth_targets"], r["right_pct"], r["wrong"],
                      r["missing"], r["extra"], s.get("stray_replies"),
                      s.get("malformed_replies"), s.get("deletions_unconfirmed"),
                      r.get("leftover_mappings", "-"), f(r.get("wall_s"), ".2f"),
                      (r.get("max_rss_kb") or 0) / 1024))
        if tool == "nmap":
            print()
            print("nmap -sU -p 5351 --script nat-pmp-info on {} addresses: {} s ({} hosts/s), "
                  "{} MB; nat-pmp-info printed a WAN address for {} hosts (truth: {} answer "
                  "NAT-PMP with an address there) and `WAN IP: 0.0.0.0` for {}".format(
                      r["addresses"], f(r.get("wall_s"), ".1f"),
                      f(r["addresses"] / r["wall_s"] if r.get("wall_s") else None, ".1f"),
                      f((r.get("max_rss_kb") or 0) / 1024, ".1f"), r["wan_ip_hosts"],
                      r["truth_with_address"], r.get("wan_ip_zero_hosts", "-")))
    for r in rows:
        if r.get("tool") in ("zmap", "natwarden") and (r.get("exit_status") not in (0, 1)):
            print(f"\nnote: {r['tool']} at {r.get('rate')} exited with {r.get('exit_status')}")


def check_nmap(truth_path, nmap_out, cidr):
    """Hosts for which nat-pmp-info printed a WAN IP, against truth lines of the /24 whose
    NAT-PMP external-address request gets an address (truth "external_address")."""
    net = ipaddress.ip_network(cidr)
    truth = [t for t in read_jsonl(truth_path)
             if ipaddress.ip_address(t["target"]) in net and t.get("external_address")
             and "nat-pmp" in t["protocols"]]
    wan = zero = 0
    with open(nmap_out, errors="replace") as f:
        for line in f:
            if "WAN IP" in line:
                if line.strip().endswith("0.0.0.0"):
                    zero += 1  # seen for "garbage" gateways (not in the truth)
                else:
                    wan += 1
    return {"tool": "nmap", "addresses": net.num_addresses, "wan_ip_hosts": wan,
            "wan_ip_zero_hosts": zero, "truth_with_address": len(truth)}


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["zmap", "audit", "nmap", "table"])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--intrusive", action="store_true")
    ap.add_argument("--leftover")
    ap.add_argument("--time", help="/usr/bin/time -v output to merge in")
    ap.add_argument("--rate", type=int)
    ap.add_argument("--zmap-log")
    ap.add_argument("--cidr", help="the scanned range: truth lines outside it are left out")
    a = ap.parse_args(argv[1:])
    global SCOPE
    if a.cidr:
        SCOPE = ipaddress.ip_network(a.cidr)
    if a.mode == "table":
        table(a.files[0])
        return 0
    if len(a.files) != 2:
        ap.error("needs TRUTH and the run's output file")
    if a.mode == "zmap":
        r = check_zmap(*a.files)
    elif a.mode == "audit":
        r = check_audit(a.files[0], a.files[1], a.intrusive, a.leftover)
    else:
        r = check_nmap(a.files[0], a.files[1], a.cidr or "100.64.0.0/24")
    r["rate"] = a.rate
    if a.time:
        r.update(read_time(a.time))
    if a.zmap_log:
        r["send_rate"] = zmap_send_rate(a.zmap_log)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
