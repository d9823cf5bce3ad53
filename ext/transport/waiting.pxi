# How a thread waits for an engine's progress (Engine, RsCore): the lock,
# the spin, and the sleep, with no knowledge of what progress is.
#
# A waiter spins polling the CQ (the engine's _progress), then arms the CQ,
# polls once more (the race) and sleeps.  One thread at a time (the leader)
# sleeps in epoll on the completion channel, the wake fd and the engine's
# own fd; the others sleep on the condition, which whoever handles
# completions broadcasts, and so does the leader when it wakes.  Otherwise
# one thread could take the completion event that another armed for and is
# about to sleep on.  close() waits for the threads inside (gate.pxi).

from libc.errno cimport errno

from rdmamsg.errors import RdmaError

cdef double GIL_SPIN = 50e-6     # of the spin, how long with the GIL held
cdef double IDLE_SPIN = 50e-6    # the spin after an idle stretch
cdef int gil_waiters = 0         # this module's threads waiting without the GIL
cdef double ACTIVE_WINDOW = 5e-3 # a completion this recent: the connection is busy
cdef enum:
    CLOCK_EVERY = 64             # polls between clock reads while spinning: a clock
                                 # read can cost more than a poll (HPET, VMs)
    ACK_EVERY = 64               # completion events acked at once


cdef struct waiter_t:
    pthread_mutex_t mu           # the engine's state: held to poll, post or change it
    pthread_cond_t cond
    bint mu_ok                   # mu and cond exist
    bint leader                  # a thread sleeps in epoll
    gate_t gate                  # threads waiting inside, for close()
    int mu_wanted                # threads blocked taking mu (atomic): spinners let them in
    uint64_t changes             # completions handled or kicks: a waiter that sees it
                                 # move returns, whichever thread made the change
    int cc_fd, own_fd            # the completion channel's, and the engine's own fd
    int ep_fd, wake_fd           # the epoll set of those and the wake fd
    int sig_fd, sel_fd           # fileno(): ep_fd, or the level that signal() holds
    ibv_comp_channel *ch
    ibv_cq *cq
    int unacked                  # completion events read, not yet acked
    double spin_s, last_active


cdef int waiter_open(waiter_t *w, ibv_comp_channel *ch, ibv_cq *cq, int cc_fd, int own_fd,
                     double spin_s) except -1:
    """The fds and the lock (GIL held)."""
    cdef epoll_event ev
    w.ch, w.cq, w.cc_fd, w.own_fd, w.spin_s = ch, cq, cc_fd, own_fd, spin_s
    w.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    w.ep_fd = epoll_create1(EPOLL_CLOEXEC)
    # A separate fd for signal(), so that no wait of ours can take it away.
    w.sig_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    w.sel_fd = epoll_create1(EPOLL_CLOEXEC)
    if w.wake_fd < 0 or w.ep_fd < 0 or w.sig_fd < 0 or w.sel_fd < 0:
        raise RdmaError("epoll_create1/eventfd", errno)
    for epfd, fd in ((w.ep_fd, cc_fd), (w.ep_fd, own_fd), (w.ep_fd, w.wake_fd),
                     (w.sel_fd, w.ep_fd), (w.sel_fd, w.sig_fd)):
        ev.events = EPOLLIN
        ev.data.fd = fd
        if epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
            raise RdmaError("epoll_ctl", errno)
    if fresh_lock(&w.mu, &w.cond) != 0:
        raise MemoryError("pthread_mutex_init/pthread_cond_init failed")
    w.mu_ok = True
    return 0


cdef void waiter_stop(waiter_t *w) noexcept:
    """close(), mu held, the engine marked closed: wake every waiter, wait
    until they have left, ack the CQ events and close the fds."""
    cdef uint64_t one = 1
    write(w.wake_fd, &one, 8)
    pthread_cond_broadcast(&w.cond)
    with nogil:
        gate_drain(&w.gate, &w.mu, &w.cond)
    waiter_release(w)


cdef void waiter_release(waiter_t *w) noexcept nogil:
    """Ack the CQ events (ibv_destroy_cq waits for that) and close the fds."""
    if w.unacked:
        ibv_ack_cq_events(w.cq, w.unacked)
        w.unacked = 0
    close(w.sel_fd)
    close(w.sig_fd)
    close(w.ep_fd)
    close(w.wake_fd)


cdef void waiter_free(waiter_t *w, bint release) noexcept nogil:
    """The engine's deallocation: the lock, and with ``release`` what
    close() would have released (an engine never closed)."""
    if not w.mu_ok:
        return
    if release:
        waiter_release(w)
    pthread_cond_destroy(&w.cond)
    pthread_mutex_destroy(&w.mu)


cdef void waiter_disown(waiter_t *w) noexcept nogil:
    """In a child after fork(): a new lock and no waiters (a thread that
    held the old ones does not exist here)."""
    fresh_lock(&w.mu, &w.cond)
    w.gate.inside = w.gate.closing = w.gate.poking = w.mu_wanted = 0
    w.leader = False


cdef inline void waiter_lock(waiter_t *w) noexcept:
    lock_mutex(&w.mu, &w.mu_wanted)


cdef inline void waiter_kick(waiter_t *w) noexcept nogil:
    """Wake waiters after a change that no completion will announce."""
    cdef uint64_t one = 1
    w.changes += 1
    pthread_cond_broadcast(&w.cond)
    if w.leader:
        write(w.wake_fd, &one, 8)


cdef inline void waiter_progressed(waiter_t *w) noexcept nogil:
    """Completions were handled: wake the waiters."""
    w.changes += 1
    pthread_cond_broadcast(&w.cond)
    w.last_active = mono()


cdef inline double waiter_spin_budget(const waiter_t *w, double now) noexcept nogil:
    return spin_budget(w.spin_s, w.last_active, now)


cdef int waiter_sleep(waiter_t *w, double deadline) noexcept nogil:
    """Sleep on the condition (mu let go meanwhile) until it is broadcast
    or ``deadline`` (-1: none); 0 once that has passed."""
    cdef timespec ts
    if deadline < 0:
        pthread_cond_wait(&w.cond, &w.mu)
        return 1
    ts.tv_sec = <long>deadline
    ts.tv_nsec = <long>((deadline - ts.tv_sec) * 1e9)
    pthread_cond_timedwait(&w.cond, &w.mu, &ts)
    return mono() < deadline


cdef void waiter_let_in(waiter_t *w, double until) noexcept nogil:
    """Between spins: let go of mu and of the CPU (another process may want
    it), then take mu back, after any thread blocked on it has had it
    (mu_wanted): taking it straight back would send that thread to sleep in
    the kernel again, a futex wait and wake each time.  Past ``until`` (the
    spin's end) it takes its turn at mu as anyone does."""
    pthread_mutex_unlock(&w.mu)
    sched_yield()
    while rdmamsg_load(&w.mu_wanted) or pthread_mutex_trylock(&w.mu) != 0:
        if mono() >= until:
            pthread_mutex_lock(&w.mu)
            return
        sched_yield()


cdef inline int timeout_ms_until(double deadline, double now) noexcept nogil:
    """epoll_wait's timeout for ``deadline`` (-1: none), rounded up."""
    if deadline < 0:
        return -1
    if deadline <= now:
        return 0
    return <int>((deadline - now) * 1000) + 1


cdef int waiter_epoll(waiter_t *w, int timeout_ms, bint *own_ready) noexcept nogil:
    """Sleep in epoll as the leader (mu let go meanwhile) for up to
    ``timeout_ms``; the events seen.  It reads the completion events and the
    wake fd; ``own_ready``: the engine's own fd is readable."""
    cdef epoll_event evs[4]
    cdef uint64_t one
    cdef int nev, i
    own_ready[0] = False
    w.leader = True
    pthread_mutex_unlock(&w.mu)
    nev = epoll_wait(w.ep_fd, evs, 4, timeout_ms)
    pthread_mutex_lock(&w.mu)
    w.leader = False
    pthread_cond_broadcast(&w.cond)
    for i in range(nev if nev > 0 else 0):
        if evs[i].data.fd == w.cc_fd:
            waiter_drain(w)
        elif evs[i].data.fd == w.own_fd:
            own_ready[0] = True
        elif evs[i].data.fd == w.wake_fd:
            read(w.wake_fd, &one, 8)
    return nev


cdef inline void waiter_drain(waiter_t *w) noexcept nogil:
    w.unacked = drain_cq_events(w.ch, w.cq, w.unacked)


cdef int waiter_signal(waiter_t *w, bint on) except -1:
    """Hold fileno() readable (``on``) or stop holding it (mu held)."""
    cdef uint64_t one = 1
    if on:
        write(w.sig_fd, &one, 8)
    else:
        read(w.sig_fd, &one, 8)
    return 0


cdef inline void lock_mutex(pthread_mutex_t *mu, int *wanted=NULL) noexcept:
    """Take ``mu`` with the GIL held: by trylock, else with the GIL released,
    so that a thread holding ``mu`` and waiting for the GIL cannot deadlock
    against us.  While blocked it joins ``wanted`` (if given: a spinner then
    lets it in, waiter_let_in) and, with it, the GIL waiters."""
    if pthread_mutex_trylock(mu) == 0:
        return
    if wanted == NULL:
        with nogil:
            pthread_mutex_lock(mu)
        return
    rdmamsg_add(wanted, 1)
    rdmamsg_add(&gil_waiters, 1)
    with nogil:
        pthread_mutex_lock(mu)
        rdmamsg_add(wanted, -1)
    rdmamsg_add(&gil_waiters, -1)


cdef int fresh_lock(pthread_mutex_t *mu, pthread_cond_t *cond) noexcept nogil:
    """A new mutex and condition (on CLOCK_MONOTONIC): at set-up, and in a
    child after fork() in place of the old, which a thread that no longer
    exists may have held.  Not 0 if either could not be made."""
    cdef pthread_condattr_t ca
    cdef int rc
    pthread_condattr_init(&ca)
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)
    rc = pthread_mutex_init(mu, NULL) or pthread_cond_init(cond, &ca)
    pthread_condattr_destroy(&ca)
    return rc


cdef inline double gil_spin(double spin) noexcept nogil:
    """Of a wait's ``spin``, how long with the GIL held: none while another
    of our threads waits without it, since that one wants the GIL the moment
    its completion arrives (a client and a server in one process)."""
    if rdmamsg_load(&gil_waiters):
        return 0
    return GIL_SPIN if spin > GIL_SPIN else spin


cdef inline double spin_budget(double spin_s, double last_active, double now) noexcept nogil:
    """Hybrid polling: spin up to ``spin_s`` while completions keep coming,
    briefly after an idle stretch (no CPU burnt on idle connections)."""
    if now - last_active < ACTIVE_WINDOW:
        return spin_s
    return IDLE_SPIN if spin_s > IDLE_SPIN else spin_s


cdef inline int drain_cq_events(ibv_comp_channel *ch, ibv_cq *cq, int unacked) noexcept nogil:
    """Read every completion event waiting on ``ch`` (non-blocking) and ack
    them in batches; the count still unacked."""
    cdef ibv_cq *ev_cq
    cdef void *ev_ctx
    while ibv_get_cq_event(ch, &ev_cq, &ev_ctx) == 0:
        unacked += 1
    if unacked >= ACK_EVERY:
        ibv_ack_cq_events(cq, unacked)
        unacked = 0
    return unacked
