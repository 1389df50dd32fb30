"""Capture filters: a libpcap expression compiled to classic BPF and attached to a packet socket.

libpcap's compiler is the reference for filter syntax, so the probe uses it (through ctypes, no
capture handle) rather than a grammar of its own. The compiled program also carries the snap
length (`ret #snaplen`): the kernel copies no more of a frame than that into the ring.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket

from probe.errors import InterfaceError

SO_ATTACH_FILTER = 26
DLT_EN10MB = 1


class BpfInstruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class BpfProgram(ctypes.Structure):
    """`struct bpf_program` of libpcap and, with the same layout, the kernel's `struct sock_fprog`."""

    _fields_ = [("length", ctypes.c_uint), ("instructions", ctypes.POINTER(BpfInstruction))]


class SocketFilterProgram(ctypes.Structure):
    _fields_ = [("length", ctypes.c_ushort), ("instructions", ctypes.POINTER(BpfInstruction))]


def _libpcap() -> ctypes.CDLL:
    name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
    try:
        library = ctypes.CDLL(name)
    except OSError:
        raise InterfaceError("capture filters need libpcap: install the libpcap0.8 package") from None
    library.pcap_open_dead.restype = ctypes.c_void_p
    library.pcap_open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
    library.pcap_compile.argtypes = (ctypes.c_void_p, ctypes.POINTER(BpfProgram), ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32)
    library.pcap_geterr.restype = ctypes.c_char_p
    library.pcap_geterr.argtypes = (ctypes.c_void_p,)
    library.pcap_freecode.argtypes = (ctypes.POINTER(BpfProgram),)
    library.pcap_close.argtypes = (ctypes.c_void_p,)
    return library


def compile_filter(expression: str, snaplen: int, linktype: int = DLT_EN10MB) -> list[tuple[int, int, int, int]]:
    """The BPF instructions of `expression` (empty: every frame) for frames of `linktype`, cut at
    `snaplen` bytes."""
    library = _libpcap()
    handle = library.pcap_open_dead(linktype, snaplen)
    if not handle:
        raise InterfaceError("libpcap could not prepare a filter compiler")
    program = BpfProgram()
    try:
        if library.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, 0xFFFFFFFF) != 0:
            reason = library.pcap_geterr(handle).decode(errors="replace")
            raise InterfaceError(f"capture.bpf_filter: {expression!r}: {reason}")
        instructions = [(program.instructions[i].code, program.instructions[i].jt, program.instructions[i].jf, program.instructions[i].k) for i in range(program.length)]
        library.pcap_freecode(ctypes.byref(program))
        return instructions
    finally:
        library.pcap_close(handle)


def attach_filter(sock: socket.socket, instructions: list[tuple[int, int, int, int]]) -> None:
    array = (BpfInstruction * len(instructions))(*(BpfInstruction(*instruction) for instruction in instructions))
    program = SocketFilterProgram(len(instructions), ctypes.cast(array, ctypes.POINTER(BpfInstruction)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(program))
