"""A stand-in for a server under test: holds, frees and spikes memory on command.

Reads one command a line from stdin and answers ``ok`` when done: ``hold N`` keeps N more
bytes, ``spike N`` touches N bytes and frees them, ``drop`` frees what it holds, ``spawn N``
starts a child of its own that holds N bytes (``ok <pid>``).
"""

from __future__ import annotations

import subprocess
import sys


def main() -> None:
    held: list[bytes] = []
    kids: list[subprocess.Popen[bytes]] = []
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        answer = "ok"
        if command == "hold":
            held.append(b"\x01" * int(argument))
        elif command == "spike":
            spike = b"\x01" * int(argument)
            del spike
        elif command == "drop":
            held.clear()
        elif command == "spawn":
            kid = subprocess.Popen(
                [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert kid.stdin is not None
            assert kid.stdout is not None
            kid.stdin.write(f"hold {argument}\n".encode())
            kid.stdin.flush()
            kid.stdout.readline()
            kids.append(kid)
            answer = f"ok {kid.pid}"
        elif command == "quit":
            break
        print(answer, flush=True)
    for kid in kids:
        kid.kill()
        kid.wait()


if __name__ == "__main__":
    main()
