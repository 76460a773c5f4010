# A classic STUN server (RFC 3489, answering RFC 5389 clients too) for the
# NAT lab: two addresses x two ports, and a Binding Request's CHANGE-REQUEST
# (0x0004 change IP, 0x0002 change port) picks the socket the answer leaves
# from. miniupnpd's `ext_perform_stun` sends the four combinations and
# enables port forwarding only when all four answers arrive, each from the
# address and port asked for, each naming its own address and port: proof
# that nothing in front of it filters or translates.
#
# Usage: stun_server.py IP_A IP_B PORT_A PORT_B. Prints `ready` once every
# socket is bound, then one line per request it answers.
import select
import socket
import struct
import sys

COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_RESPONSE = 0x0101
MAPPED_ADDRESS = 0x0001
SOURCE_ADDRESS = 0x0004
CHANGED_ADDRESS = 0x0005
CHANGE_REQUEST = 0x0003
XOR_MAPPED_ADDRESS = 0x0020
CHANGE_IP = 0x04
CHANGE_PORT = 0x02


def address(kind, ip, port):
    """An IPv4 address attribute (MAPPED-ADDRESS and its kin)."""
    body = struct.pack("!BBH", 0, 1, port) + socket.inet_aton(ip)
    return struct.pack("!HH", kind, len(body)) + body


def xor_address(ip, port):
    """XOR-MAPPED-ADDRESS (RFC 5389 §15.2) for IPv4."""
    xport = port ^ (COOKIE >> 16)
    xip = struct.unpack("!I", socket.inet_aton(ip))[0] ^ COOKIE
    body = struct.pack("!BBHI", 0, 1, xport, xip)
    return struct.pack("!HH", XOR_MAPPED_ADDRESS, len(body)) + body


def change_flags(msg):
    """The CHANGE-REQUEST flags of a Binding Request (0 without one)."""
    length = struct.unpack("!H", msg[2:4])[0]
    end = min(len(msg), 20 + length)
    at = 20
    while at + 4 <= end:
        kind, size = struct.unpack("!HH", msg[at : at + 4])
        value = msg[at + 4 : at + 4 + size]
        if kind == CHANGE_REQUEST and size == 4:
            return struct.unpack("!I", value)[0]
        at += 4 + ((size + 3) & ~3)
    return 0


def main():
    ips = sys.argv[1:3]
    ports = [int(p) for p in sys.argv[3:5]]
    socks = {}
    for ip in ips:
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, port))
            socks[(ip, port)] = s
    by_fd = {s.fileno(): key for key, s in socks.items()}
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select(list(socks.values()), [], [])
        for s in ready:
            ip, port = by_fd[s.fileno()]
            msg, (src_ip, src_port) = s.recvfrom(2048)
            if len(msg) < 20:
                continue
            kind, _, cookie = struct.unpack("!HHI", msg[:8])
            if kind != BINDING_REQUEST:
                continue
            flags = change_flags(msg)
            out_ip = ips[1 - ips.index(ip)] if flags & CHANGE_IP else ip
            out_port = ports[1 - ports.index(port)] if flags & CHANGE_PORT else port
            attrs = address(MAPPED_ADDRESS, src_ip, src_port)
            if cookie == COOKIE:
                attrs += xor_address(src_ip, src_port)
            attrs += address(SOURCE_ADDRESS, out_ip, out_port)
            other = (ips[1 - ips.index(ip)], ports[1 - ports.index(port)])
            attrs += address(CHANGED_ADDRESS, *other)
            answer = struct.pack("!HH", BINDING_RESPONSE, len(attrs)) + msg[4:20] + attrs
            socks[(out_ip, out_port)].sendto(answer, (src_ip, src_port))
            print(
                f"{src_ip}:{src_port} -> {ip}:{port} flags {flags:#x}, answered from {out_ip}:{out_port}",
                flush=True,
            )


main()
