# A keep-alive HTTP/1.1 client that sends N GETs on one connection (for loadtest/icount).
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
path = sys.argv[3] if len(sys.argv) > 3 else "/"
extra = sys.argv[4] if len(sys.argv) > 4 else ""
s = socket.create_connection(("127.0.0.1", port))
req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n{extra}\r\n".encode()
buf = b""
for i in range(n):
    s.sendall(req)
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode()
            cl = 0
            for line in head.split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.lower() == "content-length":
                    cl = int(v)
            if len(buf) >= end + 4 + cl:
                buf = buf[end + 4 + cl:]
                break
        d = s.recv(65536)
        if not d:
            print("closed at", i); sys.exit(1)
        buf += d
print("ok", n)
