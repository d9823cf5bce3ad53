/* Callgrind's client requests, when valgrind's header is there: ci/bench
   --instructions counts only a benchmark's loop.  Without the header (or
   outside valgrind) they do nothing. */
#ifndef RDMAMSG_INSTRUMENT_H
#define RDMAMSG_INSTRUMENT_H
#if defined(__has_include)
#  if __has_include(<valgrind/callgrind.h>)
#    include <valgrind/callgrind.h>
#    define RDMAMSG_CALLGRIND 1
#  endif
#endif

static inline int rdmamsg_callgrind(int on)
{
#ifdef RDMAMSG_CALLGRIND
    if (on) {
        CALLGRIND_ZERO_STATS;
        CALLGRIND_START_INSTRUMENTATION;
    } else {
        CALLGRIND_STOP_INSTRUMENTATION;
    }
    return 1;
#else
    (void)on;
    return 0;
#endif
}
#endif
