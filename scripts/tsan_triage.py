#!/usr/bin/env python3
"""Sorts ThreadSanitizer reports (scripts/tsan.sh) by whose code raced.

Usage: tsan_triage.py REPORT_FILE...   (TSAN_OPTIONS log_path files)

Debian's gRPC, protobuf and LibTorch are not built with TSan, so TSan cannot
see their synchronisation (absl/gpr mutexes, atomics, completion queues):
memory handed from one gRPC thread to another looks unsynchronised. Each
report is attributed to the innermost frame of each racing access that is
not TSan's runtime or the C++ standard library. A report is fedpeft's when
that frame is in our sources (a relative path of this repository, e.g.
../coordinator/round_engine.cc, not the protoc-generated proto/gen/ or a
/usr/include header); such a report fails the run. The others are counted
by library and printed, not judged.
Exit status: 1 if any report is fedpeft's, else 0.
"""
import collections
import re
import sys

FRAME = re.compile(r"#\d+ (.+?) (\S+) \((\S+?)\+0x[0-9a-f]+\)")


def innermost(block):
    for m in FRAME.finditer(block):
        fn, loc, module = m.groups()
        if "libtsan" in module or "libstdc++" in module:
            continue
        if loc.startswith("/usr/include/c++") or "sanitizer" in loc:
            continue
        return fn, loc, module
    return None


def ours(frame):
    _, loc, _ = frame
    return loc.startswith("../") and "/gen/" not in loc


def owner(frame):
    fn, loc, module = frame
    for lib in ("grpc", "protobuf", "torch", "c10", "gomp", "openblas"):
        if lib in loc or lib in module or lib in fn:
            return lib
    if "/gen/" in loc:
        return "protobuf (generated code)"
    return module


def main(paths):
    total = 0
    by_owner = collections.Counter()
    mine = []
    for path in paths:
        text = open(path, errors="replace").read()
        for rep in text.split("WARNING: ThreadSanitizer:")[1:]:
            rep = rep.split("SUMMARY:")[0]
            total += 1
            blocks = re.split(r"\n  (?=\S)", rep)
            frames = [innermost(b) for b in blocks
                      if re.match(r"(Write|Read|Previous|Atomic)", b)]
            frames = [f for f in frames if f]
            if any(ours(f) for f in frames):
                mine.append(rep)
            else:
                by_owner[frames[0] and owner(frames[0]) if frames
                         else "unknown"] += 1
    print(f"tsan_triage: {total} reports, {len(mine)} in fedpeft code")
    for who, n in by_owner.most_common():
        print(f"tsan_triage:   {n} inside {who} (not judged)")
    for rep in mine[:10]:
        print("tsan_triage: FEDPEFT RACE:" + rep[:4000])
    return 1 if mine else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
