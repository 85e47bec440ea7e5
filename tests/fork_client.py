"""Client of the test fork server's Unix socket (tests/forkserver.py), called by the bash
functions that stand for fairseq's console scripts and ``python script.py`` in shell scripts
under test: ``fork_client.py NAME PATH [ARGS...]``. It starts with ``-S -I`` (no site, no
torch) and exits with the command's status; where the server cannot run the command (another
interpreter, another import-time environment) or is gone, it execs the command itself."""

import json
import os
import socket
import struct
import sys

REFUSED = -1000  # forkserver.REFUSED (this client imports nothing of the tests)


def main():
    name, argv = sys.argv[1], sys.argv[2:]
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(os.environ["NAR_REFINE_FORK_SOCKET"])
    except (OSError, KeyError):  # no server: run it here
        os.execv(argv[0], argv)
    payload = json.dumps([argv, dict(os.environ), os.getcwd()]).encode()
    reply = b""
    try:
        socket.send_fds(sock, [struct.pack("!Q", len(payload))], [0, 1, 2])
        sock.sendall(payload)
        while len(reply) < 4:
            chunk = sock.recv(4 - len(reply))
            if not chunk:
                break
            reply += chunk
    except OSError:
        pass
    if len(reply) < 4:  # the command may have run: never run it twice
        print(f"fork_client: the test fork server stopped while running {name}", file=sys.stderr)
        return 1
    code = struct.unpack("!i", reply)[0]
    if code == REFUSED:
        sock.close()
        os.execv(argv[0], argv)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as bash reports


if __name__ == "__main__":
    sys.exit(main())
