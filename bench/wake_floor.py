"""The floor under any blocking round trip between two processes on this machine: a one-byte
ping-pong over a Unix socket pair between two Python processes (two wake-ups per round, no
work). Compare with the Python node round trip (bench/python_roundtrip.sh).

    python3 bench/wake_floor.py
"""

import os
import socket
import time

ROUNDS = 20_000


def main() -> None:
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        while True:
            m = b.recv(8)
            if not m:
                os._exit(0)
            b.send(m)
    b.close()
    times = []
    for _ in range(ROUNDS):
        t = time.perf_counter_ns()
        a.send(b"x")
        a.recv(8)
        times.append(time.perf_counter_ns() - t)
    a.close()
    os.waitpid(pid, 0)
    times.sort()
    p = lambda q: times[int((len(times) - 1) * q)] / 1e3  # noqa: E731
    print(f"socket pair ping-pong, two Python processes: p50 {p(0.5):.1f} us, p99 {p(0.99):.1f} us")


if __name__ == "__main__":
    main()
