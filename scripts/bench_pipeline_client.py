#!/usr/bin/env python3
"""Load and report for scripts/bench_pipeline.sh. Standard library only.

  run URL BIN PIPELINE_ADDR S TOKENS REPEATS PROMPTS_JSON SETTLE_S
      S greedy /v1/completions at once (request i gets prompt i), REPEATS
      times after a warm-up. URL and PIPELINE_ADDR may be lists (a,b):
      independent rings, request i to ring i mod n (busy keys "ring:stage").
      Around each run a `fedpeft status --pipeline` snapshot, taken once
      the ring has been idle SETTLE_S (longer than
      pipeline.heartbeat_ms, so that the stages' reported busy_seconds are
      current); a stage's busy fraction is its busy_seconds delta over the
      run's wall time (first request sent to last answer received). Prints
      JSON: tokens/s (S * completion tokens / wall; median and all), busy
      fraction per stage (median), the texts of the first run, the prompts
      whose text changed between runs, the last status.
  generate BIN MODEL TOKENIZER PROMPTS_JSON N TOKENS
      `fedpeft generate` (greedy, one thread, on core 0) of the first N
      prompts; prints their completions as a JSON list.
  report DIR
      Tables from DIR's results (see bench_pipeline.sh); exit 1 unless every
      completion is identical across rings, runs and `fedpeft generate`.
"""
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request


def complete(url, prompt, tokens):
    body = {"model": "base", "prompt": prompt, "max_tokens": tokens,
            "temperature": 0}
    req = urllib.request.Request(url + "/v1/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=900) as r:
        answer = json.load(r)
    return answer["choices"][0]["text"], answer["usage"]["completion_tokens"]


def status(binary, addresses):
    stages = {}
    for j, address in enumerate(addresses):
        out = subprocess.run([binary, "status", "--address", address,
                              "--pipeline", "--json"],
                             check=True, capture_output=True, text=True)
        s = json.loads(out.stdout)
        if not s.get("ring_up") or s.get("in_flight"):
            sys.exit("bench_pipeline_client: ring not up and idle: " + out.stdout)
        for st in s["stages"]:
            k = str(st.get("stage", 0))
            stages[k if len(addresses) == 1 else "%d:%s" % (j, k)] = st
    return stages


def run(urls, binary, addresses, s, tokens, repeats, prompts_file, settle):
    s, tokens, repeats, settle = int(s), int(tokens), int(repeats), float(settle)
    urls, addresses = urls.split(","), addresses.split(",")
    with open(prompts_file) as f:
        prompts = json.load(f)[:s]
    for url in urls:
        complete(url, prompts[0], 2)  # warm up
    time.sleep(settle)
    before = status(binary, addresses)
    rates, busy, runs = [], {k: [] for k in before}, []
    for _ in range(repeats):
        texts, counts = [None] * s, [0] * s
        errors = []

        def one(i):
            try:
                texts[i], counts[i] = complete(urls[i % len(urls)],
                                               prompts[i], tokens)
            except Exception as e:  # noqa: BLE001 -- reported below
                errors.append("request %d: %s" % (i, e))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(s)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        if errors:
            sys.exit("bench_pipeline_client: " + "; ".join(errors))
        rates.append(sum(counts) / wall)
        runs.append(texts)
        time.sleep(settle)
        after = status(binary, addresses)
        for k in busy:
            busy[k].append((after[k]["busy_seconds"] -
                            before[k]["busy_seconds"]) / wall)
        before = after
    varies = [i for i in range(s) if len({r[i] for r in runs}) > 1]
    print(json.dumps({"s": s, "tokens": tokens,
                      "tokens_per_s": statistics.median(rates),
                      "rates": rates,
                      "busy": {k: statistics.median(v) for k, v in busy.items()},
                      "texts": runs[0], "varies": varies,
                      "status": before}, ensure_ascii=False))


def generate(binary, model, tokenizer, prompts_file, n, tokens):
    with open(prompts_file) as f:
        prompts = json.load(f)[:int(n)]
    texts = []
    for p in prompts:
        out = subprocess.run(
            ["taskset", "-c", "0", binary, "generate", "--model", model,
             "--tokenizer", tokenizer, "--prompt", p, "--max-tokens", tokens,
             "--threads", "1"], check=True, capture_output=True)
        texts.append(out.stdout.decode("utf-8", "replace")[:-1])  # generate adds a newline
    print(json.dumps(texts, ensure_ascii=False))


def mib(b):
    return "%.0f" % (b / 2**20)


def report(d):
    def load(name):
        p = os.path.join(d, name)
        if not os.path.exists(p):
            return None
        with open(p) as f:
            return json.load(f)

    cfg = load("config.json")
    sizes = cfg["sizes"]
    gen = load("generate.json")
    one = {s: load("ring1_s%d.json" % s) for s in sizes}
    two = {s: load("ring2_s%d.json" % s) for s in sizes}
    slow = [(r, load("slow_%s.json" % r)) for r in cfg["rates"]]
    slow = [(r, x) for r, x in slow if x is not None]
    bound = load("bound.json")
    bad, ref = [], {}  # ref: prompt -> (where first seen, text)
    rows = [("1 stage S=%d" % s, one[s]) for s in sizes]
    rows += [("bound S=%d" % bound["s"], bound)] if bound else []
    rows += [("2 stages S=%d" % s, two[s]) for s in sizes]
    rows += [("slow link %s" % r, x) for r, x in slow]
    for i, t in enumerate(gen):
        ref[i] = ("fedpeft generate", t)
    for label, result in rows:
        for i, t in enumerate(result["texts"]):
            where, want = ref.setdefault(i, (label, t))
            if t != want:
                bad.append("%s prompt %d: %r, %s: %r" % (label, i, t, where,
                                                         want))
        for i in result["varies"]:
            bad.append("%s prompt %d: text changed between runs" % (label, i))
    st1 = one[max(sizes)]["status"]
    st2 = two[max(sizes)]["status"]
    n = len(st2)

    def span(st):
        return "[%d, %d)%s" % (st["layer_begin"], st["layer_end"],
                               " + io" if st.get("stage", 0) == 0 else "")

    print("Model %s (random weights, float32), %d new tokens a request, "
          "greedy, median of %s runs; split %s (%s)" % (
              cfg["model"], cfg["tokens"], cfg["repeats"],
              " ".join(span(st2[k]) for k in sorted(st2)), cfg["split"]))
    print()
    print("| sequences S | 1 stage, 1 core tok/s | %d stages, %d cores tok/s "
          "| ratio | busy 1 stage | busy %s |" % (
              n, n, " / ".join("stage %s" % k for k in sorted(st2))))
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in sizes:
        a, b = one[s], two[s]
        print("| %d | %.2f | %.2f | %.2fx | %.0f%% | %s |" % (
            s, a["tokens_per_s"], b["tokens_per_s"],
            b["tokens_per_s"] / a["tokens_per_s"], 100 * a["busy"]["0"],
            " / ".join("%.0f%%" % (100 * b["busy"][k])
                       for k in sorted(b["busy"]))))
    if bound:
        base = one.get(bound["s"]) or one[max(sizes)]
        print()
        print("Two cores' ceiling: 2 independent 1-stage processes, one per "
              "core, S=%d split between them: %.2f tokens/s = %.2fx one core "
              "(busy %s)" % (bound["s"], bound["tokens_per_s"],
                             bound["tokens_per_s"] / base["tokens_per_s"],
                             " / ".join("%.0f%%" % (100 * v) for _, v in
                                        sorted(bound["busy"].items()))))
    print()
    print("| process | layers | weights MiB | peak RSS MiB | RSS MiB (end) |")
    print("| --- | --- | ---: | ---: | ---: |")
    procs = [("1 stage (whole model)", st1["0"])]
    procs += [("%d stages: stage %s" % (n, k), st2[k]) for k in sorted(st2)]
    for label, st in procs:
        print("| %s | %s | %s | %s | %s |" % (
            label, span(st), mib(st["weight_bytes"]), mib(st["peak_rss_bytes"]),
            mib(st["rss_bytes"])))
    if slow:
        print()
        print("%d stages, S=%d, stage 1 in a network namespace behind a veth "
              "pair shaped both ways with tc tbf:" % (n, cfg["slow_s"]))
        print("| link | tok/s | busy %s |" %
              " / ".join("stage %s" % k for k in sorted(st2)))
        print("| --- | ---: | ---: |")
        for rate, r in slow:
            print("| %s | %.2f | %s |" % (
                "veth, unshaped" if rate == "none" else rate + " Mbit/s",
                r["tokens_per_s"],
                " / ".join("%.0f%%" % (100 * r["busy"][k])
                           for k in sorted(r["busy"]))))
    if cfg.get("slow_note"):
        print("slow link: " + cfg["slow_note"])
    print()
    checked = "%d prompts, %d rows of runs, %d against `fedpeft generate`" % (
        len(ref), len(rows), len(gen))
    print("outputs identical: %s (%s)" % ("no" if bad else "yes", checked))
    for b in bad[:20]:
        print("  mismatch: " + b)
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if sys.argv[1] == "run":
        run(*sys.argv[2:10])
    elif sys.argv[1] == "generate":
        generate(*sys.argv[2:8])
    elif sys.argv[1] == "report":
        sys.exit(report(sys.argv[2]))
    else:
        sys.exit(__doc__)
