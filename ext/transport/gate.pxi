# Who is inside an engine (Engine, RsCore), so that close() frees nothing a
# thread still uses: it waits, on the engine's condition, until the last
# waiter has left (gate_leave wakes it), and until no interrupt() is between
# its check and its write to the wake fd.


cdef struct gate_t:
    int inside          # threads waiting inside (changed with the mutex held)
    int closing         # close() has begun (atomic): interrupt() writes no more
    int poking          # interrupt()s between their check and their write (atomic)


cdef inline void gate_leave(gate_t *g, pthread_cond_t *cond, bint closed) noexcept nogil:
    """A waiter leaves (mutex held); the last one out of a closed engine
    wakes close()."""
    g.inside -= 1
    if closed and g.inside == 0:
        pthread_cond_broadcast(cond)


cdef inline void gate_drain(gate_t *g, pthread_mutex_t *mu, pthread_cond_t *cond) noexcept nogil:
    """close(), mutex held, after it marked the engine closed and woke every
    waiter: wait until they have left and no interrupt() still writes."""
    rdmamsg_store(&g.closing, 1)
    while g.inside > 0:
        pthread_cond_wait(cond, mu)
    while rdmamsg_load(&g.poking) > 0:
        sched_yield()


cdef inline void gate_poke(gate_t *g, int fd) noexcept nogil:
    """Write the wake fd, unless close() has begun (it may be closed)."""
    cdef uint64_t one = 1
    rdmamsg_add(&g.poking, 1)
    if not rdmamsg_load(&g.closing):
        write(fd, &one, 8)
    rdmamsg_add(&g.poking, -1)
