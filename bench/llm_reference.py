"""The same measurements as crates/llm/benches/llm.rs, with llama-cpp-python on the same GGUF.

Time to first token of the ~100-token prompt (median of 10, a fresh conversation each time) and
decode tokens per second of one conversation (median of 3, greedy, 128 tokens at most). Prints
one JSON object per measurement. Run by bench/llm.sh.
"""
import json
import os
import statistics
import sys
import time

from llama_cpp import Llama

CONTEXT = ("I am planning a weekend trip to the coast with two friends. We will drive on "
           "Saturday morning, stay one night in a small town by the harbour, and come back on "
           "Sunday evening. One of us does not eat meat and another one gets seasick easily.")
QUESTION = "What should we pack, and what could we do there?"
LONG = "Write a long story about a lighthouse keeper and a storm."


def messages(user):
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": user}]


def run(llm, user, max_tokens):
    llm.reset()  # a fresh conversation: nothing reused from the last one
    started = time.perf_counter()
    first = None
    tokens = 0
    for chunk in llm.create_chat_completion(messages(user), temperature=0.0, top_k=1,
                                            max_tokens=max_tokens, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1
            if first is None:
                first = time.perf_counter() - started
    return first or 0.0, time.perf_counter() - started, tokens


def main():
    model = sys.argv[1]
    threads = os.cpu_count() or 2
    llm = Llama(model_path=model, n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    question = f"{CONTEXT} {QUESTION}"
    run(llm, question, 4)
    firsts = [run(llm, question, 1)[0] * 1e3 for _ in range(10)]
    print(json.dumps({"what": "ttft_ms", "p50": round(statistics.median(firsts), 1),
                      "min": round(min(firsts), 1)}))
    rates = []
    for _ in range(3):
        first, total, tokens = run(llm, LONG, 128)
        rates.append((tokens - 1) / (total - first))
    print(json.dumps({"what": "decode_tokens_per_s", "sessions": 1, "tokens": tokens,
                      "median": round(statistics.median(rates), 1)}))


if __name__ == "__main__":
    main()
