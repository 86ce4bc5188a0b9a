#!/usr/bin/env python3
"""Load for `fedpeft serve` (scripts/bench_serve.sh): greedy completions of a
fixed length over HTTP, `concurrency` at a time, by model name; prints the
median over `repeats` of the aggregate new tokens per second and of one
request's latency, as JSON. Standard library only."""
import json
import statistics
import sys
import threading
import time
import urllib.request


def complete(url, model, prompt, tokens, chat):
    if chat:
        body = {"model": model, "max_tokens": tokens, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}]}
        path = "/v1/chat/completions"
    else:
        body = {"model": model, "prompt": prompt, "max_tokens": tokens,
                "temperature": 0}
        path = "/v1/completions"
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)["usage"]["completion_tokens"]


def main():
    url, models, concurrency, tokens, repeats, chat = sys.argv[1:7]
    models = models.split(",")
    concurrency, tokens, repeats = int(concurrency), int(tokens), int(repeats)
    chat = chat == "chat"
    prompt = "Write a short story about a lighthouse keeper and a storm."
    complete(url, models[0], prompt, 4, chat)  # warm up
    rates, latencies = [], []
    for _ in range(repeats):
        done = [0] * concurrency
        times = [0.0] * concurrency

        def run(i):
            t0 = time.perf_counter()
            done[i] = complete(url, models[i % len(models)], prompt, tokens,
                               chat)
            times[i] = time.perf_counter() - t0

        start = time.perf_counter()
        threads = [threading.Thread(target=run, args=(i,))
                   for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        rates.append(sum(done) / wall)
        latencies.append(statistics.median(times))
    print(json.dumps({"tokens_per_s": statistics.median(rates),
                      "latency_s": statistics.median(latencies),
                      "tokens": tokens, "concurrency": concurrency}))


if __name__ == "__main__":
    main()
