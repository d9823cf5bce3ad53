# The plain case of a blocking RdmaSocket, in C (rdmamsg/stream/socket.py).
#
# While a socket is connected, blocking (no timeout), not selectable, not
# shut, and holds no half-read message, a send of up to ``chunk`` bytes is
# one whole message and a receive into a buffer it fits is one whole message:
# the engine does all of it.  On an rsocket (RsCore) a send of up to
# ``chunk`` bytes goes whole and a receive takes what is there, as the
# stream's own calls do.  A receive with MSG_WAITALL loops here too.  The
# socket binds these methods onto itself and adopts our lock as its read
# lock, so such a call costs no Python frame and no Python lock call.  Each
# checks the flags the socket keeps current (``send_ok``, ``recv_ok``) and
# hands every other case to the socket's general path, which says what is
# wrong with a bad argument.  The end of the stream it reports through the
# hook the socket gave it (``on_eof``); it reads nothing else of the socket.

from libc.errno cimport EBADF
import socket as _socket
import weakref
from rdmamsg.errors import PeerClosedError

cdef int MSG_WAITALL = _socket.MSG_WAITALL


cdef class StreamFast:
    """send, sendall and recv_into of one RdmaSocket in its plain state."""
    cdef Engine eng                              # one of these two
    cdef RsCore rs
    cdef object sockref                          # weak: the socket holds us
    cdef object on_eof                           # weak: the socket's end-of-stream hook
    cdef readonly Lock lock                      # the socket's read lock (lock.pxi): ours
    cdef object slow_send, slow_sendall, slow_recv_into   # its class's general paths
    cdef Py_ssize_t chunk
    cdef public bint send_ok, recv_ok

    def __init__(self, engine, sock, Py_ssize_t chunk, on_eof):
        cls = type(sock)
        if isinstance(engine, RsCore):
            self.rs = engine
        else:
            self.eng = <Engine?>engine
        self.sockref, self.chunk, self.on_eof = weakref.ref(sock), chunk, on_eof
        self.lock = Lock()
        self.slow_send, self.slow_sendall = cls.send, cls.sendall
        self.slow_recv_into = cls.recv_into
        self.send_ok = self.recv_ok = False

    cdef object _sock(self):
        sock = self.sockref()
        if sock is None:
            raise OSError(EBADF, "Bad file descriptor: the socket was collected")
        return sock

    cdef int _eof(self) except -1:
        """Tell the socket its peer's stream has ended."""
        hook = self.on_eof()
        if hook is None:
            raise OSError(EBADF, "Bad file descriptor: the socket was collected")
        hook()
        return 0

    cdef Py_ssize_t _send(self, data) except -1:
        """Send ``data`` as one message if the plain case covers it (a
        contiguous bytes, bytearray or memoryview of 1 to ``chunk`` bytes):
        its length, or 0 (nothing sent: the general path's turn)."""
        cdef Py_buffer view
        cdef Py_ssize_t n
        t = type(data)
        if not self.send_ok or (t is not bytes and t is not bytearray and t is not memoryview):
            return 0
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except (BufferError, ValueError, TypeError):
            return 0
        try:
            n = view.len
            if n == 0 or n > self.chunk:
                return 0
            if self.rs is not None:
                self.rs._send_ptr(<const char *>view.buf, n, -1.0)
            else:
                self.eng._send_obj(data, None)
            return n
        finally:
            PyBuffer_Release(&view)

    def sendall(self, data, flags=0):
        if flags or not self._send(data):
            self.slow_sendall(self._sock(), data, flags)

    def send(self, data, flags=0):
        n = 0 if flags else self._send(data)
        return n if n else self.slow_send(self._sock(), data, flags)

    cdef Py_ssize_t _recv(self, char *p, Py_ssize_t cap, bint waitall) except -2:
        """Receive into ``cap`` bytes at ``p`` (the lock held): the count, 0
        at the end of the stream; on the Engine, when the next message is
        longer than the room left, -1 (the general path's turn), or -2 - k
        if MSG_WAITALL took k bytes first."""
        cdef Py_ssize_t got = 0, n
        if self.rs is not None:
            return self.rs._recv_ptr(p, cap, -1.0, waitall)
        while got < cap:
            try:
                n = self.eng._recv_into_mem(p + got, cap - got, -1.0)
            except PeerClosedError:
                n = 0
            except ValueError:                  # too long for the room: it stays queued
                return -1 if got == 0 else -2 - got
            except OSError:
                if got:
                    return got                  # the error stays for the next call
                raise
            if n == 0 and got:
                self._eof()                     # the end of stream came after some bytes
            if n == 0 or not waitall:
                return got + n
            got += n
        return got

    def recv_into(self, buffer, Py_ssize_t nbytes=0, int flags=0):
        cdef Py_buffer view
        cdef Py_ssize_t n = -1
        if (self.recv_ok and nbytes == 0 and (flags == 0 or flags == MSG_WAITALL)
                and self.lock.take_within(0)):
            try:
                if self.recv_ok:                 # again, under the lock
                    try:
                        PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
                    except (ValueError, BufferError, TypeError):
                        view.len = 0             # the general path says what is wrong
                    else:
                        try:
                            if view.len:
                                n = self._recv(<char *>view.buf, view.len, flags != 0)
                        finally:
                            PyBuffer_Release(&view)
                    if n == 0:
                        self._eof()
            finally:
                self.lock.give()
        if n >= 0:
            return n
        if n == -1:
            return self.slow_recv_into(self._sock(), buffer, nbytes, flags)
        # MSG_WAITALL on the Engine took -n - 2 bytes before a message longer
        # than the room left: the general path takes the rest.
        n = -n - 2
        try:
            return n + self.slow_recv_into(self._sock(), memoryview(buffer).cast("B")[n:],
                                           0, flags)
        except OSError:
            return n
