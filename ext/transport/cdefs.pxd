# Every C declaration rdmamsg's Cython code uses: <infiniband/verbs.h> (the
# parts we touch), the pyverbs object layouts (pyverbs_layout.h), and the
# Linux calls the engine waits with.  The .pyx modules only cimport them.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t

cdef extern from "<infiniband/verbs.h>" nogil:
    cdef struct ibv_device:
        pass

    cdef struct ibv_context:
        ibv_device *device
        int cmd_fd
        int async_fd
        int num_comp_vectors

    cdef struct ibv_pd:
        ibv_context *context
        uint32_t handle

    cdef struct ibv_comp_channel:
        ibv_context *context
        int fd
        int refcnt

    cdef struct ibv_cq:
        ibv_context *context
        ibv_comp_channel *channel
        void *cq_context
        uint32_t handle
        int cqe

    cdef struct ibv_mr:
        ibv_context *context
        ibv_pd *pd
        void *addr
        size_t length
        uint32_t handle
        uint32_t lkey
        uint32_t rkey

    cdef struct ibv_qp:
        ibv_context *context
        void *qp_context
        ibv_pd *pd
        ibv_cq *send_cq
        ibv_cq *recv_cq
        void *srq
        uint32_t handle
        uint32_t qp_num
        int state
        int qp_type

    cdef struct ibv_sge:
        uint64_t addr
        uint32_t length
        uint32_t lkey

    cdef struct ibv_send_wr_rdma:
        uint64_t remote_addr
        uint32_t rkey

    cdef union ibv_send_wr_wr:
        ibv_send_wr_rdma rdma

    cdef struct ibv_send_wr:
        uint64_t wr_id
        ibv_send_wr *next
        ibv_sge *sg_list
        int num_sge
        int opcode
        unsigned int send_flags
        uint32_t imm_data          # network byte order
        ibv_send_wr_wr wr

    cdef struct ibv_recv_wr:
        uint64_t wr_id
        ibv_recv_wr *next
        ibv_sge *sg_list
        int num_sge

    cdef struct ibv_wc:
        uint64_t wr_id
        int status
        int opcode
        uint32_t vendor_err
        uint32_t byte_len
        uint32_t imm_data          # network byte order
        uint32_t qp_num
        uint32_t src_qp
        unsigned int wc_flags

    enum:
        IBV_WC_SUCCESS
        IBV_WC_WR_FLUSH_ERR
        IBV_WC_SEND
        IBV_WC_RDMA_WRITE
        IBV_WC_RDMA_READ
        IBV_WC_RECV
        IBV_WC_RECV_RDMA_WITH_IMM
        IBV_WC_WITH_IMM

    enum:
        IBV_WR_RDMA_WRITE
        IBV_WR_RDMA_WRITE_WITH_IMM
        IBV_WR_SEND
        IBV_WR_SEND_WITH_IMM
        IBV_WR_RDMA_READ

    enum:
        IBV_SEND_FENCE
        IBV_SEND_SIGNALED
        IBV_SEND_SOLICITED
        IBV_SEND_INLINE

    cdef struct ibv_qp_attr:
        int qp_state

    enum:
        IBV_QP_STATE
        IBV_QPS_ERR

    int ibv_modify_qp(ibv_qp *qp, ibv_qp_attr *attr, int attr_mask)
    int ibv_poll_cq(ibv_cq *cq, int num_entries, ibv_wc *wc)
    int ibv_req_notify_cq(ibv_cq *cq, int solicited_only)
    int ibv_post_send(ibv_qp *qp, ibv_send_wr *wr, ibv_send_wr **bad_wr)
    int ibv_post_recv(ibv_qp *qp, ibv_recv_wr *wr, ibv_recv_wr **bad_wr)
    int ibv_get_cq_event(ibv_comp_channel *channel, ibv_cq **cq, void **cq_context)
    void ibv_ack_cq_events(ibv_cq *cq, unsigned int nevents)
    const char *ibv_get_device_name(ibv_device *device)
    const char *ibv_wc_status_str(int status)


cdef extern from "pyverbs_layout.h":
    # Where each pyverbs object keeps its ibv_* pointer; see the header for why.
    enum:
        RM_PV_PTR_OFFSET
        RM_PV_MR_PTR_OFFSET


cdef extern from "<arpa/inet.h>" nogil:
    uint32_t htonl(uint32_t)
    uint32_t ntohl(uint32_t)


cdef extern from "<sys/epoll.h>" nogil:
    cdef union epoll_data_t:
        int fd
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC


cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC


cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    int shutdown(int fd, int how)
    enum:
        MSG_DONTWAIT
        SHUT_RDWR


cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t n)
    ssize_t write(int fd, const void *buf, size_t n)
    int close(int fd)
    int usleep(unsigned int usec)
    int getppid()

cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    enum:
        CLOCK_MONOTONIC
    int clock_gettime(int clk, timespec *ts)


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef struct pthread_condattr_t:
        pass
    int pthread_condattr_init(pthread_condattr_t *a)
    int pthread_condattr_setclock(pthread_condattr_t *a, int clk)
    int pthread_condattr_destroy(pthread_condattr_t *a)
    int pthread_cond_init(pthread_cond_t *c, pthread_condattr_t *a)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const timespec *t)
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)


# A flag (or count) one thread changes while another reads it without a lock.
cdef extern from *:
    """
    static inline int rdmamsg_load(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void rdmamsg_store(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline void rdmamsg_add(int *p, int v) { __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
    """
    int rdmamsg_load(int *p) nogil
    void rdmamsg_store(int *p, int v) nogil
    void rdmamsg_add(int *p, int v) nogil
