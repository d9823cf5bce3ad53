# The plain case of a blocking RdmaSocket, in C (rdmamsg/stream/socket.py).
#
# While a socket is connected, blocking (no timeout), not selectable, not
# shut, and holds no half-read message, a send of up to ``chunk`` bytes is
# one whole message and a receive into a buffer it fits is one whole message:
# the engine does all of it.  On an rsocket (RsCore) a send of up to
# ``chunk`` bytes goes whole and a receive takes what is there, as the
# stream's own calls do.  The socket binds these methods onto itself,
# so such a call costs no Python frame.  Each checks the flags the socket
# keeps current (``send_ok``, ``recv_ok``) and hands every other case to the
# socket's general path, which says what is wrong with a bad argument.

from cpython.bytes cimport PyBytes_GET_SIZE
from libc.errno cimport EBADF
import weakref


cdef class StreamFast:
    """send, sendall and recv_into of one RdmaSocket in its plain state."""
    cdef Engine eng                              # one of these two
    cdef RsCore rs
    cdef object sockref                          # weak: the socket holds us
    cdef object acquire, release                 # its read lock's, bound once
    cdef object slow_send, slow_sendall, slow_recv_into   # its class's general paths
    cdef Py_ssize_t chunk
    cdef public bint send_ok, recv_ok

    def __init__(self, engine, sock, Py_ssize_t chunk):
        cls = type(sock)
        if isinstance(engine, RsCore):
            self.rs = engine
        else:
            self.eng = <Engine?>engine
        self.sockref, self.chunk = weakref.ref(sock), chunk
        self.acquire, self.release = sock._rlock.acquire, sock._rlock.release
        self.slow_send, self.slow_sendall = cls.send, cls.sendall
        self.slow_recv_into = cls.recv_into
        self.send_ok = self.recv_ok = False

    cdef object _sock(self):
        sock = self.sockref()
        if sock is None:
            raise OSError(EBADF, "Bad file descriptor: the socket was collected")
        return sock

    cdef Py_ssize_t _plain_len(self, data):
        """The length of ``data`` if it goes as one message as it is, else 0
        (empty, too long, or not a contiguous buffer)."""
        cdef Py_buffer view
        cdef Py_ssize_t n
        t = type(data)
        if t is bytes:
            n = PyBytes_GET_SIZE(data)
        elif t is bytearray or t is memoryview:
            try:
                PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            except (BufferError, ValueError, TypeError):
                return 0
            n = view.len
            PyBuffer_Release(&view)
        else:
            return 0
        return n if n <= self.chunk else 0

    cdef Py_ssize_t _send(self, data) except -1:
        """Send ``data`` as one message if the plain case covers it: its
        length, or 0 (nothing sent: the general path's turn)."""
        cdef Py_ssize_t n = self._plain_len(data) if self.send_ok else 0
        if n and self.rs is not None:
            self.rs._send_obj(data, -1.0)
        elif n:
            self.eng._send_obj(data, None)
        return n

    def sendall(self, data, flags=0):
        if not self._send(data):
            self.slow_sendall(self._sock(), data, flags)

    def send(self, data, flags=0):
        n = self._send(data)
        return n if n else self.slow_send(self._sock(), data, flags)

    def recv_into(self, buffer, Py_ssize_t nbytes=0, flags=0):
        if self.recv_ok and nbytes == 0 and self.acquire(False):
            try:
                if self.recv_ok:                 # again, under the lock
                    try:
                        if self.rs is not None:
                            n = self.rs._recv_obj(buffer, -1.0)
                        else:
                            n = self.eng._recv_into_obj(buffer, None)
                    except (ValueError, BufferError, TypeError):
                        n = -1                   # longer than buffer (it stays queued), or bad
                    except PeerClosedError:
                        n = 0
                    if n == 0:
                        self._sock()._at_eof()
                    if n >= 0:
                        return n
            finally:
                self.release()
        return self.slow_recv_into(self._sock(), buffer, nbytes, flags)
